//! What can go wrong between finding the CUDA libraries and running a kernel.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error(
        "the CUDA library {lib} was not found (searched the loader path and the existing \
         folders {searched:?}); install it, or set PAGEDRT_CUDA_LIB_DIR to its folder"
    )]
    LibraryNotFound { lib: String, searched: Vec<PathBuf> },
    #[error("NVRTC failed to compile {file} for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC call {call} failed: {code}")]
    Nvrtc { call: &'static str, code: String },
    #[error("not a CUDA architecture: {0:?} (expected sm_XY or compute_XY, e.g. sm_90)")]
    BadArch(String),
    #[error("CUDA driver: {0}")]
    Driver(String),
    #[error("emulator: kernel {kernel}: {message}")]
    Emulator { kernel: String, message: String },
    #[error("kernel {kernel}: {problem}")]
    Unsupported { kernel: String, problem: String },
}
