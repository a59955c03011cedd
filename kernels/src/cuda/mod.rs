//! CUDA kernels: embedded sources (`kernels/cuda/*.cu`), compiled at run time with NVRTC,
//! launched through cudarc. cudarc loads the CUDA libraries dynamically, so this module
//! builds everywhere and reports "not found" on machines without CUDA.

pub mod attention;
pub mod bench;
pub mod device;
pub mod elem;
pub mod error;
pub mod libs;
pub mod nvrtc;
pub mod ops;
pub mod selftest;
pub mod source;

pub use device::{device_count, DeviceInfo, Gpu};
pub use elem::GpuElem;
pub use error::CudaError;
pub use nvrtc::{compile, Arch, Compiled};
pub use source::KernelSource;
