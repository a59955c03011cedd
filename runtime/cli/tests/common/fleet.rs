//! `pagedrt serve` replicas and `vllm-router` as child processes on 127.0.0.1, for the tests
//! of a fleet. Each replica is its own process: its metrics (process-wide) are its own.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::http::{metric, request};

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until `GET path` on `port` answers 200 (`child` must not exit meanwhile).
pub fn wait_ready(child: &mut KillOnDrop, port: u16, path: &str, what: &str) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        || request(port, "GET", path, b"", None).status != 200
    {
        if let Ok(Some(st)) = child.0.try_wait() {
            let mut err = String::new();
            if let Some(mut e) = child.0.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            panic!("{what} exited ({st}) before it was ready: {err}");
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "{what} did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `pagedrt serve` of the tiny model (`config`), served as `tiny`.
pub struct Replica {
    pub port: u16,
    /// Where its KV events are published, if they are.
    pub events: Option<String>,
    _child: KillOnDrop,
}

impl Replica {
    pub fn start(config: &std::path::Path, with_events: bool, extra: &[&str]) -> Replica {
        let port = free_port();
        let events = with_events.then(|| format!("tcp://127.0.0.1:{}", free_port()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pagedrt"));
        cmd.args(["serve", "--port", &port.to_string()])
            .arg("--model")
            .arg(format!("dummy:{}", config.display()))
            .args(["--served-model-name", "tiny", "--num-blocks", "512"])
            .args(extra);
        if let Some(e) = &events {
            cmd.args(["--kv-events-endpoint", e]);
        }
        let child = cmd
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = KillOnDrop(child);
        wait_ready(&mut child, port, "/health", "pagedrt serve");
        Replica {
            port,
            events,
            _child: child,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn metrics(&self) -> String {
        request(self.port, "GET", "/metrics", b"", None).body
    }

    /// An unlabelled counter or gauge (0 before it was first recorded).
    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.metrics(), name).unwrap_or(0.0)
    }
}

/// The Python environment with `vllm-router`, pyzmq and msgpack (`.ci/run` makes it and sets
/// `PAGEDRT_FLEET_PYTHON` to its interpreter), or why a test that needs it skips: `None`
/// after printing the reason, a failure when `PAGEDRT_REQUIRE_FLEET` is set (as in CI).
pub fn fleet_python(test: &str) -> Option<PathBuf> {
    match std::env::var_os("PAGEDRT_FLEET_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("PAGEDRT_REQUIRE_FLEET").is_none(),
                "PAGEDRT_REQUIRE_FLEET is set but PAGEDRT_FLEET_PYTHON is not"
            );
            report_skip!(
                "{test}: set PAGEDRT_FLEET_PYTHON to a python with vllm-router==0.1.17, pyzmq \
                 and msgpack installed (.ci/run does)"
            );
            None
        }
    }
}

/// `vllm-router` (from the same environment as `python`) in front of `replicas`, with
/// `--policy policy` and the extra arguments.
pub fn start_router(
    python: &std::path::Path,
    replicas: &[&Replica],
    policy: &str,
    extra: &[String],
) -> (u16, KillOnDrop) {
    let port = free_port();
    let bin = python.with_file_name("vllm-router");
    let mut cmd = Command::new(&bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .arg("--worker-urls")
        .args(replicas.iter().map(|r| r.url()))
        .args(["--policy", policy, "--log-level", "warning"])
        // The router would otherwise poll /health every 60 s and give up on a worker that
        // was slow to answer once; a test machine is busy.
        .args(["--health-check-interval-secs", "1"])
        // Its own Prometheus exporter listens on a fixed port unless told otherwise.
        .args(["--prometheus-host", "127.0.0.1"])
        .args(["--prometheus-port", &free_port().to_string()])
        .args(extra);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    let mut child = KillOnDrop(child);
    wait_ready(&mut child, port, "/health", "vllm-router");
    (port, child)
}
