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
}
