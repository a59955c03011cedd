//! The `pagedrt simulate` command-line contract: flags, JSON fields, files written, errors.

use crate::common;

use common::{pagedrt, tmp, RunOk};

#[test]
fn simulate_writes_the_documented_json() {
    let dir = tmp("json");
    let out = dir.join("out.json");
    pagedrt()
        .args([
            "simulate",
            "--workload",
            "sharegpt-like",
            "--num-requests",
            "300",
            "--request-rate",
            "20",
            "--cost-model",
            "h100-llama3-8b",
            "--policy",
            "fcfs",
            "--seed",
            "0",
            "--quiet",
            "--json",
        ])
        .arg(&out)
        .run_ok();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    for key in [
        "requests",
        "duration_s",
        "request_throughput",
        "output_token_throughput",
        "preemptions",
    ] {
        assert!(v[key].is_number(), "missing {key}");
    }
    assert_eq!(v["requests"], 300);
    for m in ["ttft_s", "tpot_s", "itl_s", "e2e_s"] {
        for s in ["mean", "median", "p90", "p99"] {
            let x = v[m][s].as_f64().unwrap_or(f64::NAN);
            assert!(x.is_finite() && x > 0.0, "{m}.{s} = {x}");
        }
    }
    // Throughput is completed requests over the simulated duration; 300 requests at 20 req/s
    // arrive over about 15 s, so the run lasts at least that long.
    let rps = v["request_throughput"].as_f64().unwrap();
    let dur = v["duration_s"].as_f64().unwrap();
    assert_eq!(v["completed"], 300);
    assert!((rps * dur - 300.0).abs() < 1e-6);
    assert!(dur > 12.0 && rps < 25.0, "{dur} s, {rps} req/s");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_sweep_writes_csvs_and_plots() {
    let dir = tmp("sweep");
    pagedrt()
        .args([
            "simulate",
            "--num-requests",
            "100",
            "--sweep-rates",
            "5,50",
            "--policy",
            "fcfs,sjf",
            "--num-blocks",
            "500",
            "--quiet",
            "--csv",
        ])
        .arg(dir.join("req.csv"))
        .arg("--series-csv")
        .arg(dir.join("series.csv"))
        .arg("--svg-dir")
        .arg(dir.join("svg"))
        .arg("--json")
        .arg(dir.join("sweep.json"))
        .run_ok();
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("sweep.json")).unwrap()).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 4);
    let rows = std::fs::read_to_string(dir.join("req.csv")).unwrap();
    assert_eq!(rows.lines().count(), 1 + 4 * 100);
    for f in [
        "ttft_cdf.svg",
        "kv_usage.svg",
        "sweep_throughput.svg",
        "sweep_p99_ttft.svg",
    ] {
        let svg = std::fs::read_to_string(dir.join("svg").join(f)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{f}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_explained() {
    let st = pagedrt()
        .args(["simulate", "--policy", "lottery", "--quiet"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("unknown policy 'lottery'"));
    let st = pagedrt()
        .args([
            "simulate",
            "--workload",
            "trace:/nonexistent.csv",
            "--quiet",
        ])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("/nonexistent.csv"));
}
