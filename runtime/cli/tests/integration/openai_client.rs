//! The official `openai` Python package as the client (`openai_client.py`), against a real
//! server on 127.0.0.1. `.ci/run` installs the package into a virtual environment and points
//! PAGEDRT_OPENAI_PYTHON at its interpreter; without that variable the test says it is
//! skipped and why (and fails when PAGEDRT_REQUIRE_OPENAI is set, as in CI).

use crate::common;

use common::http::{start, tiny_engine};

#[test]
fn the_official_python_client_works_against_the_server() {
    let Some(python) = std::env::var_os("PAGEDRT_OPENAI_PYTHON") else {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_OPENAI").is_none(),
            "PAGEDRT_REQUIRE_OPENAI is set but PAGEDRT_OPENAI_PYTHON is not"
        );
        report_skip!(
            "the_official_python_client_works_against_the_server: set \
             PAGEDRT_OPENAI_PYTHON to a python with `openai` installed (.ci/run does)"
        );
        return;
    };
    let port = start(tiny_engine(128, 3), "tiny", Some("sekret"));
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&port.to_string(), "tiny", "sekret"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
