//! Softmax weights over long rows (a vocabulary's logits): `exp((x - shift) * scale)` with a
//! vectorised `exp` where the CPU has AVX2/FMA.
//!
//! Why here: the sampler turns 49,152 logits per sequence into weights two or three times
//! per token; with the C library's scalar `expf` that was about 5 % of a 64-sequence decode
//! step, all of it on the engine thread.

/// `dst[i] = exp((src[i] - shift) * scale)`; returns the sum of `dst`. The same inputs
/// always give the same outputs (the sampler's two passes rely on it).
pub fn exp_weights(dst: &mut [f32], src: &[f32], shift: f32, scale: f32) -> f32 {
    assert_eq!(dst.len(), src.len());
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU reported AVX2 and FMA.
        return unsafe { exp_weights_avx2(dst, src, shift, scale) };
    }
    let mut total = 0f32;
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = ((s - shift) * scale).exp();
        total += *d;
    }
    total
}

/// `Σ exp((x[i] - shift) * scale)`, without keeping the weights.
pub fn exp_sum(x: &[f32], shift: f32, scale: f32) -> f32 {
    let mut buf = [0f32; 256];
    x.chunks(256)
        .map(|c| exp_weights(&mut buf[..c.len()], c, shift, scale))
        .sum()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_weights_avx2(dst: &mut [f32], src: &[f32], shift: f32, scale: f32) -> f32 {
    use std::arch::x86_64::*;
    let (sh, sc) = (_mm256_set1_ps(shift), _mm256_set1_ps(scale));
    let mut acc = _mm256_setzero_ps();
    let body = src.len() / 8 * 8;
    let mut i = 0;
    while i < body {
        let x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(src.as_ptr().add(i)), sh), sc);
        let e = super::attention_avx2::exp256(x);
        _mm256_storeu_ps(dst.as_mut_ptr().add(i), e);
        acc = _mm256_add_ps(acc, e);
        i += 8;
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
    let mut total: f32 = lanes.iter().sum();
    if body < src.len() {
        // The tail through the same vector code, padded with -inf-like inputs.
        let mut pad = [f32::NEG_INFINITY; 8];
        pad[..src.len() - body].copy_from_slice(&src[body..]);
        let x = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(pad.as_ptr()), sh), sc);
        _mm256_storeu_ps(lanes.as_mut_ptr(), super::attention_avx2::exp256(x));
        for (j, d) in dst[body..].iter_mut().enumerate() {
            *d = lanes[j];
            total += lanes[j];
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_match_f64_and_sum() {
        let src: Vec<f32> = (0..1003)
            .map(|i| ((i * 37) % 200) as f32 * 0.1 - 12.0)
            .collect();
        let mut dst = vec![0f32; src.len()];
        let total = exp_weights(&mut dst, &src, 8.0, 0.7);
        let mut want_total = 0f64;
        for (d, s) in dst.iter().zip(&src) {
            let arg = (*s as f64 - 8.0) * 0.7;
            let w = arg.exp();
            want_total += w;
            // The f32 argument itself carries a relative rounding of 2^-24 (times |arg| in
            // the result), on top of the vector exp's few ulp.
            let tol = (5e-7 + arg.abs() * 1.2e-7) * w;
            assert!((*d as f64 - w).abs() <= tol, "{d} vs {w}");
        }
        assert!((total as f64 - want_total).abs() < 1e-5 * want_total);
        assert!((exp_sum(&src, 8.0, 0.7) as f64 - want_total).abs() < 1e-5 * want_total);
    }
}
