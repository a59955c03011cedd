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

/// Structured outputs (`parse` with pydantic models, 100 sampled requests validated with
/// `jsonschema`), tool calls and the Responses API through the official client
/// (`openai_structured.py`). Needs `jsonschema` besides `openai`: the script says SKIP
/// without it, which PAGEDRT_REQUIRE_JSONSCHEMA (set by .ci/run) turns into a failure.
#[test]
fn the_official_client_gets_structured_outputs_tools_and_responses() {
    let Some(python) = std::env::var_os("PAGEDRT_OPENAI_PYTHON") else {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_OPENAI").is_none(),
            "PAGEDRT_REQUIRE_OPENAI is set but PAGEDRT_OPENAI_PYTHON is not"
        );
        report_skip!(
            "the_official_client_gets_structured_outputs_tools_and_responses: set \
             PAGEDRT_OPENAI_PYTHON to a python with `openai` and `jsonschema` (.ci/run does)"
        );
        return;
    };
    let port = start(tiny_engine(512, 4), "tiny", None);
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openai_structured.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args([&port.to_string(), "tiny"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(reason) = stdout.lines().find_map(|l| l.strip_prefix("SKIP: ")) {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_JSONSCHEMA").is_none(),
            "PAGEDRT_REQUIRE_JSONSCHEMA is set but: {reason}"
        );
        report_skip!("the_official_client_gets_structured_outputs_tools_and_responses: {reason}");
        return;
    }
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{stdout}{stderr}"
    );
}
