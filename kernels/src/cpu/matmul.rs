//! Weight GEMMs through the `gemm` crate (multithreaded, AVX2/FMA kernels picked at run time).

use rayon::prelude::*;

/// Up to this many rows, `linear` streams the weights once for all rows (matrix-vector
/// style) instead of calling the blocked GEMM. (The engine's weights go through
/// `PackedMatrix`; this row-major path is the baseline the benchmarks compare it with.)
pub const SMALL_M: usize = 8;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` (a linear layer with Hugging Face's `[out, in]` weights).
pub fn linear(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 {
        return;
    }
    if m <= SMALL_M {
        return linear_small_m(out, x, w, m, k, n);
    }
    gemm_into(out, n, x, w, m, k, n);
}

/// The blocked GEMM into `out` with a row stride of `out_rs`: `out[i * out_rs + j] = x[i] ·
/// w[j]` for i < m, j < n (so a block of columns of a wider output can be written).
pub(crate) fn gemm_into(
    out: &mut [f32],
    out_rs: usize,
    x: &[f32],
    w: &[f32],
    m: usize,
    k: usize,
    n: usize,
) {
    assert!(m == 0 || out.len() >= (m - 1) * out_rs + n);
    assert!(x.len() >= m * k && w.len() >= n * k && out_rs >= n);
    let threads = rayon::current_num_threads();
    let par = if m * n * k >= 1 << 16 && threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the slices hold the shapes asserted above; strides describe row-major x, out
    // with row stride out_rs, and the transposed view of w.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            out_rs as isize,
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

/// Decode-sized GEMM: each weight row is read once and dotted with all `m` input rows, so the
/// step costs one pass over the weights (memory-bound, as decode is). Split over output
/// columns across threads.
fn linear_small_m(out: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize) {
    const COLS: usize = 64;
    let dot = super::simd::dot_fn();
    let mut cols = vec![0f32; n * m];
    cols.par_chunks_mut(COLS * m)
        .enumerate()
        .for_each(|(c, chunk)| {
            for (j, dst) in chunk.chunks_mut(m).enumerate() {
                let col = c * COLS + j;
                let wr = &w[col * k..(col + 1) * k];
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = dot(&x[i * k..(i + 1) * k], wr);
                }
            }
        });
    for j in 0..n {
        for i in 0..m {
            out[i * n + j] = cols[j * m + i];
        }
    }
}
