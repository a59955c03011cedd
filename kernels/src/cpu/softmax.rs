//! Softmax weights over long rows (a vocabulary's logits): `exp((x - shift) * scale)` with a
//! vectorised `exp` on the AVX2 and AVX-512 paths.
//!
//! Why here: the sampler turns 49,152 logits per sequence into weights two or three times
//! per token; with the C library's scalar `expf` that was about 5 % of a 64-sequence decode
//! step, all of it on the engine thread.

use super::isa::{self, Isa};

/// `dst[i] = exp((src[i] - shift) * scale)`; returns the sum of `dst`. The same inputs
/// always give the same outputs on one path (the sampler's two passes rely on it).
pub fn exp_weights(dst: &mut [f32], src: &[f32], shift: f32, scale: f32) -> f32 {
    exp_weights_on(isa::selected(), dst, src, shift, scale)
}

/// `exp_weights` on a given path (`isa` must be supported by this CPU).
pub fn exp_weights_on(isa: Isa, dst: &mut [f32], src: &[f32], shift: f32, scale: f32) -> f32 {
    assert_eq!(dst.len(), src.len());
    let (d, s, n) = (dst.as_mut_ptr(), src.as_ptr(), src.len());
    match isa {
        // SAFETY: the path's features were checked when `isa` was chosen; both slices
        // hold `n` elements.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Amx => unsafe { exp_weights_avx512(d, s, n, shift, scale) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { exp_weights_avx2(d, s, n, shift, scale) },
        _ => {
            let mut total = 0f32;
            for (d, &s) in dst.iter_mut().zip(src) {
                *d = ((s - shift) * scale).exp();
                total += *d;
            }
            total
        }
    }
}

/// `Σ exp((x[i] - shift) * scale)`, without keeping the weights.
pub fn exp_sum(x: &[f32], shift: f32, scale: f32) -> f32 {
    let isa = isa::selected();
    let mut buf = [0f32; 256];
    x.chunks(256)
        .map(|c| exp_weights_on(isa, &mut buf[..c.len()], c, shift, scale))
        .sum()
}

/// `w[i] = exp((w[i] - shift) * scale)` in place; returns the sum (the scores of an
/// attention page becoming its weights).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp_weights_in_place(w: &mut [f32], shift: f32, scale: f32) -> f32 {
    let p = w.as_mut_ptr();
    exp_weights_avx2(p, p, w.len(), shift, scale)
}

/// `exp_weights_in_place` on sixteen lanes.
///
/// # Safety
/// The CPU has the `Avx512` path's features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn exp_weights_in_place_avx512(w: &mut [f32], shift: f32, scale: f32) -> f32 {
    let p = w.as_mut_ptr();
    exp_weights_avx512(p, p, w.len(), shift, scale)
}

/// The vector body of `exp_weights` over `n` elements; `dst` may equal `src` (each group
/// of eight is read before it is written).
///
/// # Safety
/// AVX2 and FMA present; `src` and `dst` valid for `n` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_weights_avx2(
    dst: *mut f32,
    src: *const f32,
    n: usize,
    shift: f32,
    scale: f32,
) -> f32 {
    let (sh, sc) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    let mut acc = _mm256_setzero_ps();
    let body = n / 8 * 8;
    let mut i = 0;
    while i < body {
        let x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src.add(i)), sh), sc);
        let e = exp256(x);
        _mm256_storeu_ps(dst.add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut total: f32 = lanes.iter().sum();
    if body < n {
        // The tail through the same vector code, padded with -inf-like inputs.
        let mut pad = [f32::NEG_INFINITY; 8];
        std::ptr::copy_nonoverlapping(src.add(body), pad.as_mut_ptr(), n - body);
        let x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(pad.as_ptr()), sh), sc);
        _mm256_storeu_ps(lanes.as_mut_ptr(), exp256(x));
        for (j, &e) in lanes.iter().enumerate().take(n - body) {
            *dst.add(body + j) = e;
            total += e;
        }
    }
    total
}

/// `exp_weights_avx2` on sixteen lanes, the tail through masked loads and stores.
///
/// # Safety
/// The CPU has the `Avx512` path's features; `src` and `dst` valid for `n` elements.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn exp_weights_avx512(
    dst: *mut f32,
    src: *const f32,
    n: usize,
    shift: f32,
    scale: f32,
) -> f32 {
    let (sh, sc) = (_mm512_set1_ps(shift), _mm512_set1_ps(scale));
    let mut acc = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let left = n - i;
        let mask = super::simd::lanes16(left);
        let x = _mm512_mul_ps(
            _mm512_sub_ps(_mm512_maskz_loadu_ps(mask, src.add(i)), sh),
            sc,
        );
        let e = exp512(x);
        _mm512_mask_storeu_ps(dst.add(i), mask, e);
        acc = _mm512_mask_add_ps(acc, mask, acc, e);
        i += 16;
    }
    _mm512_reduce_add_ps(acc)
}

#[cfg(target_arch = "x86_64")]
use super::simd::{exp256, exp512};
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_f64_and_sum_on_every_path() {
        let src: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 200) as f32 * 0.1 - 12.0)
            .collect();
        for isa in Isa::available() {
            for len in [src.len(), 15, 16, 17, 1] {
                let src = &src[..len];
                let mut dst = vec![0f32; len];
                let total = exp_weights_on(isa, &mut dst, src, 8.0, 0.7);
                let mut want_total = 0f64;
                for (d, s) in dst.iter().zip(src) {
                    let arg = (*s as f64 - 8.0) * 0.7;
                    let w = arg.exp();
                    want_total += w;
                    // The f32 argument itself carries a relative rounding of 2^-24 (times
                    // |arg| in the result), on top of the vector exp's few ulp.
                    let tol = (5e-7 + arg.abs() * 1.2e-7) * w;
                    assert!((*d as f64 - w).abs() <= tol, "{isa}: {d} vs {w}");
                }
                assert!(
                    (total as f64 - want_total).abs() < 1e-5 * want_total,
                    "{isa} {len}"
                );
            }
        }
        let want: f64 = src.iter().map(|s| ((*s as f64 - 8.0) * 0.7).exp()).sum();
        assert!((exp_sum(&src, 8.0, 0.7) as f64 - want).abs() < 1e-5 * want);
    }
}
