//! The CUDA-on-CPU emulator's own checks, one probe kernel each (tests/emu_probe.cu): launch
//! limits, argument kinds, shared memory sized exactly and NaN-filled, races at block and warp
//! level, the barrier watchdog, full-warp masks, cp.async, and the tensor-core fragment
//! layouts pinned to the PTX ISA's tables against a plain matrix product.

use std::sync::OnceLock;

use kernels::cuda::emu::compile_module;
use kernels::cuda::launch::{arg, arg_mut, Device, KernelArg, LaunchCfg};
use kernels::cuda::{CudaError, Emu, KernelSource};

const PROBE: KernelSource = KernelSource::for_test("emu_probe", include_str!("emu_probe.cu"));

const ENTRIES: [&str; 15] = [
    "probe_store",
    "probe_i64",
    "probe_dynamic_unwritten",
    "probe_dynamic_bounds",
    "probe_divergent_barrier",
    "probe_lonely_barrier",
    "probe_warp_exchange",
    "probe_block_exchange",
    "probe_partial_mask",
    "probe_shuffles",
    "probe_mma_bf16",
    "probe_mma_f16",
    "probe_ldmatrix",
    "probe_cp_async",
    "probe_big_static",
];

/// The emulator with the probe module, compiled once for all tests of this file.
fn emu() -> &'static Emu {
    static EMU: OnceLock<Emu> = OnceLock::new();
    EMU.get_or_init(|| {
        let entries: Vec<String> = ENTRIES.iter().map(|e| e.to_string()).collect();
        let m = compile_module(PROBE.name, PROBE.text(), &entries)
            .unwrap_or_else(|e| panic!("emu_probe.cu: {e}"));
        Emu::new().with_module(m)
    })
}

fn cfg(grid: (u32, u32, u32), threads: u32, shared_bytes: u32) -> LaunchCfg {
    LaunchCfg {
        grid,
        block: (threads, 1, 1),
        shared_bytes,
    }
}

fn launch(entry: &str, c: LaunchCfg, args: &[KernelArg]) -> Result<(), CudaError> {
    // SAFETY: the probes' buffers are sized for the launches below; a mismatch is what some
    // tests want the emulator to refuse before running anything.
    unsafe { emu().launch(&PROBE, entry, c, args) }
}

fn error_of(entry: &str, c: LaunchCfg, args: &[KernelArg]) -> String {
    match launch(entry, c, args) {
        Ok(()) => panic!("{entry} ran, but should have been stopped"),
        Err(e) => e.to_string(),
    }
}

fn assert_has(msg: &str, needles: &[&str]) {
    for n in needles {
        assert!(msg.contains(n), "{msg:?} lacks {n:?}");
    }
}

#[test]
fn launches_inside_the_limits_run_and_outside_them_are_refused() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(64 * 2).unwrap();
    let n = KernelArg::I32(128);
    launch(
        "probe_store",
        cfg((2, 1, 1), 64, 0),
        &[arg_mut(e, &mut out), n],
    )
    .unwrap();
    let got = e.download(&out).unwrap();
    assert!(got.iter().enumerate().all(|(i, &v)| v == i as f32));
    for (c, needle) in [
        (cfg((1, 65536, 1), 32, 0), "65,535"),
        (cfg((1, 1, 65536), 32, 0), "65,535"),
        (cfg((0, 1, 1), 32, 0), "grid"),
        (cfg((1, 1, 1), 1056, 0), "1 to 1,024 threads"),
        (cfg((1, 1, 1), 48, 0), "not whole warps"),
        (cfg((1, 1, 1), 32, 164 * 1024), "dynamic shared memory"),
    ] {
        let msg = error_of("probe_store", c, &[arg_mut(e, &mut out), n]);
        assert_has(&msg, &[needle]);
    }
}

#[test]
fn arguments_must_match_the_kernels_signature() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(32).unwrap();
    let c = cfg((1, 1, 1), 32, 0);
    let msg = error_of("probe_i64", c, &[arg_mut(e, &mut out), KernelArg::I32(3)]);
    assert_has(&msg, &["argument 2 is i32, the kernel takes i64"]);
    let msg = error_of("probe_i64", c, &[arg_mut(e, &mut out)]);
    assert_has(&msg, &["1 arguments given, the kernel takes 2"]);
    let msg = error_of("probe_i64", c, &[arg(e, &out), KernelArg::I64(3)]);
    assert_has(&msg, &["a read-only buffer where the kernel writes"]);
    let ints = e.alloc_zeros::<i32>(32).unwrap();
    let msg = error_of("probe_i64", c, &[arg(e, &ints), KernelArg::I64(3)]);
    assert_has(&msg, &["argument 1 is const i32*, the kernel takes f32*"]);
    launch("probe_i64", c, &[arg_mut(e, &mut out), KernelArg::I64(7)]).unwrap();
    assert_eq!(e.download(&out).unwrap()[0], 7.0);
}

