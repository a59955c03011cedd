//! The KV layout contract (`layout`) and the kernels that follow it (`cpu`, `cuda`).

pub mod cpu;
pub mod cuda;
pub mod layout;

pub use layout::{KvDtype, KvLayout, UnknownKvDtype};
