//! Every CUDA kernel compiles with NVRTC to machine code for Ampere (sm_80) and Hopper
//! (sm_90), with no GPU present, and defines every entry point the wrappers launch.
//!
//! Needs NVRTC 13 (`pip install nvidia-cuda-nvrtc==13.0.88`, then PAGEDRT_CUDA_LIB_DIR=the
//! wheel's `nvidia/cu13/lib`). Without it the test says it was skipped, unless
//! PAGEDRT_REQUIRE_NVRTC is set (as `.ci/run` does), where a missing NVRTC fails it.

use kernels::cuda::libs::{locate, CudaLib};
use kernels::cuda::{compile, nvrtc, source, Arch};

/// Reports a skipped test on the terminal even while the harness captures output: a direct
/// write to stderr bypasses the capture that `eprintln!` goes through.
macro_rules! report_skip {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {}", format_args!($($arg)*));
    }};
}

fn nvrtc_or_skip() -> bool {
    match locate(CudaLib::Nvrtc) {
        Ok(_) => true,
        Err(e) => {
            assert!(
                std::env::var_os("PAGEDRT_REQUIRE_NVRTC").is_none(),
                "NVRTC is required (PAGEDRT_REQUIRE_NVRTC is set): {e}"
            );
            report_skip!("NVRTC not found, CUDA kernels not compiled: {e}");
            false
        }
    }
}

#[test]
fn every_kernel_compiles_for_ampere_and_hopper() {
    if !nvrtc_or_skip() {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    let mut report = format!("ptxas resource usage per kernel (NVRTC {major}.{minor}):\n");
    for arch in ["sm_80", "sm_90"] {
        let arch: Arch = arch.parse().unwrap();
        for src in source::ALL {
            let out = compile(&src, &arch, true)
                .unwrap_or_else(|e| panic!("{} for {arch}: {e}", src.file_name()));
            let cubin = out.cubin.as_ref().expect("sm_ arch gives machine code");
            assert!(
                cubin.starts_with(b"\x7fELF"),
                "{}: not an ELF cubin",
                src.name
            );
            for entry in src.entry_points() {
                assert!(
                    out.defines(&entry),
                    "{}: {entry} missing for {arch}",
                    src.name
                );
                let usage = out
                    .resource_usage(&entry)
                    .unwrap_or_else(|| panic!("no ptxas report for {entry}:\n{}", out.log));
                // A kernel that spills registers to local memory is a performance bug.
                for what in ["bytes spill stores", "bytes spill loads"] {
                    let bytes = number_before(&usage, what)
                        .unwrap_or_else(|| panic!("{entry} on {arch}: no {what:?} in {usage:?}"));
                    assert_eq!(bytes, 0, "{entry} on {arch} spills: {usage}");
                }
                report += &format!("  {arch} {entry}: {usage}\n");
            }
        }
    }
    // Straight to stderr, past the harness's capture, so CI's log shows every kernel's
    // registers and shared memory per architecture.
    use std::io::Write;
    let _ = std::io::stderr().write_all(report.as_bytes());
}

/// The number written just before the first `what` in a ptxas line ("12 bytes spill
/// stores" gives 12).
fn number_before(line: &str, what: &str) -> Option<u64> {
    let head = line[..line.find(what)?].trim_end();
    let digits = head.len() - head.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    head[head.len() - digits..].parse().ok()
}

#[test]
fn spill_sizes_are_read_as_whole_numbers() {
    let line = "Used 40 registers, 10 bytes spill stores, 0 bytes spill loads";
    assert_eq!(number_before(line, "bytes spill stores"), Some(10));
    assert_eq!(number_before(line, "bytes spill loads"), Some(0));
    assert_eq!(number_before(line, "bytes stack frame"), None);
}

#[test]
fn a_compile_error_names_the_file_and_line() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken =
        source::KernelSource::for_test("broken", "extern \"C\" __global__ void k() { x; }");
    let err = compile(&broken, &"sm_90".parse().unwrap(), false).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("broken.cu(1)"), "{msg}");
    assert!(msg.contains("identifier \"x\" is undefined"), "{msg}");
}
