//! On a machine with a GPU: every CUDA kernel against its CPU twin or a float64 reference
//! (the quick shapes of `pagedrt doctor --selftest`). Without a GPU the test prints that it
//! was skipped and why, and passes: there is nothing to run it on.

use kernels::cuda::{selftest, Gpu};

/// Reports a skipped test on the terminal even while the harness captures output: a direct
/// write to stderr bypasses the capture that `eprintln!` goes through.
macro_rules! report_skip {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "SKIPPED {}", format_args!($($arg)*));
    }};
}

#[test]
fn every_cuda_kernel_matches_its_reference_on_the_gpu() {
    let gpu = match Gpu::open(0) {
        Ok(g) => g,
        Err(e) => {
            report_skip!("every_cuda_kernel_matches_its_reference_on_the_gpu: no GPU: {e}");
            return;
        }
    };
    let checks = selftest::run_all(&gpu, true, |c| {
        eprintln!(
            "{} {} {} rel_err {:.2e} tol {:.0e} deterministic {} {:?}",
            c.kernel, c.dtype, c.case, c.rel_err, c.tol, c.deterministic, c.error
        )
    });
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        checks.len()
    );
}
