//! This machine's ceilings and the CPU GEMM against them, every ISA path interleaved.
//!
//! `cargo run --release -p pagedrt-benches --bin cpu-roofline -- [ROUNDS] [--quick]
//! [--only TEXT] [--profile] [--ceilings] [--sliced]` (`--ceilings`: parts 1 and 2 only;
//! `--sliced`: each case also with every call sliced in depth, interleaved, to compare)
//!
//! 1. Peak: register-only loops of independent FMAs (AVX2 and AVX-512, f32) and of
//!    `vdpbf16ps` (bf16 pairs into f32), on one thread and on two.
//! 2. Read bandwidth: a streaming sum over 256 MiB of huge-page-backed memory, one and two
//!    threads.
//! 3. The packed GEMM at SmolLM2-135M's shapes (qkv, o, gate/up, down, LM head) for 1, 8,
//!    64 and 2,048 rows, f32 and bf16 weights, on every ISA path the CPU supports, the paths
//!    and shapes interleaved round by round; the median GFLOP/s of the rounds, with its
//!    fraction of the peak of the arithmetic the path uses (bf16 on AVX-512: `vdpbf16ps`;
//!    otherwise f32 FMA of the path's width) and, for few rows, the weight bytes per second.
//!    Decode-sized calls cycle through enough copies of the matrix to exceed L3, as a
//!    decode step reads weights from memory.

use std::time::Instant;

use half::bf16;
use kernels::cpu::isa::Isa;
use kernels::cpu::packed::{PackedMatrix, PanelElem, Tuning};
use kernels::cpu::team;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3).max(1);
    let quick = args.iter().any(|a| a == "--quick");
    // `--only TEXT`: only the GEMM cases whose "matrix/rows/dtype/path" contains TEXT, and
    // no bandwidth loop; `--profile`: seconds per case, not 50 ms.
    let profile = args.iter().any(|a| a == "--profile");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let threads = team::threads();
    println!(
        "CPU path: {} ; {threads} threads",
        kernels::cpu::isa::describe()
    );
    let peaks = peaks(threads);
    if only.is_none() {
        bandwidth(threads);
    }
    if args.iter().any(|a| a == "--ceilings") {
        return;
    }
    let sliced = args.iter().any(|a| a == "--sliced");
    gemms(
        rounds,
        quick,
        only.as_deref(),
        profile,
        sliced,
        &peaks,
        threads,
    );
}

/// Peak GFLOP/s of each loop on `threads` threads: (f32 AVX2, f32 AVX-512, bf16 dot,
/// AMX bf16 tile products).
struct Peaks {
    avx2: f64,
    avx512: f64,
    dot: f64,
    amx: f64,
}

impl Peaks {
    /// The peak of the arithmetic `isa` uses for weights of `dtype`.
    fn of(&self, isa: Isa, dtype: &str) -> f64 {
        match (isa, dtype) {
            (Isa::Amx, "bf16") => self.amx,
            (Isa::Avx512, "bf16") => self.dot,
            (Isa::Avx512 | Isa::Amx, _) => self.avx512,
            _ => self.avx2,
        }
    }
}

