//! Every CUDA kernel on the CUDA-on-CPU emulator, through the real launchers, against its CPU
//! twin or the float64 reference: the quick shapes of `pagedrt doctor --selftest --emulated`,
//! in four parts so that the test harness runs them side by side.

use kernels::cuda::selftest::{self, Group};
use kernels::cuda::Emu;

fn run(group: Group) {
    let started = std::time::Instant::now();
    let mut last = std::time::Instant::now();
    let checks = selftest::run_group(&Emu::new(), group, true, |c| {
        eprintln!(
            "{:.2}s {} {} {} rel_err {:.2e} tol {:.0e} deterministic {} {:?}",
            last.elapsed().as_secs_f64(),
            c.kernel,
            c.dtype,
            c.case,
            c.rel_err,
            c.tol,
            c.deterministic,
            c.error
        );
        last = std::time::Instant::now();
    });
    eprintln!(
        "{group:?}: {} cases in {:.1} s",
        checks.len(),
        started.elapsed().as_secs_f64()
    );
    for c in &checks {
        assert!(
            selftest::KERNELS.contains(&c.kernel.as_str()),
            "{}: missing from selftest::KERNELS (what doctor --kernel accepts)",
            c.kernel
        );
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(
        failed.is_empty(),
        "{} of {} failed: {failed:#?}",
        failed.len(),
        checks.len()
    );
}

#[test]
fn cache_layer_and_sampling_kernels_match_their_cpu_twins_on_the_emulator() {
    run(Group::Ops);
}

#[test]
fn bf16_attention_matches_the_f64_reference_on_the_emulator() {
    run(Group::AttentionBf16);
}

#[test]
fn f16_attention_matches_the_f64_reference_on_the_emulator() {
    run(Group::AttentionF16);
}

#[test]
fn f32_attention_matches_the_f64_reference_on_the_emulator() {
    run(Group::AttentionF32);
}