#[test]
fn dynamic_shared_memory_is_exactly_the_launched_size_and_never_written_by_itself() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(64).unwrap();
    let msg = error_of(
        "probe_dynamic_unwritten",
        cfg((1, 1, 1), 64, 256),
        &[arg_mut(e, &mut out)],
    );
    assert_has(
        &msg,
        &["no thread of this block has written yet", "NaN fill"],
    );
    // 64 floats fit 256 bytes; shifted by one, the last thread writes byte 256.
    let args = |out: &mut _, s| [arg_mut(e, out), KernelArg::I32(s)];
    launch(
        "probe_dynamic_bounds",
        cfg((1, 1, 1), 64, 256),
        &args(&mut out, 0),
    )
    .unwrap();
    let msg = error_of(
        "probe_dynamic_bounds",
        cfg((1, 1, 1), 64, 256),
        &args(&mut out, 1),
    );
    assert_has(
        &msg,
        &[
            "thread (63,0,0)",
            "at byte 256",
            "out of bounds (it has 256 bytes)",
        ],
    );
}

#[test]
fn static_and_dynamic_shared_memory_together_must_fit_the_device() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(32).unwrap();
    launch(
        "probe_big_static",
        cfg((1, 1, 1), 32, 0),
        &[arg_mut(e, &mut out)],
    )
    .unwrap();
    let msg = error_of(
        "probe_big_static",
        cfg((1, 1, 1), 32, 120 * 1024),
        &[arg_mut(e, &mut out)],
    );
    assert_has(&msg, &["exceed the device's"]);
}

#[test]
fn barriers_every_thread_must_reach_at_the_same_call() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(64).unwrap();
    let msg = error_of(
        "probe_divergent_barrier",
        cfg((1, 1, 1), 64, 0),
        &[arg_mut(e, &mut out)],
    );
    assert_has(&msg, &["divergent __syncthreads", "emu_probe.cu:"]);
    let msg = error_of(
        "probe_lonely_barrier",
        cfg((1, 1, 1), 64, 0),
        &[arg_mut(e, &mut out)],
    );
    assert_has(
        &msg,
        &["barrier watchdog", "1 of 64 threads arrived", "63 exited"],
    );
}

#[test]
fn shared_memory_races_are_found_at_block_and_warp_level() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(64).unwrap();
    for (entry, sync, ok) in [
        ("probe_block_exchange", 1, true),
        ("probe_block_exchange", 0, false),
        ("probe_warp_exchange", 1, true),
        ("probe_warp_exchange", 0, false),
    ] {
        // Both schedules: a race is found whichever thread comes first.
        for _ in 0..2 {
            let r = launch(
                entry,
                cfg((1, 1, 1), 64, 0),
                &[arg_mut(e, &mut out), KernelArg::I32(sync)],
            );
            match (r, ok) {
                (Ok(()), true) => {
                    let got = e.download(&out).unwrap();
                    for (t, &v) in got.iter().enumerate() {
                        let from = if entry == "probe_block_exchange" {
                            (t + 32) % 64
                        } else {
                            t / 32 * 32 + (t % 32 + 1) % 32
                        };
                        assert_eq!(v, from as f32, "{entry} thread {t}");
                    }
                }
                (Err(e), false) => {
                    let msg = e.to_string();
                    assert!(
                        msg.contains("shared-memory race on `x`")
                            || msg.contains("no thread of this block has written yet"),
                        "{msg}"
                    );
                }
                (r, _) => panic!("{entry} sync {sync}: {r:?}"),
            }
            e.vary_schedule();
        }
    }
}

#[test]
fn warp_collectives_take_full_masks_and_follow_cuda() {
    let e = emu();
    let mut out = e.alloc_zeros::<f32>(32).unwrap();
    let msg = error_of(
        "probe_partial_mask",
        cfg((1, 1, 1), 32, 0),
        &[arg_mut(e, &mut out)],
    );
    assert_has(&msg, &["mask 0x0000ffff", "only full-warp masks"]);
    let mut ints = e.alloc_zeros::<i32>(160).unwrap();
    launch(
        "probe_shuffles",
        cfg((1, 1, 1), 32, 0),
        &[arg_mut(e, &mut ints)],
    )
    .unwrap();
    let got = e.download(&ints).unwrap();
    let ballot = (0..32).filter(|l| l % 3 == 0).fold(0u32, |b, l| b | 1 << l) as i32;
    for l in 0..32usize {
        assert_eq!(got[l], (31 - l as i32) * 10, "idx lane {l}");
        assert_eq!(got[32 + l], ((l ^ 5) * 10) as i32, "xor lane {l}");
        assert_eq!(
            got[64 + l],
            (if l + 3 < 32 { l + 3 } else { l } * 10) as i32
        );
        assert_eq!(got[96 + l], (if l >= 3 { l - 3 } else { l } * 10) as i32);
        assert_eq!(got[128 + l], ballot);
    }
}