fn best_of(threads: usize, flop: f64, f: fn(usize) -> f32, iters: usize) -> f64 {
    let mut best = 0f64;
    for _ in 0..5 {
        let t = Instant::now();
        let hs: Vec<_> = (0..threads)
            .map(|_| std::thread::spawn(move || f(iters)))
            .collect();
        let s: f32 = hs.into_iter().map(|h| h.join().unwrap_or(0.0)).sum();
        std::hint::black_box(s);
        best = best.max(flop * iters as f64 * threads as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}

fn peaks(threads: usize) -> Peaks {
    let mut p = Peaks {
        avx2: 0.0,
        avx512: 0.0,
        dot: 0.0,
        amx: 0.0,
    };
    #[cfg(target_arch = "x86_64")]
    for t in [1, threads] {
        let iters = 4_000_000;
        if Isa::Avx2.supported() {
            // 12 chains of 8-wide FMAs: 12 * 8 * 2 flop per iteration.
            p.avx2 = best_of(t, 192.0, |n| unsafe { peak::fma256(n) }, iters);
        }
        if Isa::Avx512.supported() {
            p.avx512 = best_of(t, 768.0, |n| unsafe { peak::fma512(n) }, iters);
            // 24 chains of 16 lanes x 2 products x 2 flop.
            p.dot = best_of(t, 1536.0, |n| unsafe { peak::dpbf16(n) }, iters);
        }
        if Isa::Amx.supported() {
            let flop = kernels::cpu::AMX_PEAK_FLOP_PER_ITER;
            p.amx = best_of(t, flop, kernels::cpu::amx_peak_loop, iters / 16);
        }
        println!(
            "peak, {t} thread(s): f32 FMA AVX2 {:.1}, f32 FMA AVX-512 {:.1}, bf16 vdpbf16ps {:.1}, AMX tdpbf16ps {:.1} GFLOP/s",
            p.avx2, p.avx512, p.dot, p.amx
        );
    }
    p
}

#[cfg(target_arch = "x86_64")]
mod peak {
    //! Register-only loops: independent accumulator chains, enough to cover the latency.
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn fma256(iters: usize) -> f32 {
        let mut a: [__m256; 12] = std::array::from_fn(|i| _mm256_set1_ps(i as f32 * 1e-3));
        let (b, c) = (_mm256_set1_ps(0.999), _mm256_set1_ps(1e-4));
        for _ in 0..iters {
            for v in a.iter_mut() {
                *v = _mm256_fmadd_ps(*v, b, c);
            }
        }
        let mut out = [0f32; 8];
        let s = a
            .iter()
            .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }

    /// 24 chains of `$op(chain)` for `$iters` iterations, summed.
    macro_rules! chains512 {
        ($iters:expr, $op:expr) => {{
            let mut a: [__m512; 24] = std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 1e-3));
            for _ in 0..$iters {
                for v in a.iter_mut() {
                    *v = $op(*v);
                }
            }
            let s = a
                .iter()
                .fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
            _mm512_reduce_add_ps(s)
        }};
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn fma512(iters: usize) -> f32 {
        let (b, c) = (_mm512_set1_ps(0.999), _mm512_set1_ps(1e-4));
        chains512!(iters, |v| _mm512_fmadd_ps(v, b, c))
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    pub unsafe fn dpbf16(iters: usize) -> f32 {
        // bf16 1.0 and 2^-15: the sums stay finite.
        let b: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3F80));
        let c: __m512bh = std::mem::transmute(_mm512_set1_epi16(0x3800));
        chains512!(iters, |v| _mm512_dpbf16_ps(v, b, c))
    }

    /// Sum of `n` f32 from `p` (a multiple of 64), eight independent 8-wide chains.
    #[target_feature(enable = "avx2")]
    pub unsafe fn sum(p: *const f32, n: usize) -> f32 {
        let mut a = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i + 64 <= n {
            for (j, v) in a.iter_mut().enumerate() {
                *v = _mm256_add_ps(*v, _mm256_loadu_ps(p.add(i + j * 8)));
            }
            i += 64;
        }
        let mut out = [0f32; 8];
        let s = a
            .iter()
            .fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
        _mm256_storeu_ps(out.as_mut_ptr(), s);
        out.iter().sum()
    }
}

/// A streaming read of 256 MiB (huge pages, as the packed weights use) on 1 and `threads`
/// threads through the team: median and best of nine.
fn bandwidth(threads: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        if !Isa::Avx2.supported() {
            return;
        }
        let n = (256 << 20) / 4;
        let mut buf = kernels::cpu::huge_pages::HugePageBuf::<f32>::zeroed(n);
        buf.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i % 7) as f32);
        for t in [1, threads] {
            let mut rates = vec![];
            for _ in 0..9 {
                let start = Instant::now();
                let per = n / t;
                let parts: Vec<&[f32]> = buf.chunks(per).collect();
                let sums: Vec<std::sync::atomic::AtomicU32> =
                    (0..t).map(|_| Default::default()).collect();
                team::for_each_task(t, |i| {
                    // SAFETY: AVX2 checked above; the part holds `per` elements.
                    let s = unsafe { peak::sum(parts[i].as_ptr(), per / 64 * 64) };
                    sums[i].store(s.to_bits(), std::sync::atomic::Ordering::Relaxed);
                });
                std::hint::black_box(&sums);
                rates.push((n * 4) as f64 / start.elapsed().as_secs_f64() / 1e9);
            }
            rates.sort_by(f64::total_cmp);
            println!(
                "read bandwidth, {t} thread(s): median {:.1} GB/s, best {:.1}",
                rates[4], rates[8]
            );
        }
    }
}

/// SmolLM2-135M's weight matrices: (name, outputs, inputs).
const SHAPES: [(&str, usize, usize); 5] = [
    ("qkv", 960, 576),
    ("o", 576, 576),
    ("gate/up", 3072, 576),
    ("down", 576, 1536),
    ("lm head", 49152, 576),
];

