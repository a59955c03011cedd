//! The `pagedrt simulate` command-line contract: flags, JSON fields, files written, errors.

use crate::common;

use common::{pagedrt, read_json, tmp, RunOk};

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
    let v = read_json(&out);
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
    let v = read_json(&dir.join("sweep.json"));
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
    // Refused by the argument parser, which names the value and lists the policies.
    pagedrt()
        .args(["simulate", "--policy", "lottery", "--quiet"])
        .run_fails_with("invalid value 'lottery' for '--policy <POLICY>'");
    pagedrt()
        .args(["simulate", "--policy", "fcfs,lottery", "--quiet"])
        .run_fails_with("[possible values: fcfs, priority, sjf, prefix-aware]");
    pagedrt()
        .args(["simulate", "--workload", "trace:/nonexistent.csv"])
        .arg("--quiet")
        .run_fails_with("/nonexistent.csv");
}

#[test]
fn check_steps_measures_a_drift_that_cost_scale_replays() {
    // A step log whose steps all took 1.5 times what the preset predicts: the check reports
    // a ratio of 1.5 in total and in every class.
    let dir = tmp("check-steps");
    let model = scheduler::sim::CostModel::cpu_smollm2_135m();
    let mut log = String::new();
    for (p, d, c) in [(128, 0, 128), (0, 1, 300), (0, 6, 2000), (64, 3, 900)] {
        let pairs = p * (p + 1) / 2;
        let s = 1.5 * model.compute_time(p, d, c, pairs);
        log += &format!(
            "{{\"prefill_tokens\":{p},\"decode_seqs\":{d},\"context_tokens\":{c},\
             \"prefill_pairs\":{pairs},\"seconds\":{s}}}\n"
        );
    }
    let steps = dir.join("steps.jsonl");
    std::fs::write(&steps, log).unwrap();
    let out = dir.join("check.json");
    pagedrt()
        .args([
            "bench",
            "check-steps",
            "--cost-model",
            "cpu-smollm2-135m",
            "--steps",
        ])
        .arg(&steps)
        .arg("--json")
        .arg(&out)
        .run_ok();
    let v = read_json(&out);
    assert_eq!(v["steps"], 4);
    assert!((v["ratio"].as_f64().unwrap() - 1.5).abs() < 1e-9, "{v}");
    let classes = v["classes"].as_array().unwrap();
    assert_eq!(classes.len(), 4);
    for c in classes {
        assert!(
            (c["median_ratio"].as_f64().unwrap() - 1.5).abs() < 1e-9,
            "{c}"
        );
    }

    // Replaying with --cost-scale 1.5: all requests arrive at once, so the run takes exactly
    // 1.5 times as long.
    let duration = |scale: &str| {
        let out = dir.join(format!("sim-{scale}.json"));
        pagedrt()
            .args([
                "simulate",
                "--workload",
                "fixed",
                "--input-len",
                "uniform:16:300",
                "--output-len",
                "uniform:4:64",
                "--num-requests",
                "40",
                "--cost-model",
                "cpu-smollm2-135m",
                "--cost-scale",
                scale,
                "--quiet",
                "--json",
            ])
            .arg(&out)
            .run_ok();
        let v = read_json(&out);
        v["duration_s"].as_f64().unwrap()
    };
    let (d1, d15) = (duration("1"), duration("1.5"));
    assert!((d15 / d1 - 1.5).abs() < 1e-9, "{d1} s, {d15} s");

    pagedrt()
        .args(["simulate", "--cost-scale", "0", "--quiet"])
        .run_fails_with("expected a positive number");
    pagedrt()
        .args(["bench", "check-steps", "--cost-model", "cpu-smollm2-135m"])
        .arg("--steps")
        .arg(dir.join("missing.jsonl"))
        .run_fails_with("missing.jsonl");
    std::fs::remove_dir_all(&dir).unwrap();
}
