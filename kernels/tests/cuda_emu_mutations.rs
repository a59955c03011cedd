//! Kernels broken on purpose fail the emulated self-test (what `pagedrt doctor --selftest
//! --emulated` runs), deterministically and with a message that names the bug: each test
//! compiles a mutated copy of a kernel file with the host C++ compiler, runs the self-test's
//! cases of that kernel on the emulator with the copy in place of the built-in module, and
//! checks how they fail. No sanitizer, no timing, no luck: the emulator's own checks
//! (shared-memory races, bounds, the barrier watchdog) and the float64 reference find them.

use kernels::cuda::emu::compile_module;
use kernels::cuda::selftest::{self, Check};
use kernels::cuda::{source, Emu, KernelSource};

/// `src`'s text with the one occurrence of `from` replaced by `to`.
fn mutate(src: &KernelSource, from: &str, to: &str) -> String {
    let text = src.text();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{}: the mutation's anchor must occur once: {from:?}",
        src.file_name()
    );
    text.replacen(from, to, 1)
}

/// The self-test's cases of `kernel` in `dtype`, on the emulator running `text` as `src`.
fn run(src: &KernelSource, text: &str, kernel: &str, dtype: &str) -> Vec<Check> {
    let module = compile_module(src.name, text, &src.entry_points())
        .unwrap_or_else(|e| panic!("{}: {e}", src.file_name()));
    let emu = Emu::new().with_module(module);
    let checks = selftest::run_selected(&emu, true, &|k, d| k == kernel && d == dtype, |c| {
        eprintln!(
            "{} {} {}: passed {} rel_err {:.2e} {:?}",
            c.kernel,
            c.dtype,
            c.case,
            c.passed(),
            c.rel_err,
            c.error
        )
    });
    assert!(!checks.is_empty(), "no case of {kernel} {dtype} ran");
    checks
}

/// Every case failed with an error containing each of `needles`, where a needle may list
/// alternatives separated by " | ".
fn all_fail_with(checks: &[Check], needles: &[&str]) {
    for c in checks {
        let err = c.error.as_deref().unwrap_or_else(|| {
            panic!(
                "{} {}: no error (rel_err {:.2e})",
                c.kernel, c.case, c.rel_err
            )
        });
        for n in needles {
            assert!(
                n.split(" | ").any(|alt| err.contains(alt)),
                "{} {}: {err:?} lacks {n:?}",
                c.kernel,
                c.case
            );
        }
        assert!(!c.passed());
    }
}

#[test]
fn the_unmutated_copy_passes() {
    let src = source::PAGED_ATTENTION_DECODE;
    let checks = run(&src, src.text(), "paged_attention_decode", "bf16");
    assert!(checks.iter().all(|c| c.passed()), "{checks:#?}");
}

#[test]
fn a_removed_barrier_is_a_shared_memory_race() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(
        &src,
        "    sync_threads();\n\n    // Softmax numerators",
        "\n    // Softmax numerators",
    );
    let checks = run(&src, &text, "paged_attention_decode", "bf16");
    // Depending on which thread gets there first, the reader finds bytes another thread wrote
    // in the same epoch (a race) or bytes nobody has written yet: both name the barrier.
    all_fail_with(
        &checks,
        &[
            "`smem`",
            "with no barrier between them | a barrier missing before this read",
        ],
    );
}

#[test]
fn a_removed_barrier_in_a_reduction_tree_is_a_race() {
    let src = source::SAMPLING;
    let text = mutate(
        &src,
        "        }\n        sync_threads();\n    }",
        "        }\n    }",
    );
    let checks = run(&src, &text, "argmax", "f32");
    all_fail_with(&checks, &["shared-memory race on `best_"]);
}

#[test]
fn a_shared_index_off_by_one_is_out_of_bounds() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(
        &src,
        "s += red[(w * G + g) * HD + d];",
        "s += red[(w * G + g) * HD + d + 1];",
    );
    let checks = run(&src, &text, "paged_attention_decode", "f16");
    all_fail_with(&checks, &["is out of bounds", "`smem`"]);
}

#[test]
fn a_token_index_off_by_one_misses_the_reference() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(
        &src,
        "load_vec<T, EPL>(kf, k_cache + ((blk * num_kv_heads + kvh) * block_size +\n                                            pos % block_size)",
        "load_vec<T, EPL>(kf, k_cache + ((blk * num_kv_heads + kvh) * block_size +\n                                            (pos + 1) % block_size)",
    );
    let checks = run(&src, &text, "paged_attention_decode", "f32");
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(!failed.is_empty(), "{checks:#?}");
    for c in &failed {
        assert!(c.error.is_none(), "{c:?}");
        assert!(c.rel_err.is_finite() && c.rel_err > c.tol, "{c:?}");
    }
}

#[test]
fn a_lane_that_leaves_before_a_shuffle_trips_the_barrier_watchdog() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(
        &src,
        "    // Scores. Every lane",
        "    if (lane == 7) return;\n    // Scores. Every lane",
    );
    let checks = run(&src, &text, "paged_attention_decode", "bf16");
    all_fail_with(
        &checks,
        &[
            "barrier watchdog",
            "31 of 32 lanes arrived",
            "lane 7 exited",
        ],
    );
}
