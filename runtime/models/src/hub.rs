//! Models from the Hugging Face Hub: `pagedrt pull ORG/NAME[@REVISION]` and `--model
//! ORG/NAME[@REVISION]`, fetched with the `hf-hub` crate into the standard Hugging Face cache.
//!
//! What it honours, as `huggingface_hub` does: `HF_ENDPOINT` (the Hub or a mirror),
//! `HF_TOKEN` (else the token file `huggingface-cli login` writes), `HF_HUB_CACHE` / `HF_HOME`
//! (the cache: `models--ORG--NAME/{blobs,snapshots,refs}`), `HF_HUB_OFFLINE=1` (the cache
//! only). A model another tool already downloaded is used as it is, with no request at all;
//! an interrupted download resumes from its `.part` file (hf-hub asks for the rest with a
//! `Range` request, here and in the next run); every fresh file is checked against its
//! ETag (SHA-256 for LFS files, the Git blob hash for the others) before it is used.

use std::io::Read;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};
use sha2::Digest;

use crate::error::ModelError;

/// `ORG/NAME` at a revision (a branch, tag or commit; `main` when not given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubModel {
    pub repo: String,
    pub revision: String,
}

impl HubModel {
    /// `ORG/NAME` or `ORG/NAME@REVISION`, if `spec` has that shape.
    pub fn parse(spec: &str) -> Option<Self> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let part = |s: &str| {
            !s.is_empty()
                && !s.starts_with('.')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (part(org) && part(name)).then(|| HubModel {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn name(&self) -> String {
        format!("{}@{}", self.repo, self.revision)
    }
}

/// Where and how to reach the Hub, from the environment.
#[derive(Debug, Clone)]
pub struct HubOptions {
    pub endpoint: String,
    /// The cache's `hub` folder.
    pub cache_dir: PathBuf,
    pub token: Option<String>,
    pub offline: bool,
    /// Show a progress bar per file (stderr).
    pub progress: bool,
    /// Times a broken download is resumed before giving up.
    pub retries: usize,
}

impl HubOptions {
    /// The options `huggingface_hub` would use in this environment.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let hf_home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
            let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
            home.join(".cache").join("huggingface")
        });
        let cache_dir = var("HF_HUB_CACHE").map_or_else(|| hf_home.join("hub"), PathBuf::from);
        let token = var("HF_TOKEN").or_else(|| {
            std::fs::read_to_string(hf_home.join("token"))
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on")
        });
        HubOptions {
            endpoint: var("HF_ENDPOINT")
                .unwrap_or_else(|| "https://huggingface.co".into())
                .trim_end_matches('/')
                .to_string(),
            cache_dir,
            token,
            offline,
            progress: true,
            retries: 3,
        }
    }
}

fn hub_err(m: &HubModel, problem: impl Into<String>) -> ModelError {
    ModelError::Pull {
        name: m.name(),
        problem: problem.into(),
    }
}

/// The files a model directory needs besides its weights; the first two must exist.
const REQUIRED: [&str; 2] = ["config.json", "tokenizer.json"];
const OPTIONAL: [&str; 3] = [
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// The shards a safetensors index names, in order, once each.
fn shards_of(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(index, format!("invalid JSON: {e}")))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::format(index, "no `weight_map`"))?;
    let mut shards: Vec<String> = vec![];
    for f in map.values().filter_map(|f| f.as_str()) {
        if !shards.iter().any(|s| s == f) {
            shards.push(f.to_string());
        }
    }
    Ok(shards)
}

/// The snapshot folder of `m` in the cache, if its revision is known there.
fn cached_snapshot(cache: &Path, m: &HubModel) -> Option<PathBuf> {
    let repo = cache.join(format!("models--{}", m.repo.replace('/', "--")));
    let commit = std::fs::read_to_string(repo.join("refs").join(&m.revision))
        .ok()
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|| m.revision.clone());
    let dir = repo.join("snapshots").join(commit);
    dir.is_dir().then_some(dir)
}

