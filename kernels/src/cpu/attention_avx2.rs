//! The AVX2/FMA page arithmetic of CPU paged attention (`attention_pages` has the page loop
//! and says why): scores four keys at a time, one vector `exp` per page, V sums with the
//! heads' accumulators in registers. The cache's elements are f32 or f16 (`Lanes`); f16 is
//! widened in registers with F16C, so an f16 cache streams half the bytes.

// Register-blocked loops index several arrays (heads, key rows, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::attention_pages::{PageMath, WEIGHTS};
use super::softmax::exp_weights_in_place;

/// A KV element this kernel can load eight at a time as f32.
pub trait Lanes: Sized {
    /// Eight elements from `p` as f32.
    ///
    /// # Safety
    /// AVX2, FMA and F16C are present (the `Avx2` path); `p..p + 8` is readable.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Lanes for f16 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// The AVX2 page arithmetic.
pub(crate) struct Avx2;

impl<E: Lanes> PageMath<E> for Avx2 {
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scores(
        w: &mut [[f32; WEIGHTS]],
        off: usize,
        q: &[f32],
        kt: &[E],
        n: usize,
        hd: usize,
        scale: f32,
    ) {
        // Up to three heads share a pass over the keys; four go as two and two.
        match w.len() {
            1 => group_scores::<E, 1>(w, off, q, kt, n, hd, scale),
            2 => group_scores::<E, 2>(w, off, q, kt, n, hd, scale),
            3 => group_scores::<E, 3>(w, off, q, kt, n, hd, scale),
            _ => {
                group_scores::<E, 2>(&mut w[..2], off, &q[..2 * hd], kt, n, hd, scale);
                group_scores::<E, 2>(&mut w[2..], off, &q[2 * hd..], kt, n, hd, scale);
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn exp_in_place(w: &mut [f32], shift: f32) -> f32 {
        exp_weights_in_place(w, shift, 1.0)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate_v(
        out: &mut [f32],
        w: &[[f32; WEIGHTS]],
        off: usize,
        rescale: &[f32],
        vt: &[E],
        n: usize,
        hd: usize,
    ) {
        match rescale.len() {
            1 => accumulate_v::<E, 1>(out, w, off, rescale, vt, n, hd),
            2 => accumulate_v::<E, 2>(out, w, off, rescale, vt, n, hd),
            3 => accumulate_v::<E, 3>(out, w, off, rescale, vt, n, hd),
            _ => accumulate_v::<E, 4>(out, w, off, rescale, vt, n, hd),
        }
    }
}

/// Scores of `G` query heads (`q` is `[G, hd]`) for the `n` keys of a page, four keys per
/// pass: each eight-element slice of a key is widened once and feeds all `G` heads, so an
/// f16 page is converted once per pass over it rather than once per head (the conversions
/// were the largest cost of decode attention: 1.08-1.11x on a 30-layer decode step).
/// `G * 4` accumulators, `G` query vectors and a key vector fill the 16 registers at `G = 3`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_scores<E: Lanes, const G: usize>(
    scores: &mut [[f32; WEIGHTS]],
    off: usize,
    q: &[f32],
    kt: &[E],
    n: usize,
    hd: usize,
    scale: f32,
) {
    let qp = q.as_ptr();
    let sc = _mm_set1_ps(scale);
    let mut i0 = 0;
    while i0 < n {
        // Keys past the page's end re-read its last key; their scores are never used
        // (`off + i0 + 4 <= WEIGHTS` as `i0 < n` is a multiple of 4).
        let rows: [*const E; 4] =
            std::array::from_fn(|j| kt.as_ptr().add((i0 + j).min(n - 1) * hd));
        let mut acc = [[_mm256_setzero_ps(); 4]; G];
        let mut c = 0;
        while c < hd {
            let qv: [__m256; G] = std::array::from_fn(|h| _mm256_loadu_ps(qp.add(h * hd + c)));
            for j in 0..4 {
                let k = E::load8(rows[j].add(c));
                for h in 0..G {
                    acc[h][j] = _mm256_fmadd_ps(qv[h], k, acc[h][j]);
                }
            }
            c += 8;
        }
        for h in 0..G {
            let s = _mm_mul_ps(hsum4(acc[h]), sc);
            _mm_storeu_ps(scores[h].as_mut_ptr().add(off + i0), s);
        }
        i0 += 4;
    }
}

/// Four horizontal sums at once: lane `j` of the result is the sum of the lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(v: [__m256; 4]) -> __m128 {
    let a = _mm256_hadd_ps(v[0], v[1]);
    let b = _mm256_hadd_ps(v[2], v[3]);
    let ab = _mm256_hadd_ps(a, b);
    _mm_add_ps(_mm256_castps256_ps128(ab), _mm256_extractf128_ps(ab, 1))
}

/// `out[h] = out[h] · rescale[h] + Σ_i w[h][i] · v[i]`, 16 columns of the head dim at a
/// time so the `2·H` accumulators stay in registers across the page's keys.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn accumulate_v<E: Lanes, const H: usize>(
    out: &mut [f32],
    w: &[[f32; WEIGHTS]],
    off: usize,
    rescale: &[f32],
    vt: &[E],
    n: usize,
    hd: usize,
) {
    let op = out.as_mut_ptr();
    let vp = vt.as_ptr();
    let mut c = 0;
    while c < hd {
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for h in 0..H {
            let r = _mm256_set1_ps(rescale[h]);
            acc[h][0] = _mm256_mul_ps(_mm256_loadu_ps(op.add(h * hd + c)), r);
            acc[h][1] = _mm256_mul_ps(_mm256_loadu_ps(op.add(h * hd + c + 8)), r);
        }
        for i in 0..n {
            let v0 = E::load8(vp.add(i * hd + c));
            let v1 = E::load8(vp.add(i * hd + c + 8));
            for h in 0..H {
                let wi = _mm256_set1_ps(w[h][off + i]);
                acc[h][0] = _mm256_fmadd_ps(wi, v0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(wi, v1, acc[h][1]);
            }
        }
        for h in 0..H {
            _mm256_storeu_ps(op.add(h * hd + c), acc[h][0]);
            _mm256_storeu_ps(op.add(h * hd + c + 8), acc[h][1]);
        }
        c += 16;
    }
}
