//! The KV layout contract (`layout`, including `KvDtype`) and the kernels that follow it: the
//! CPU kernels (`cpu`, the reference for every CUDA kernel and the CPU backend's compute)
//! and the CUDA kernels with their launchers (`cuda`).
//!
//! Knows nothing of: scheduling, requests, models or their files.

pub mod cpu;
pub mod cuda;
pub mod layout;

pub use layout::{KvDtype, KvLayout, UnknownKvDtype};
