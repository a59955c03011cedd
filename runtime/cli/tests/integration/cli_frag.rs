//! The `pagedrt frag` command-line contract: the JSON fields, the files written, errors.

use crate::common;

use common::{pagedrt, tmp, RunOk};

#[test]
fn frag_writes_the_documented_json_csv_and_charts() {
    let dir = tmp("json");
    let out = dir.join("out.json");
    let st = pagedrt()
        .args([
            "frag",
            "--workload",
            "sharegpt-like",
            "--num-requests",
            "300",
            "--memory",
            "20000",
            "--quiet",
            "--json",
        ])
        .arg(&out)
        .arg("--csv")
        .arg(dir.join("out.csv"))
        .arg("--series-csv")
        .arg(dir.join("series.csv"))
        .arg("--svg-dir")
        .arg(dir.join("svg"))
        .run_ok();
    let stdout = String::from_utf8_lossy(&st.stdout);
    assert!(stdout.contains("| paged-16 |"), "{stdout}");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    let allocs = v["allocators"].as_array().unwrap();
    let names: Vec<&str> = allocs.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for want in [
        "paged-1",
        "paged-16",
        "paged-256",
        "paged-16-noshare",
        "contiguous-max-len",
        "contiguous-max-tokens",
        "contiguous-oracle",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for a in allocs {
        let f = |k: &str| a[k].as_f64().unwrap_or_else(|| panic!("{k} in {a}"));
        let sum = f("useful_frac")
            + f("reserved_frac")
            + f("internal_frac")
            + f("external_frac")
            + f("free_frac");
        assert!((sum - 1.0).abs() < 1e-9, "{}: {sum}", a["name"]);
        assert!(f("max_concurrency") >= 1.0 && f("request_throughput") > 0.0);
    }
    let useful = |n: &str| {
        allocs.iter().find(|a| a["name"] == n).unwrap()["useful_of_allocated"]
            .as_f64()
            .unwrap()
    };
    assert!(useful("paged-16") > useful("contiguous-oracle"));
    assert!(useful("contiguous-oracle") > useful("contiguous-max-len"));
    let csv = std::fs::read_to_string(dir.join("out.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + allocs.len());
    for svg in [
        "figure2_allocated.svg",
        "budget_breakdown.svg",
        "block_size_useful.svg",
        "block_size_throughput.svg",
        "useful_over_time.svg",
    ] {
        let text = std::fs::read_to_string(dir.join("svg").join(svg)).unwrap();
        assert!(text.starts_with("<svg"), "{svg}");
    }
}

#[test]
fn frag_converts_bytes_with_the_model_shape_and_rejects_bad_names() {
    // Llama-3-8B in bf16 stores 128 KiB of K/V per token: 1 GiB is 8192 tokens.
    let dir = tmp("bytes");
    let out = dir.join("out.json");
    pagedrt()
        .args([
            "frag",
            "--num-requests",
            "50",
            "--memory",
            "1GiB",
            "--model",
            "llama-3-8b",
            "--allocators",
            "paged-16,contiguous-oracle-best-fit",
            "--quiet",
            "--json",
        ])
        .arg(&out)
        .run_ok();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["memory_tokens"], 8192);
    assert_eq!(v["allocators"][1]["fit"], "best-fit");
    let st = pagedrt()
        .args(["frag", "--allocators", "paged-x", "--quiet"])
        .output()
        .unwrap();
    assert!(!st.status.success());
    assert!(String::from_utf8_lossy(&st.stderr).contains("unknown allocator 'paged-x'"));
}
