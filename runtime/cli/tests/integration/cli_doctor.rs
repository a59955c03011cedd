//! The `pagedrt doctor` contract: exit code 0 only when everything asked for succeeded, a
//! clear error for a bad architecture, and a JSON report of every kernel's compilation.

use crate::common;

use common::{pagedrt, read_json, tmp};

#[test]
fn a_bad_architecture_is_a_clear_error() {
    let out = pagedrt()
        .args(["doctor", "--compile-kernels", "--arch", "gfx90a"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a CUDA architecture: \"gfx90a\""), "{err}");
}

#[test]
fn compile_kernels_reports_every_kernel_and_exits_zero() {
    let nvrtc = kernels::cuda::libs::locate(kernels::cuda::libs::CudaLib::Nvrtc);
    if let Err(e) = nvrtc {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_NVRTC").is_none(),
            "NVRTC is required (PAGEDRT_REQUIRE_NVRTC is set): {e}"
        );
        report_skip!("compile_kernels_reports_every_kernel_and_exits_zero: no NVRTC: {e}");
        return;
    }
    let json = tmp("doctor").join("doctor.json");
    let out = pagedrt()
        .args(["doctor", "--compile-kernels", "--arch", "sm_80", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("Compiling every kernel for sm_80"),
        "{stdout}"
    );
    let report = read_json(&json);
    assert_eq!(report["ok"], true);
    let rows = report["compile"]["kernels"].as_array().unwrap();
    let expected: usize = kernels::cuda::source::ALL
        .iter()
        .map(|s| s.entry_points().len())
        .sum();
    assert_eq!(rows.len(), expected);
    for r in rows {
        assert_eq!(r["ok"], true, "{r}");
        assert!(
            r["resources"].as_str().unwrap().contains("registers"),
            "{r}"
        );
    }
    // The decode kernel on CUDA cores for a GQA group of 4, and the tensor-core kernels.
    for kernel in [
        "paged_attention_decode_bf16_hd128_g4",
        "paged_attention_decode_tc_bf16_hd128",
        "paged_attention_prefill_tc_bf16_hd128",
    ] {
        assert!(rows.iter().any(|r| r["kernel"] == kernel), "no {kernel}");
    }
}

/// The CPU kernels' path is reported, and `PAGEDRT_CPU_ISA` forces the portable one.
#[test]
fn doctor_reports_the_cpu_kernel_path_and_honours_a_forced_one() {
    let json = tmp("doctor-isa").join("doctor.json");
    let out = pagedrt()
        .env("PAGEDRT_CPU_ISA", "portable")
        .args(["doctor", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("CPU kernels: portable"), "{stdout}");
    let report = read_json(&json);
    let line = report["cpu_kernels"].as_str().unwrap();
    assert!(line.starts_with("portable"), "{line}");
    if kernels::cpu::isa::Isa::best() > kernels::cpu::isa::Isa::Portable {
        assert!(
            line.contains("forced by PAGEDRT_CPU_ISA=portable"),
            "{line}"
        );
    }
}

/// A kernel broken on purpose fails `pagedrt doctor --selftest --emulated` itself: argmax's
/// reduction tree without its barrier is a shared-memory race the emulator reports on the
/// first run, while the same file intact passes the same command.
#[test]
fn a_kernel_broken_on_purpose_fails_the_emulated_selftest() {
    let src = kernels::cuda::source::SAMPLING;
    let dir = tmp("doctor-emulated-kernel");
    let run = |text: &str| {
        let file = dir.join("sampling.cu");
        std::fs::write(&file, text).unwrap();
        let out = pagedrt()
            .args(["doctor", "--selftest", "--emulated", "--kernel", "argmax"])
            .arg("--emulated-kernel")
            .arg(&file)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.code(), format!("{stdout}\n{stderr}"))
    };
    let (code, log) = run(src.text());
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains("runs in place of the built-in sampling.cu"),
        "{log}"
    );
    assert!(log.contains(" 0 failed"), "{log}");
    assert!(
        !log.contains("rms_norm"),
        "--kernel argmax ran other kernels: {log}"
    );

    let anchor = "        }\n        sync_threads();\n    }";
    assert_eq!(
        src.text().matches(anchor).count(),
        1,
        "the mutation's anchor moved"
    );
    let (code, log) = run(&src.text().replacen(anchor, "        }\n    }", 1));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("FAILED"), "{log}");
    assert!(log.contains("shared-memory race on `best_"), "{log}");
}

#[test]
fn an_unknown_selftest_kernel_is_a_clear_error() {
    let out = pagedrt()
        .args([
            "doctor",
            "--selftest",
            "--emulated",
            "--kernel",
            "flash_attn",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--kernel \"flash_attn\": the self-test has no such kernel"),
        "{err}"
    );
}

/// `pagedrt doctor --engine-check --emulated`: the CUDA engine on the emulated device against
/// the CPU engine, from the command line, with its JSON report; a layer-norm kernel broken on
/// purpose (epsilon ignored, so rows come out scaled wrong) makes the same command fail.
#[test]
fn the_emulated_engine_check_passes_and_a_broken_norm_kernel_fails_it() {
    let spec = common::http::small_llama_config("doctor-engine-emu", 128, 2, 1);
    let dir = tmp("doctor-engine-emu-out");
    let json = dir.join("report.json");
    let run = |extra: &[&std::ffi::OsStr]| {
        let out = pagedrt()
            .args(["doctor", "--engine-check", "--emulated", "--model"])
            .arg(format!("dummy:{}", spec.display()))
            .arg("--json")
            .arg(&json)
            .args(extra)
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), log)
    };
    let (code, log) = run(&[]);
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("CPU vs cuda-emu"), "{log}");
    let report = read_json(&json);
    assert_eq!(report["engine_check"]["ok"], true, "{report}");
    assert_eq!(report["engine_check"]["device"], "cuda-emu", "{report}");

    let src = kernels::cuda::source::LAYER_OPS.text();
    let anchor = "rsqrtf(block_sum(ss, scratch) / dim + eps)";
    assert_eq!(
        src.matches(anchor).count(),
        2,
        "the mutation's anchor moved"
    );
    let broken = dir.join("layer_ops.cu");
    std::fs::write(
        &broken,
        src.replace(anchor, "rsqrtf(block_sum(ss, scratch) + eps)"),
    )
    .unwrap();
    let (code, log) = run(&["--emulated-kernel".as_ref(), broken.as_os_str()]);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("FAILED"), "{log}");
}
