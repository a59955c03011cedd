//! CUDA kernels: embedded sources (`kernels/cuda/*.cu`), compiled at run time with NVRTC,
//! launched through cudarc. cudarc loads the CUDA libraries dynamically, so this module
//! builds everywhere and reports "not found" on machines without CUDA.

pub mod error;
pub mod libs;
pub mod nvrtc;
pub mod source;

pub use error::CudaError;
pub use nvrtc::{compile, Arch, Compiled};
pub use source::KernelSource;
