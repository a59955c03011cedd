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

/// The long cases of the quick self-test, left out here to keep these tests short: every
/// planted bug shows in the others already.
const LONG: [&str; 4] = ["2048", "5000", "(16 seqs)", "(110 seqs)"];

/// The self-test's cases of `kernel` in `dtype` (but the long ones), on the emulator running
/// `text` as `src`.
fn run(src: &KernelSource, text: &str, kernel: &str, dtype: &str) -> Vec<Check> {
    let module = compile_module(src.name, text, &src.entry_points())
        .unwrap_or_else(|e| panic!("{}: {e}", src.file_name()));
    let emu = Emu::new().with_module(module);
    let want = |k: &str, d: &str, case: &str| {
        k == kernel && d == dtype && !LONG.iter().any(|l| case.contains(l))
    };
    let checks = selftest::run_selected(&emu, true, &want, |c| {
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
fn the_unmutated_copies_pass() {
    for (src, kernel, dtype) in [
        (
            source::PAGED_ATTENTION_DECODE,
            "paged_attention_decode",
            "f32",
        ),
        (
            source::PAGED_ATTENTION_TC,
            "paged_attention_prefill",
            "bf16",
        ),
    ] {
        let checks = run(&src, src.text(), kernel, dtype);
        assert!(checks.iter().all(|c| c.passed()), "{checks:#?}");
    }
}

#[test]
fn a_removed_barrier_is_a_shared_memory_race() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(
        &src,
        "    sync_threads();\n    decode_merge_store",
        "    decode_merge_store",
    );
    let checks = run(&src, &text, "paged_attention_decode", "f32");
    // Depending on which thread gets there first, the reader finds bytes another thread wrote
    // in the same epoch (a race) or bytes nobody has written yet: both name the barrier.
    all_fail_with(
        &checks,
        &[
            "`red`",
            "with no barrier between them | a barrier missing before this read",
        ],
    );
}

#[test]
fn a_removed_barrier_before_a_tile_is_refilled_is_a_race() {
    let src = source::PAGED_ATTENTION_TC;
    let text = mutate(
        &src,
        "        sync_threads();  // every warp is done with this stage before it is refilled\n",
        "",
    );
    let checks = run(&src, &text, "paged_attention_prefill", "f16");
    // Cases whose chunk fits one key tile never refill a stage: they pass. Every other one
    // must stop where a warp's cp.async into a stage meets another warp still reading it
    // (whichever of the two comes first).
    let failed: Vec<_> = checks.iter().filter(|c| !c.passed()).collect();
    assert!(failed.len() >= 2, "{checks:#?}");
    all_fail_with(
        &failed.into_iter().cloned().collect::<Vec<_>>(),
        &[
            "`smem`",
            "shared-memory race on `smem` | a barrier is missing between them",
        ],
    );
}

#[test]
fn a_missing_cp_async_wait_reads_bytes_in_flight() {
    let src = source::PAGED_ATTENTION_TC;
    let text = mutate(
        &src,
        "            cp_async_commit();\n            cp_async_wait<1>();\n        } else {\n            cp_async_wait<0>();\n        }\n        sync_threads();  // this tile",
        "            cp_async_commit();\n        }\n        sync_threads();  // this tile",
    );
    let checks = run(&src, &text, "paged_attention_prefill", "bf16");
    all_fail_with(&checks, &["while a cp.async of thread", "in flight"]);
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
fn a_shared_index_off_by_one_is_caught() {
    let src = source::PAGED_ATTENTION_DECODE;
    let text = mutate(&src, "w[HD + 1] = l[g];", "w[HD + 2] = l[g];");
    let checks = run(&src, &text, "paged_attention_decode", "f32");
    // The last warp's write lands past the array; the others' on a neighbour's sum, which
    // its own thread writes too: whichever comes first stops the launch.
    all_fail_with(&checks, &["`red`", "is out of bounds | writes what thread"]);
}

#[test]
fn a_token_index_off_by_one_misses_the_reference() {
    let src = source::PAGED_ATTENTION_TC;
    let text = mutate(
        &src,
        "(pos & ((1 << log2_block) - 1))",
        "((pos + 1) & ((1 << log2_block) - 1))",
    );
    let checks = run(&src, &text, "paged_attention_prefill", "bf16");
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
        "    // Every lane of a warp runs the same chunks",
        "    if (lane == 7) return;\n    // Every lane of a warp runs the same chunks",
    );
    let checks = run(&src, &text, "paged_attention_decode", "f32");
    all_fail_with(
        &checks,
        &[
            "barrier watchdog",
            "31 of 32 lanes arrived",
            "lane 7 exited",
        ],
    );
}
