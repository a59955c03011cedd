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