/// One measured case: a matrix (in one or more copies), rows, path.
struct Case {
    name: String,
    isa: Isa,
    dtype: &'static str,
    m: usize,
    n: usize,
    k: usize,
    /// The blocking: `None` is the default; `--sliced` adds cases with every call sliced
    /// in depth, to compare.
    tune: Option<Tuning>,
    secs: Vec<f64>,
}

fn copies<E: PanelElem>(w: &[f32], n: usize, k: usize, count: usize) -> Vec<PackedMatrix<E>> {
    (0..count).map(|_| PackedMatrix::pack(w, n, k)).collect()
}

fn gemms(
    rounds: usize,
    quick: bool,
    only: Option<&str>,
    profile: bool,
    sliced: bool,
    peaks: &Peaks,
    threads: usize,
) {
    let row_counts: &[usize] = if quick {
        &[1, 64, 2048]
    } else {
        &[1, 8, 64, 2048]
    };
    let mut cases = vec![];
    let mut mats = vec![];
    for &(name, n, k) in &SHAPES {
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 201) as f32 * 1e-3 - 0.1)
            .collect();
        // Enough copies that a pass over them (as a decode step's) is four times L3 in bf16.
        let count = (128usize << 20).div_ceil(n * k * 2).clamp(1, 128);
        mats.push((
            copies::<f32>(&w, n, k, count),
            copies::<bf16>(&w, n, k, count),
        ));
        for &m in row_counts {
            if name == "lm head" && m > 64 {
                continue; // logits are taken only at the positions that sample
            }
            for isa in Isa::available() {
                for dtype in ["f32", "bf16"] {
                    let id = format!("{name}/{m}/{dtype}/{isa}");
                    if only.is_some_and(|o| !id.contains(o)) {
                        continue;
                    }
                    let sliced_tune = Tuning {
                        full_depth_bytes: 0,
                        ..Tuning::default()
                    };
                    for tune in [None, Some(sliced_tune)]
                        .into_iter()
                        .take(1 + sliced as usize)
                    {
                        cases.push(Case {
                            name: name.into(),
                            isa,
                            dtype,
                            m,
                            n,
                            k,
                            tune,
                            secs: vec![],
                        });
                    }
                }
            }
        }
    }
    for round in 0..rounds {
        for c in cases.iter_mut() {
            let c = &mut *c;
            let idx = SHAPES.iter().position(|s| s.0 == c.name).unwrap_or(0);
            let x: Vec<f32> = (0..c.m * c.k)
                .map(|i| ((i * 31) % 17) as f32 * 0.05 - 0.4)
                .collect();
            let mut out = vec![0f32; c.m * c.n];
            // Calls for about 50 ms per sample (`--profile`: a few seconds).
            let budget = if profile { 3.0 } else { 0.05 };
            let (f32s, bf16s) = &mats[idx];
            let tune = c.tune.unwrap_or_default();
            let run = |i: usize, out: &mut [f32]| {
                if c.dtype == "f32" {
                    f32s[i % f32s.len()].linear_tuned(c.isa, out, &x, c.m, tune)
                } else {
                    bf16s[i % bf16s.len()].linear_tuned(c.isa, out, &x, c.m, tune)
                }
            };
            run(0, &mut out);
            let start = Instant::now();
            let mut calls = 0;
            while calls < 3 || start.elapsed().as_secs_f64() < budget {
                calls += 1;
                run(calls, &mut out);
            }
            c.secs.push(start.elapsed().as_secs_f64() / calls as f64);
            std::hint::black_box(&out);
        }
        eprintln!("round {} of {rounds} done", round + 1);
    }
    println!(
        "\n{:<8} {:>5} {:>6} {:>9} {:>5} {:>10} {:>9} {:>8}",
        "matrix", "rows", "dtype", "path", "", "GFLOP/s", "of peak", "GB/s w"
    );
    for c in &cases {
        let mut s = c.secs.clone();
        s.sort_by(f64::total_cmp);
        let t = s[s.len() / 2];
        let gflops = 2.0 * (c.m * c.n * c.k) as f64 / t / 1e9;
        let peak = peaks.of(c.isa, c.dtype);
        let wbytes = (c.n * c.k * if c.dtype == "f32" { 4 } else { 2 }) as f64;
        println!(
            "{:<8} {:>5} {:>6} {:>9}{} {:>5} {:>10.1} {:>8.1}% {:>8.1}",
            c.name,
            c.m,
            c.dtype,
            c.isa.name(),
            if c.tune.is_some() { "/sliced" } else { "" },
            threads,
            gflops,
            100.0 * gflops / peak,
            wbytes / t / 1e9
        );
    }
}
