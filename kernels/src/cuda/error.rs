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
    Driver(#[from] cudarc::driver::DriverError),
    #[error("cuBLAS: {0}")]
    Blas(#[from] cudarc::cublas::result::CublasError),
    /// A thread compiling kernels in parallel panicked (a bug; its message was printed).
    #[error("a kernel compile thread panicked")]
    CompileThreadPanicked,
    #[error("CUDA driver: launch of {entry}: {source}")]
    Launch {
        entry: String,
        source: cudarc::driver::DriverError,
    },
    /// A kernel run by the CUDA-on-CPU emulator broke one of its rules (a race, a barrier
    /// watchdog, an out-of-range launch): the emulator's own report.
    #[error("emulator: kernel {kernel}: {message}")]
    Emulator { kernel: String, message: String },
    /// The emulator's host side failed (memory, a module built for another ABI).
    #[error("emulator: {0}")]
    EmulatorHost(String),
    #[error("kernel {kernel}: {problem}")]
    Unsupported { kernel: String, problem: String },
}
