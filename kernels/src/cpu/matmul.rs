//! Weight GEMMs through the `gemm` crate (multithreaded, AVX2/FMA kernels picked at run time).

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (a linear layer with Hugging Face's `[out, in]` weights).
pub fn linear(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 {
        return;
    }
    let threads = rayon::current_num_threads();
    let par = if m * n * k >= 1 << 16 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold the shapes asserted above; strides describe row-major x and
    // out and the transposed view of w.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}
