//! AVX-512 micro-kernels of the packed GEMM (`packed_kernel` describes tiles and layouts).
//!
//! A tile is up to 8 rows by 3 panels (48 columns): 24 zmm accumulators, three weight
//! vectors and a broadcast fit AVX-512's 32 registers. Per depth step (per pair of steps for
//! the dot-product kernel): three weight loads and eight broadcasts for 24 FMAs, so the loads
//! stay well under the two per cycle the FMA pipes need. Eight rows divide the engine's
//! usual batch sizes (64 decode rows, 2,048-token prefill steps), and the model's panel
//! counts (36, 60, 96, 192, 3,072 for SmolLM2) are multiples of three.
//!
//! Three kernels:
//! - `f32_kernel`: f32 weights, f32 activations, `vfmadd231ps`.
//! - `bf16_dot_kernel`: bf16 weights, activations rounded to bf16 pairs once per call,
//!   `vdpbf16ps` (32 multiply-adds per instruction into f32 lanes: twice the f32 FMA rate).
//! - `bf16_widen_kernel`: bf16 weights widened to f32 in registers (a shift and a mask per
//!   32 weights), f32 activations: for calls with few rows, which are bound by streaming the
//!   weights from memory and lose nothing by keeping the activations in f32.

// Register-blocked loops index several arrays (rows, panels, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::bf16;

use super::packed_kernel::{Act, Kernel, Tile, XLayout, PANEL};

/// Rows per tile.
pub(crate) const MR: usize = 8;
/// Panels per tile.
pub(crate) const NP: usize = 3;

pub(crate) fn f32_kernel() -> Kernel<f32> {
    Kernel {
        f: f32_tile,
        mr: MR,
        np: NP,
        // 3 panels x 128 steps x 64 B = 24 KiB of the 48 KiB L1.
        kc: 128,
        depth_align: 2,
        act: Act::F32,
    }
}

pub(crate) fn bf16_dot_kernel() -> Kernel<bf16> {
    Kernel {
        f: bf16_dot_tile,
        mr: MR,
        np: NP,
        // 3 panels x 256 steps x 32 B = 24 KiB.
        kc: 256,
        depth_align: 2,
        act: Act::Bf16Pairs,
    }
}

pub(crate) fn bf16_widen_kernel() -> Kernel<bf16> {
    Kernel {
        f: bf16_widen_tile,
        mr: MR,
        np: NP,
        kc: 256,
        depth_align: 2,
        act: Act::F32,
    }
}

/// Calls `$f::<R, P, ..>(t)` for the tile's rows (1..=8) and panels (1..=3).
macro_rules! dispatch {
    ($t:expr, $f:ident $(, $extra:tt)*) => {{
        let t = $t;
        match (t.rows, t.cols.div_ceil(PANEL)) {
            (8, 3) => $f::<8, 3 $(, $extra)*>(t),
            (7, 3) => $f::<7, 3 $(, $extra)*>(t),
            (6, 3) => $f::<6, 3 $(, $extra)*>(t),
            (5, 3) => $f::<5, 3 $(, $extra)*>(t),
            (4, 3) => $f::<4, 3 $(, $extra)*>(t),
            (3, 3) => $f::<3, 3 $(, $extra)*>(t),
            (2, 3) => $f::<2, 3 $(, $extra)*>(t),
            (1, 3) => $f::<1, 3 $(, $extra)*>(t),
            (8, 2) => $f::<8, 2 $(, $extra)*>(t),
            (7, 2) => $f::<7, 2 $(, $extra)*>(t),
            (6, 2) => $f::<6, 2 $(, $extra)*>(t),
            (5, 2) => $f::<5, 2 $(, $extra)*>(t),
            (4, 2) => $f::<4, 2 $(, $extra)*>(t),
            (3, 2) => $f::<3, 2 $(, $extra)*>(t),
            (2, 2) => $f::<2, 2 $(, $extra)*>(t),
            (1, 2) => $f::<1, 2 $(, $extra)*>(t),
            (8, _) => $f::<8, 1 $(, $extra)*>(t),
            (7, _) => $f::<7, 1 $(, $extra)*>(t),
            (6, _) => $f::<6, 1 $(, $extra)*>(t),
            (5, _) => $f::<5, 1 $(, $extra)*>(t),
            (4, _) => $f::<4, 1 $(, $extra)*>(t),
            (3, _) => $f::<3, 1 $(, $extra)*>(t),
            (2, _) => $f::<2, 1 $(, $extra)*>(t),
            _ => $f::<1, 1 $(, $extra)*>(t),
        }
    }};
}

/// # Safety
/// The CPU has the `Avx512` path's features; the tile's pointers cover what it names.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn f32_tile(t: &Tile<f32>) {
    if matches!(t.x_layout, XLayout::Packed(_)) {
        dispatch!(t, f32_rows, true)
    } else {
        dispatch!(t, f32_rows, false)
    }
}

/// `R` rows by `P` panels of f32 weights; `PACKED`: x is `[depth][MR]` (else row-major).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn f32_rows<const R: usize, const P: usize, const PACKED: bool>(t: &Tile<f32>) {
    let (row_step, depth_step) = if PACKED { (1, MR) } else { t.x_layout.steps() };
    let xr: [*const f32; R] = std::array::from_fn(|r| t.x.add(r * row_step));
    let w: [*const f32; P] = std::array::from_fn(|j| t.w.add(j * t.panel_stride));
    prefetch_output::<R>(t);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for d in 0..t.depth {
        let wv: [__m512; P] = std::array::from_fn(|j| _mm512_loadu_ps(w[j].add(d * PANEL)));
        for r in 0..R {
            let xv = _mm512_set1_ps(*xr[r].add(d * depth_step));
            for j in 0..P {
                acc[r][j] = _mm512_fmadd_ps(xv, wv[j], acc[r][j]);
            }
        }
    }
    store(t, &acc);
}

