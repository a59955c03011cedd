//! The AVX-512 page arithmetic of CPU paged attention (`attention_pages` has the page loop).
//!
//! Against the AVX2 kernel: scores eight keys per pass for up to three heads (24 zmm
//! accumulators; four heads take four keys per pass) with one reduction per eight keys, and
//! the V sum holds up to four 16-wide slices of the head dim for up to four heads in 16
//! accumulators, so each V row is loaded once per page for a head dim of 64 (the AVX2 kernel
//! walks the page's keys once per 16 columns).

// Register-blocked loops index several arrays (heads, key rows, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::attention_pages::{PageMath, WEIGHTS};
use super::softmax::exp_weights_in_place_avx512;

/// A KV element this kernel can load sixteen at a time as f32.
pub trait Lanes512: Sized {
    /// Sixteen elements from `p` as f32.
    ///
    /// # Safety
    /// The `Avx512` path's features are present; `p..p + 16` is readable.
    unsafe fn load16(p: *const Self) -> __m512;
}

impl Lanes512 for f32 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
    unsafe fn load16(p: *const f32) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Lanes512 for f16 {
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
    unsafe fn load16(p: *const f16) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
    }
}

/// The AVX-512 page arithmetic.
pub(crate) struct Avx512;

impl<E: Lanes512> PageMath<E> for Avx512 {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
    unsafe fn scores(
        w: &mut [[f32; WEIGHTS]],
        off: usize,
        q: &[f32],
        kt: &[E],
        n: usize,
        hd: usize,
        scale: f32,
    ) {
        match w.len() {
            1 => group_scores::<E, 1, 8>(w, off, q, kt, n, hd, scale),
            2 => group_scores::<E, 2, 8>(w, off, q, kt, n, hd, scale),
            3 => group_scores::<E, 3, 8>(w, off, q, kt, n, hd, scale),
            _ => group_scores::<E, 4, 4>(w, off, q, kt, n, hd, scale),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
    unsafe fn exp_in_place(w: &mut [f32], shift: f32) -> f32 {
        exp_weights_in_place_avx512(w, shift, 1.0)
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
    unsafe fn accumulate_v(
        out: &mut [f32],
        w: &[[f32; WEIGHTS]],
        off: usize,
        rescale: &[f32],
        vt: &[E],
        n: usize,
        hd: usize,
    ) {
        let chunks = hd / 16;
        let mut c0 = 0;
        while c0 < chunks {
            let cb = (chunks - c0).min(4);
            let a = (&mut *out, w, off, rescale, vt, n, hd, c0 * 16);
            match (rescale.len(), cb) {
                (1, 1) => accumulate_v::<E, 1, 1>(a),
                (1, 2) => accumulate_v::<E, 1, 2>(a),
                (1, 3) => accumulate_v::<E, 1, 3>(a),
                (1, _) => accumulate_v::<E, 1, 4>(a),
                (2, 1) => accumulate_v::<E, 2, 1>(a),
                (2, 2) => accumulate_v::<E, 2, 2>(a),
                (2, 3) => accumulate_v::<E, 2, 3>(a),
                (2, _) => accumulate_v::<E, 2, 4>(a),
                (3, 1) => accumulate_v::<E, 3, 1>(a),
                (3, 2) => accumulate_v::<E, 3, 2>(a),
                (3, 3) => accumulate_v::<E, 3, 3>(a),
                (3, _) => accumulate_v::<E, 3, 4>(a),
                (_, 1) => accumulate_v::<E, 4, 1>(a),
                (_, 2) => accumulate_v::<E, 4, 2>(a),
                (_, 3) => accumulate_v::<E, 4, 3>(a),
                (_, _) => accumulate_v::<E, 4, 4>(a),
            }
            c0 += cb;
        }
    }
}

/// Scores of `G` query heads (`q` is `[G, hd]`) for the `n` keys of a page, `KP` keys per
/// pass: each 16-element slice of a key is widened once and feeds all `G` heads; the
/// `G * KP` accumulators are reduced once per pass.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn group_scores<E: Lanes512, const G: usize, const KP: usize>(
    scores: &mut [[f32; WEIGHTS]],
    off: usize,
    q: &[f32],
    kt: &[E],
    n: usize,
    hd: usize,
    scale: f32,
) {
    let qp = q.as_ptr();
    let mut i0 = 0;
    while i0 < n {
        // Keys past the page's end re-read its last key; their scores are never used
        // (`off + i0 + KP <= WEIGHTS` as `i0 < n` is a multiple of `KP`).
        let rows: [*const E; KP] =
            std::array::from_fn(|j| kt.as_ptr().add((i0 + j).min(n - 1) * hd));
        let mut acc = [[_mm512_setzero_ps(); KP]; G];
        let mut c = 0;
        while c < hd {
            let qv: [__m512; G] = std::array::from_fn(|h| _mm512_loadu_ps(qp.add(h * hd + c)));
            for j in 0..KP {
                let k = E::load16(rows[j].add(c));
                for h in 0..G {
                    acc[h][j] = _mm512_fmadd_ps(qv[h], k, acc[h][j]);
                }
            }
            c += 16;
        }
        for h in 0..G {
            let dst = scores[h].as_mut_ptr().add(off + i0);
            if KP == 8 {
                let s = hsum8(std::array::from_fn(|j| acc[h][j]));
                _mm256_storeu_ps(dst, _mm256_mul_ps(s, _mm256_set1_ps(scale)));
            } else {
                let s = hsum4(std::array::from_fn(|j| acc[h][j]));
                _mm_storeu_ps(dst, _mm_mul_ps(s, _mm_set1_ps(scale)));
            }
        }
        i0 += KP;
    }
}

/// Each vector's 16 lanes summed down to 8 (its two halves added).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn halves(v: __m512) -> __m256 {
    _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps::<1>(v))
}

