//! Shared by the runtime's integration tests: the default model (pulled through the same code
//! as `pagedrt pull`, cached) and the golden reference files.

#![allow(dead_code)]

/// Reports a skipped test on the terminal even while the harness captures output: a direct
/// write to stderr bypasses the capture that `eprintln!` goes through. (`#[macro_use]` on
/// `mod common` makes it visible to every module declared after it.)
#[allow(unused_macros)] // `soak` reports no skips.
macro_rules! report_skip {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {}", format_args!($($arg)*));
    }};
}

pub mod http;
pub mod hub;

use std::path::PathBuf;

/// The default model's directory, pulling it on first use.
pub fn default_model() -> PathBuf {
    models::pull::pull(models::pull::DEFAULT_MODEL, &mut |l| eprintln!("{l}"))
        .unwrap_or_else(|e| panic!("the default model is needed for this test: {e}"))
}

/// `../shared/golden` (or `$PAGEDRT_GOLDEN_DIR`). Missing golden files fail the test.
pub fn golden_dir() -> PathBuf {
    let dir = std::env::var_os("PAGEDRT_GOLDEN_DIR").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/golden"),
        PathBuf::from,
    );
    assert!(
        dir.join("smollm2_greedy.jsonl").is_file(),
        "golden files not found in {} (set PAGEDRT_GOLDEN_DIR)",
        dir.display()
    );
    dir
}

/// The golden prompts, one JSON object each.
pub fn golden_cases() -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(golden_dir().join("smollm2_greedy.jsonl")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The `pagedrt` binary built for these tests.
pub fn pagedrt() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_pagedrt"))
}

/// Runs a `pagedrt` command to completion, failing the test with its stderr unless it exits 0
/// (`run_ok`), or unless it fails with a message containing `needle` (`run_fails_with`).
pub trait RunOk {
    fn run_ok(&mut self) -> std::process::Output;
    fn run_fails_with(&mut self, needle: &str);
}

impl RunOk for std::process::Command {
    fn run_ok(&mut self) -> std::process::Output {
        let out = self.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn run_fails_with(&mut self, needle: &str) {
        let out = self.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "succeeded; wanted an error with {needle:?}"
        );
        assert!(err.contains(needle), "wanted {needle:?} in: {err}");
    }
}

/// A JSON file a command wrote.
pub fn read_json(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A fresh scratch folder for one test, under `target/tmp` so test runs leave nothing in
/// the system temp folder. Numbered per call: the tests of one binary share a process, so
/// two tests asking for the same name must still not share a folder.
pub fn tmp(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("pagedrt-test-{}-{n}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A golden greedy case of the float64 reference.
pub struct Golden {
    pub prompt: Vec<u32>,
    pub want: Vec<u32>,
    /// Steps up to which the reference's top-2 margin is safely above float32 noise.
    pub trusted: usize,
}

/// The golden cases, each with how many of its steps a float32 engine must reproduce.
pub fn golden() -> Vec<Golden> {
    golden_with_margin(0.02)
}

/// The golden cases, trusting steps up to the first whose reference top-2 margin is below
/// `min_margin` (the logit noise of the engine under test, doubled).
pub fn golden_with_margin(min_margin: f64) -> Vec<Golden> {
    golden_cases()
        .iter()
        .map(|c| {
            let margins: Vec<f64> = c["step_top1_top2_margin"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m.as_f64().unwrap())
                .collect();
            // Tokens are compared through the first step whose margin is below the noise
            // (that token may legitimately flip; everything after it depends on it).
            let trusted = margins
                .iter()
                .position(|&m| m < min_margin)
                .map_or(margins.len(), |i| i + 1);
            Golden {
                prompt: ids(&c["prompt_token_ids"]),
                want: ids(&c["generated_token_ids"]),
                trusted,
            }
        })
        .collect()
}

/// A request for the engine tests, validated against limits no test reaches, so what the
/// engine and the scheduler refuse of it is theirs to refuse (the server's validation has
/// its own tests).
pub fn request(
    id: u64,
    prompt: Vec<u32>,
    params: engine::sampler::SamplingParams,
) -> engine::GenerateRequest {
    let limits = engine::RequestLimits {
        vocab_size: u32::MAX as usize,
        max_model_len: usize::MAX / 2,
    };
    engine::GenerateRequest {
        id,
        request: limits.validate(prompt, params).unwrap(),
    }
}