/// # Safety
/// As for `f32_tile`; the activations are bf16 pairs (`XLayout::Pairs`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn bf16_dot_tile(t: &Tile<bf16>) {
    dispatch!(t, bf16_dot_rows)
}

/// `R` rows by `P` panels: per pair of depth steps, one 64-byte load per panel (16 columns
/// x 2 steps) and one broadcast pair per row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn bf16_dot_rows<const R: usize, const P: usize>(t: &Tile<bf16>) {
    let (row_step, _) = t.x_layout.steps();
    let xr: [*const u32; R] = std::array::from_fn(|r| t.xp.add(r * row_step));
    let w: [*const bf16; P] = std::array::from_fn(|j| t.w.add(j * t.panel_stride));
    prefetch_output::<R>(t);
    let mut acc = [[_mm512_setzero_ps(); P]; R];
    for d2 in 0..t.depth.div_ceil(2) {
        let wv: [__m512bh; P] = std::array::from_fn(|j| {
            // SAFETY (of the cast): 32 bf16 are 512 bits, as `__m512bh` is.
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                w[j].add(d2 * 2 * PANEL) as *const _
            ))
        });
        for r in 0..R {
            let xv: __m512bh =
                std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(*xr[r].add(d2) as i32));
            for j in 0..P {
                acc[r][j] = _mm512_dpbf16_ps(acc[r][j], xv, wv[j]);
            }
        }
    }
    store(t, &acc);
}

/// # Safety
/// As for `f32_tile`; the activations are f32 (`Rows` or `Packed`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn bf16_widen_tile(t: &Tile<bf16>) {
    if matches!(t.x_layout, XLayout::Packed(_)) {
        dispatch!(t, bf16_widen_rows, true)
    } else {
        dispatch!(t, bf16_widen_rows, false)
    }
}

/// `R` rows by `P` panels, the weights widened to f32: per pair of depth steps, one load
/// per panel gives both steps' 16 columns (shift: the even step; mask: the odd one).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn bf16_widen_rows<const R: usize, const P: usize, const PACKED: bool>(t: &Tile<bf16>) {
    let (row_step, depth_step) = if PACKED { (1, MR) } else { t.x_layout.steps() };
    let xr: [*const f32; R] = std::array::from_fn(|r| t.x.add(r * row_step));
    let w: [*const bf16; P] = std::array::from_fn(|j| t.w.add(j * t.panel_stride));
    let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    // Two accumulator sets (even and odd steps): a single row would otherwise be one
    // dependent chain per panel, bound by the FMA latency rather than by memory.
    let mut even = [[_mm512_setzero_ps(); P]; R];
    let mut odd = [[_mm512_setzero_ps(); P]; R];
    let pairs = t.depth / 2;
    for d2 in 0..pairs {
        let v: [__m512i; P] =
            std::array::from_fn(|j| _mm512_loadu_si512(w[j].add(d2 * 2 * PANEL) as *const _));
        let lo: [__m512; P] =
            std::array::from_fn(|j| _mm512_castsi512_ps(_mm512_slli_epi32(v[j], 16)));
        let hi: [__m512; P] =
            std::array::from_fn(|j| _mm512_castsi512_ps(_mm512_and_si512(v[j], high)));
        for r in 0..R {
            let x0 = _mm512_set1_ps(*xr[r].add(2 * d2 * depth_step));
            let x1 = _mm512_set1_ps(*xr[r].add((2 * d2 + 1) * depth_step));
            for j in 0..P {
                even[r][j] = _mm512_fmadd_ps(x0, lo[j], even[r][j]);
                odd[r][j] = _mm512_fmadd_ps(x1, hi[j], odd[r][j]);
            }
        }
    }
    if t.depth % 2 == 1 {
        // The last pair's second step is padding (and its activation is not there).
        let d2 = pairs;
        for j in 0..P {
            let v = _mm512_loadu_si512(w[j].add(d2 * 2 * PANEL) as *const _);
            let lo = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
            for r in 0..R {
                let x0 = _mm512_set1_ps(*xr[r].add(2 * d2 * depth_step));
                even[r][j] = _mm512_fmadd_ps(x0, lo, even[r][j]);
            }
        }
    }
    for r in 0..R {
        for j in 0..P {
            even[r][j] = _mm512_add_ps(even[r][j], odd[r][j]);
        }
    }
    store(t, &even);
}

/// The output a later depth slice adds to was written one slice ago and may have left L1
/// and L2 for a prefill-sized block; asking for it now hides that wait (as in the AVX2
/// kernel).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn prefetch_output<const R: usize>(t: &Tile<impl Sized>) {
    if t.accumulate {
        for r in 0..R {
            let o = t.out.add(r * t.out_stride) as *const i8;
            let mut b = 0;
            while b < t.cols * 4 {
                _mm_prefetch::<_MM_HINT_T0>(o.add(b));
                b += 64;
            }
        }
    }
}

/// Writes (or adds) the tile's accumulators, the valid columns only (masked stores for a
/// last panel narrower than 16).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma")]
unsafe fn store<const R: usize, const P: usize, E>(t: &Tile<E>, acc: &[[__m512; P]; R]) {
    for r in 0..R {
        let o = t.out.add(r * t.out_stride);
        for j in 0..P {
            let mask = super::simd::lanes16(t.cols - j * PANEL);
            let mut a = acc[r][j];
            if t.accumulate {
                a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(mask, o.add(j * PANEL)));
            }
            _mm512_mask_storeu_ps(o.add(j * PANEL), mask, a);
        }
    }
}
