//! The error every backend operation can return.

use kernels::cuda::CudaError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A CUDA call failed (driver, NVRTC, cuBLAS, a kernel launch or an asynchronous
    /// fault surfacing at the next synchronisation); `op` is the backend operation.
    #[error("{op}: {source}")]
    Cuda {
        op: &'static str,
        #[source]
        source: CudaError,
    },
    /// An operation this backend has no kernel for (a weight or cache dtype, a shape).
    #[error("{backend} backend: {what}")]
    Unsupported { backend: &'static str, what: String },
    /// Buffers handed to an operation that do not fit it: a bug in the caller (the model or
    /// the engine), never a user's input.
    #[error("{op}: {problem}")]
    Mismatch { op: &'static str, problem: String },
}