/// Random 16-bit values of a small range (exact in both formats).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 + 1)
                .wrapping_mul(2654435761)
                .wrapping_add(seed.wrapping_mul(40503));
            ((h >> 16) % 64) as f32 / 16.0 - 2.0
        })
        .collect()
}

#[test]
fn mma_follows_the_ptx_fragment_layout() {
    let e = emu();
    let (a, b) = (values(256, 1), values(128, 2));
    let mut want = vec![0f32; 128];
    for m in 0..16 {
        for n in 0..8 {
            want[m * 8 + n] = (0..16).map(|k| a[m * 16 + k] * b[k * 8 + n]).sum();
        }
    }
    let mut d = e.alloc_zeros::<f32>(128).unwrap();
    let c = cfg((1, 1, 1), 32, 0);
    let (ab, bb): (Vec<half::bf16>, Vec<half::bf16>) = (
        a.iter().map(|&x| half::bf16::from_f32(x)).collect(),
        b.iter().map(|&x| half::bf16::from_f32(x)).collect(),
    );
    let (da, db) = (e.upload(&ab).unwrap(), e.upload(&bb).unwrap());
    launch(
        "probe_mma_bf16",
        c,
        &[arg_mut(e, &mut d), arg(e, &da), arg(e, &db)],
    )
    .unwrap();
    assert_eq!(e.download(&d).unwrap(), want, "bf16");
    let (ah, bh): (Vec<half::f16>, Vec<half::f16>) = (
        a.iter().map(|&x| half::f16::from_f32(x)).collect(),
        b.iter().map(|&x| half::f16::from_f32(x)).collect(),
    );
    let (da, db) = (e.upload(&ah).unwrap(), e.upload(&bh).unwrap());
    let mut d = e.alloc_zeros::<f32>(128).unwrap();
    launch(
        "probe_mma_f16",
        c,
        &[arg_mut(e, &mut d), arg(e, &da), arg(e, &db)],
    )
    .unwrap();
    assert_eq!(e.download(&d).unwrap(), want, "f16");
}

#[test]
fn ldmatrix_follows_the_ptx_fragment_layout() {
    let e = emu();
    // Element (r, c) holds r * 16 + c, as raw 16-bit bits.
    let m: Vec<half::bf16> = (0..256u16).map(half::bf16::from_bits).collect();
    let dm = e.upload(&m).unwrap();
    for trans in [0, 1] {
        let mut out = e.alloc_zeros::<i32>(128).unwrap();
        launch(
            "probe_ldmatrix",
            cfg((1, 1, 1), 32, 0),
            &[arg_mut(e, &mut out), arg(e, &dm), KernelArg::I32(trans)],
        )
        .unwrap();
        let got = e.download(&out).unwrap();
        for lane in 0..32usize {
            for j in 0..4usize {
                // Matrix j is the quadrant at rows 8 (j & 1), columns 8 (j >> 1).
                let (r0, c0) = (8 * (j & 1), 8 * (j >> 1));
                let (a, b) = (lane / 4, 2 * (lane % 4));
                let at = |r: usize, c: usize| ((r0 + r) * 16 + c0 + c) as u32;
                let (lo, hi) = if trans == 0 {
                    (at(a, b), at(a, b + 1))
                } else {
                    (at(b, a), at(b + 1, a))
                };
                assert_eq!(
                    got[lane * 4 + j] as u32,
                    lo | hi << 16,
                    "trans {trans} lane {lane} register {j}"
                );
            }
        }
    }
}

#[test]
fn cp_async_lands_at_its_wait_and_not_before() {
    let e = emu();
    let input: Vec<f32> = (0..512).map(|i| i as f32).collect();
    let din = e.upload(&input).unwrap();
    let mut out = e.alloc_zeros::<f32>(128).unwrap();
    let c = cfg((1, 1, 1), 128, 0);
    launch(
        "probe_cp_async",
        c,
        &[arg_mut(e, &mut out), arg(e, &din), KernelArg::I32(1)],
    )
    .unwrap();
    let got = e.download(&out).unwrap();
    assert!(got
        .iter()
        .enumerate()
        .all(|(t, &v)| v == ((4 * t + 4) % 512) as f32));
    let msg = error_of(
        "probe_cp_async",
        c,
        &[arg_mut(e, &mut out), arg(e, &din), KernelArg::I32(0)],
    );
    assert_has(&msg, &["cp.async", "in flight"]);
}
