//! CUDA kernels: embedded sources (`kernels/cuda/*.cu`), compiled at run time with NVRTC and
//! launched through the CUDA driver (cudarc), or compiled into this binary by the host C++
//! compiler and run by the CUDA-on-CPU emulator (`emu`). The launchers (`ops`, `attention`)
//! are written once against the `launch::Device` seam both implement. cudarc loads the CUDA
//! libraries dynamically, so this module builds everywhere and reports "not found" on
//! machines without CUDA.

pub mod attention;
pub mod bench;
pub mod device;
pub mod elem;
pub mod emu;
pub mod entries;
pub mod error;
pub mod gemm;
pub mod launch;
pub mod libs;
pub mod nvrtc;
pub mod ops;
pub mod region;
pub mod selftest;
pub mod source;

pub use device::{device_count, DeviceInfo, Gpu};
pub use elem::GpuElem;
pub use emu::Emu;
pub use error::CudaError;
pub use gemm::GemmShape;
pub use launch::{Device, DeviceMemory};
pub use nvrtc::{compile, Arch, Compiled};
pub use region::{region, region_mut, Region, RegionMut};
pub use source::KernelSource;
