//! The KV layout contract (`layout`) and the kernels that follow it (`cpu`; CUDA next).

pub mod cpu;
pub mod layout;

pub use layout::KvLayout;
