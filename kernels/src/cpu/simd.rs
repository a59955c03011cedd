//! Dot product and axpy with a run-time choice of AVX2/FMA code: the binary targets baseline
//! x86-64 (so it runs anywhere), and these two loops are where the CPU kernels spend their
//! time outside the GEMM library.

/// Sixteen independent lanes: with AVX2 that is two 8-wide FMA accumulators.
#[inline(always)]
pub(crate) fn dot_lanes(a: &[f32], b: &[f32]) -> f32 {
    let mut s = [0f32; 16];
    let chunks = a.len() / 16;
    for i in 0..chunks {
        let (ac, bc) = (&a[i * 16..i * 16 + 16], &b[i * 16..i * 16 + 16]);
        for j in 0..16 {
            s[j] += ac[j] * bc[j];
        }
    }
    let mut t: f32 = s.iter().sum();
    for i in chunks * 16..a.len() {
        t += a[i] * b[i];
    }
    t
}

#[inline(always)]
pub(crate) fn axpy_lanes(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

fn axpy_portable(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_lanes(y, a, x)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_avx2(y: &mut [f32], a: f32, x: &[f32]) {
    axpy_lanes(y, a, x)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_safe(a: &[f32], b: &[f32]) -> f32 {
    // SAFETY: only chosen by `dot_fn` after the CPU reported AVX2 and FMA.
    unsafe { dot_avx2(a, b) }
}

#[cfg(target_arch = "x86_64")]
fn axpy_avx2_safe(y: &mut [f32], a: f32, x: &[f32]) {
    // SAFETY: only chosen by `axpy_fn` after the CPU reported AVX2 and FMA.
    unsafe { axpy_avx2(y, a, x) }
}

pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The fastest `Σ a[i] * b[i]` this CPU supports.
pub fn dot_fn() -> fn(&[f32], &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return dot_avx2_safe;
    }
    dot_portable
}

/// The fastest `y += a * x` this CPU supports.
pub fn axpy_fn() -> fn(&mut [f32], f32, &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        return axpy_avx2_safe;
    }
    axpy_portable
}

/// `exp(x)` to about 2 ulp for x in [-87, 88]: 2^n · p(r) with r = x - n·ln 2 in
/// [-ln2/2, ln2/2] and a degree-6 polynomial. Inputs are clamped to that range: below
/// -87 gives exp(-87) ≈ 1.6e-38 (zero for a softmax's or SiLU's purposes), above 88
/// gives exp(88) ≈ 1.7e38.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn exp256(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(x, _mm256_set1_ps(88.0));
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // ln 2 split in two so n·ln2_hi is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
    // Taylor coefficients 1/k! for k = 6 down to 0 (Horner).
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    let pow2 = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    _mm256_mul_ps(p, _mm256_castsi256_ps(pow2))
}

/// The mask of the first `min(n, 16)` lanes of a 16-lane vector (a ragged end's masked
/// loads and stores).
#[inline(always)]
pub(crate) fn lanes16(n: usize) -> u16 {
    if n >= 16 {
        0xFFFF
    } else {
        (1u16 << n) - 1
    }
}

/// `exp256` on sixteen lanes: the same operations in the same order, so both paths give
/// the same bits.
///
/// # Safety
/// The CPU has the `Avx512` path's features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let x = _mm512_min_ps(x, _mm512_set1_ps(88.0));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    let pow2 = _mm512_slli_epi32::<23>(_mm512_add_epi32(
        _mm512_cvtps_epi32(n),
        _mm512_set1_epi32(127),
    ));
    _mm512_mul_ps(p, _mm512_castsi512_ps(pow2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dispatched_and_portable_agree() {
        let a: Vec<f32> = (0..67).map(|i| i as f32 * 0.1).collect();
        let b: Vec<f32> = (0..67).map(|i| 1.0 - i as f32 * 0.01).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot_fn()(&a, &b) as f64 - want).abs() < 1e-3);
        assert!((dot_portable(&a, &b) as f64 - want).abs() < 1e-3);
        let mut y = vec![1.0f32; 67];
        axpy_fn()(&mut y, 2.0, &a);
        assert!(y
            .iter()
            .zip(&a)
            .all(|(y, a)| (y - (1.0 + 2.0 * a)).abs() < 1e-6));
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn vector_exp_matches_f64_exp() {
        if !has_avx2_fma() {
            eprintln!("skipped: this CPU has no AVX2/FMA");
            return;
        }
        let mut worst = 0f64;
        for i in 0..=8000 {
            let x = -87.0 + i as f32 * (87.0 + 88.0) / 8000.0;
            let mut out = [0f32; 8];
            // SAFETY: AVX2 and FMA checked above.
            unsafe {
                use std::arch::x86_64::*;
                _mm256_storeu_ps(out.as_mut_ptr(), exp256(_mm256_set1_ps(x)))
            };
            let want = (x as f64).exp();
            worst = worst.max(((out[0] as f64 - want) / want).abs());
            if crate::cpu::isa::Isa::Avx512.supported() {
                let mut wide = [0f32; 16];
                // SAFETY: the AVX-512 path's features checked just above.
                unsafe {
                    use std::arch::x86_64::*;
                    _mm512_storeu_ps(wide.as_mut_ptr(), exp512(_mm512_set1_ps(x)))
                };
                assert_eq!(wide[0].to_bits(), out[0].to_bits(), "exp({x})");
            }
        }
        assert!(worst < 5e-7, "relative error {worst}");
    }
}