/// Eight horizontal sums at once: lane `j` of the result is the sum of the lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn hsum8(v: [__m512; 8]) -> __m256 {
    let r: [__m256; 8] = std::array::from_fn(|j| halves(v[j]));
    // After two rounds of pairwise adds, each 128-bit half holds one partial sum per
    // vector: keys 0-3 (or 4-7), lanes 0-3 in the low half and 4-7 in the high one.
    let b0 = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
    let b1 = _mm256_hadd_ps(_mm256_hadd_ps(r[4], r[5]), _mm256_hadd_ps(r[6], r[7]));
    _mm256_add_ps(
        _mm256_permute2f128_ps::<0x20>(b0, b1),
        _mm256_permute2f128_ps::<0x31>(b0, b1),
    )
}

/// Four horizontal sums at once: lane `j` of the result is the sum of the lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn hsum4(v: [__m512; 4]) -> __m128 {
    let r: [__m256; 4] = std::array::from_fn(|j| halves(v[j]));
    let ab = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
    _mm_add_ps(_mm256_castps256_ps128(ab), _mm256_extractf128_ps::<1>(ab))
}

/// Output, weights, their offset, rescales, V tile, keys, head dim, first column of the
/// slice.
type VArgs<'a, E> = (
    &'a mut [f32],
    &'a [[f32; WEIGHTS]],
    usize,
    &'a [f32],
    &'a [E],
    usize,
    usize,
    usize,
);

/// `out[h][c0..c0 + 16 CB] = out[h][..] · rescale[h] + Σ_i w[h][i] · v[i][..]` for `H`
/// heads: the `H * CB` accumulators stay in registers across the page's keys and each V
/// slice loaded feeds all `H` heads.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn accumulate_v<E: Lanes512, const H: usize, const CB: usize>(a: VArgs<E>) {
    let (out, w, off, rescale, vt, n, hd, c0) = a;
    let op = out.as_mut_ptr().add(c0);
    let vp = vt.as_ptr().add(c0);
    let mut acc = [[_mm512_setzero_ps(); CB]; H];
    for h in 0..H {
        let r = _mm512_set1_ps(rescale[h]);
        for cb in 0..CB {
            acc[h][cb] = _mm512_mul_ps(_mm512_loadu_ps(op.add(h * hd + cb * 16)), r);
        }
    }
    for i in 0..n {
        let v: [__m512; CB] = std::array::from_fn(|cb| E::load16(vp.add(i * hd + cb * 16)));
        for h in 0..H {
            let wi = _mm512_set1_ps(w[h][off + i]);
            for cb in 0..CB {
                acc[h][cb] = _mm512_fmadd_ps(wi, v[cb], acc[h][cb]);
            }
        }
    }
    for h in 0..H {
        for cb in 0..CB {
            _mm512_storeu_ps(op.add(h * hd + cb * 16), acc[h][cb]);
        }
    }
}