/// The files a snapshot still lacks to be a model directory.
fn missing_in(dir: &Path) -> Vec<String> {
    let mut missing: Vec<String> = REQUIRED
        .iter()
        .filter(|f| !dir.join(f).is_file())
        .map(|f| f.to_string())
        .collect();
    if dir.join(INDEX).is_file() {
        match shards_of(&dir.join(INDEX)) {
            Ok(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
            Err(_) => missing.push(INDEX.into()),
        }
    } else if !dir.join(SINGLE).is_file() {
        missing.push(format!("{SINGLE} (or {INDEX})"));
    }
    missing
}

/// Makes sure `m` is in the Hub cache and returns its snapshot folder (a model directory).
pub fn pull_hub(
    m: &HubModel,
    opts: &HubOptions,
    say: &mut dyn FnMut(&str),
) -> Result<PathBuf, ModelError> {
    if let Some(dir) = cached_snapshot(&opts.cache_dir, m) {
        if missing_in(&dir).is_empty() {
            return Ok(dir);
        }
    }
    if opts.offline {
        let missing = cached_snapshot(&opts.cache_dir, m)
            .map_or_else(|| vec!["the whole model".to_string()], |d| missing_in(&d));
        return Err(hub_err(
            m,
            format!(
                "HF_HUB_OFFLINE is set and the cache ({}) lacks {}",
                opts.cache_dir.display(),
                missing.join(", ")
            ),
        ));
    }
    say(&format!("pulling {} from {}", m.name(), opts.endpoint));
    let api = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
        .with_endpoint(opts.endpoint.clone())
        .with_token(opts.token.clone())
        .with_progress(opts.progress)
        .with_retries(opts.retries)
        .build()
        .map_err(|e| request_err(m, "connecting", e))?;
    let repo = Repo::with_revision(m.repo.clone(), RepoType::Model, m.revision.clone());
    let remote = api.repo(repo.clone());
    let info = remote
        .info()
        .map_err(|e| request_err(m, "listing the repository", e))?;
    let listed = |f: &str| info.siblings.iter().any(|s| s.rfilename == f);
    let cache = Cache::new(opts.cache_dir.clone()).repo(repo);
    let fetch = |f: &str| -> Result<PathBuf, ModelError> {
        if let Some(p) = cache.get(f) {
            return Ok(p);
        }
        let p = remote.download(f).map_err(|e| request_err(m, f, e))?;
        verify(m, f, &p)?;
        Ok(p)
    };
    let mut snapshot = None;
    for f in REQUIRED {
        if !listed(f) {
            return Err(hub_err(m, format!("the repository has no {f}")));
        }
        snapshot = fetch(f)?.parent().map(Path::to_path_buf);
    }
    for f in OPTIONAL.into_iter().filter(|f| listed(f)) {
        fetch(f)?;
    }
    if listed(INDEX) {
        let index = fetch(INDEX)?;
        for shard in shards_of(&index)? {
            fetch(&shard)?;
        }
    } else if listed(SINGLE) {
        fetch(SINGLE)?;
    } else {
        return Err(hub_err(
            m,
            format!("the repository has no safetensors weights ({SINGLE} or {INDEX}); pagedrt reads safetensors only"),
        ));
    }
    snapshot.ok_or_else(|| hub_err(m, "no snapshot folder"))
}

/// A failed request, said in terms of what to do.
fn request_err(m: &HubModel, what: &str, e: ApiError) -> ModelError {
    let status = match &e {
        ApiError::RequestError(r) => match r.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    };
    let problem = match status {
        Some(401 | 403) => format!(
            "{what}: HTTP {}: the repository is private or gated; set HF_TOKEN to a token that may read it",
            status.unwrap_or_default()
        ),
        Some(404) if what == "listing the repository" => format!(
            "{what}: HTTP 404: no model `{}` at revision `{}`",
            m.repo, m.revision
        ),
        Some(404) => format!("{what}: HTTP 404: the file is missing from the repository"),
        _ => format!("{what}: {e}"),
    };
    hub_err(m, problem)
}

/// Checks a freshly downloaded file against the ETag its blob is named after; a mismatch
/// removes the blob (and the snapshot's link to it), so the next pull fetches it again.
fn verify(m: &HubModel, file: &str, path: &Path) -> Result<(), ModelError> {
    let blob = std::fs::canonicalize(path).map_err(|e| ModelError::io(path, e))?;
    let etag = blob
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    let got = if hex(&etag, 64) {
        digest::<sha2::Sha256>(&blob, None)?
    } else if hex(&etag, 40) {
        let len = std::fs::metadata(&blob)
            .map_err(|e| ModelError::io(&blob, e))?
            .len();
        digest::<sha1::Sha1>(&blob, Some(format!("blob {len}\0").as_bytes()))?
    } else {
        // An ETag that is no content hash (a mirror's): nothing to check against.
        return Ok(());
    };
    if got.eq_ignore_ascii_case(&etag) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(&blob);
    Err(hub_err(
        m,
        format!(
            "{file}: checksum mismatch (the Hub says {etag}, the download hashes to {got}): \
             the download is corrupt and was removed; pull again"
        ),
    ))
}

/// The hex digest of `prefix` and then the file's bytes.
fn digest<D: Digest>(path: &Path, prefix: Option<&[u8]>) -> Result<String, ModelError> {
    let mut f = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut h = D::new();
    if let Some(p) = prefix {
        h.update(p);
    }
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| ModelError::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_names_parse_and_paths_do_not() {
        assert_eq!(
            HubModel::parse("HuggingFaceTB/SmolLM2-135M-Instruct"),
            Some(HubModel {
                repo: "HuggingFaceTB/SmolLM2-135M-Instruct".into(),
                revision: "main".into()
            })
        );
        assert_eq!(HubModel::parse("a/b@v1.0").unwrap().revision, "v1.0");
        for not in ["a", "a/b/c", "/abs/path", "./rel", "a/", "a/b@", "a b/c"] {
            assert_eq!(HubModel::parse(not), None, "{not}");
        }
    }
}
