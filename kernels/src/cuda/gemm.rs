//! The weight GEMM of every linear layer, `out[m, n] = x[m, k] · w[n, k]ᵀ`, with inputs and
//! output in one element type and f32 accumulation: cuBLAS's `cublasGemmEx` on a GPU
//! (`CUBLAS_COMPUTE_32F`: bf16/f16 inputs on the tensor cores, f32 without TF32, so the CPU
//! backend stays the reference), and a reference loop on the emulator that accumulates the
//! same way. The output is rounded to the element type once, at the end.

use cudarc::cublas::sys::{
    cublasComputeType_t, cublasGemmAlgo_t, cublasHandle_t, cublasOperation_t as Op, cudaDataType,
};
use rayon::prelude::*;

use super::elem::GpuElem;
use super::CudaError;

/// The shape of `out[m, n] = x[m, k] · w[n, k]ᵀ`, all row-major and dense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
}

impl GemmShape {
    /// Fails unless the buffers hold at least the shape's elements and its sizes fit the
    /// 32-bit integers cuBLAS takes.
    pub fn check(&self, out: usize, x: usize, w: usize) -> Result<(), CudaError> {
        let GemmShape { m, k, n } = *self;
        let fits = [m, k, n, m * k, n * k, m * n]
            .iter()
            .all(|&v| v <= i32::MAX as usize);
        if out >= m * n && x >= m * k && w >= n * k && fits {
            return Ok(());
        }
        Err(CudaError::Unsupported {
            kernel: "gemm".into(),
            problem: format!("buffers of {out}, {x} and {w} elements for [{m}, {k}] x [{n}, {k}]ᵀ"),
        })
    }
}

/// cuBLAS's name for an element type.
pub fn cuda_data_type<E: GpuElem>() -> cudaDataType {
    match E::SUFFIX {
        "bf16" => cudaDataType::CUDA_R_16BF,
        "f16" => cudaDataType::CUDA_R_16F,
        _ => cudaDataType::CUDA_R_32F,
    }
}

/// Queues the GEMM on the handle's stream.
///
/// # Safety
/// The addresses are live device buffers of this handle's context holding at least the
/// shape's elements (see [`GemmShape::check`]).
pub unsafe fn cublas_gemm_nt<E: GpuElem>(
    handle: cublasHandle_t,
    out: u64,
    x: u64,
    w: u64,
    s: GemmShape,
) -> Result<(), CudaError> {
    let (alpha, beta) = (1.0f32, 0.0f32);
    let t = cuda_data_type::<E>();
    // Row-major out[m, n] = x[m, k] · w[n, k]ᵀ is column-major outᵀ = w · xᵀ: A = w (k x n
    // column-major, transposed), B = xᵀ (k x m).
    // SAFETY: per the contract; alpha and beta are host scalars of the compute type.
    unsafe {
        cudarc::cublas::result::gemm_ex(
            handle,
            Op::CUBLAS_OP_T,
            Op::CUBLAS_OP_N,
            s.n as i32,
            s.m as i32,
            s.k as i32,
            &alpha as *const f32 as *const _,
            w as *const _,
            t,
            s.k as i32,
            x as *const _,
            t,
            s.k as i32,
            &beta as *const f32 as *const _,
            out as *mut _,
            t,
            s.n as i32,
            cublasComputeType_t::CUBLAS_COMPUTE_32F,
            cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(CudaError::Blas)
}

/// The reference: each output an f32 sum over k in order, rounded to `E` once.
pub fn reference_gemm_nt<E: GpuElem>(out: &mut [E], x: &[E], w: &[E], s: GemmShape) {
    let GemmShape { m, k, n } = s;
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        out[..m * n].fill(E::from_f32(0.0));
        return;
    }
    let wf: Vec<f32> = w[..n * k].iter().map(|v| v.to_f32()).collect();
    out[..m * n]
        .par_chunks_mut(n)
        .zip(x[..m * k].par_chunks(k))
        .for_each(|(o, xr)| {
            let xr: Vec<f32> = xr.iter().map(|v| v.to_f32()).collect();
            for (j, oj) in o.iter_mut().enumerate() {
                let wr = &wf[j * k..(j + 1) * k];
                let acc = xr.iter().zip(wr).fold(0.0f32, |a, (p, q)| a + p * q);
                *oj = E::from_f32(acc);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn the_reference_matches_a_float64_product_and_rounds_once() {
        let s = GemmShape { m: 3, k: 37, n: 5 };
        let x: Vec<f32> = (0..s.m * s.k)
            .map(|i| ((i * 7 % 13) as f32 - 6.0) / 8.0)
            .collect();
        let w: Vec<f32> = (0..s.n * s.k)
            .map(|i| ((i * 5 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let mut out = vec![0.0f32; s.m * s.n];
        reference_gemm_nt(&mut out, &x, &w, s);
        for i in 0..s.m {
            for j in 0..s.n {
                let want: f64 = (0..s.k)
                    .map(|p| x[i * s.k + p] as f64 * w[j * s.k + p] as f64)
                    .sum();
                assert!((out[i * s.n + j] as f64 - want).abs() < 1e-4, "{i},{j}");
            }
        }
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut ob = vec![bf16::ZERO; s.m * s.n];
        reference_gemm_nt(&mut ob, &xb, &wb, s);
        // These inputs are exact in bf16, so the only rounding is the output's.
        for (b, f) in ob.iter().zip(&out) {
            assert_eq!(*b, bf16::from_f32(*f));
        }
    }

    #[test]
    fn a_short_buffer_or_an_oversized_shape_is_refused() {
        let s = GemmShape { m: 2, k: 3, n: 4 };
        assert!(s.check(8, 6, 12).is_ok());
        assert!(s.check(7, 6, 12).is_err());
        assert!(s.check(8, 5, 12).is_err());
        let huge = GemmShape {
            m: 1 << 16,
            k: 1 << 16,
            n: 1,
        };
        assert!(huge.check(usize::MAX, usize::MAX, usize::MAX).is_err());
    }
}
