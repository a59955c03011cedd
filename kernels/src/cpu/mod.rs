//! CPU kernels: the reference implementations of every operation (the CUDA kernels are
//! checked against them) and the CPU backend's compute.

pub mod attention;
#[cfg(target_arch = "x86_64")]
mod attention_avx2;
#[cfg(target_arch = "x86_64")]
mod attention_avx512;
#[cfg(target_arch = "x86_64")]
mod attention_blocks;
#[cfg(target_arch = "x86_64")]
mod attention_pages;
pub mod cache_ops;
pub mod huge_pages;
pub mod isa;
pub mod kv_store;
pub mod matmul;
pub mod ops;
mod pack_x;
pub mod packed;
#[cfg(target_arch = "x86_64")]
mod packed_amx;
#[cfg(target_arch = "x86_64")]
mod packed_avx512;
/// `PackedMatrix::linear_silu_mul`: the gate/up projection fused with its SiLU.
mod packed_fused;
/// The AMX tile-product ceiling loop (`cpu-roofline`).
#[cfg(target_arch = "x86_64")]
#[doc(hidden)]
pub use packed_amx::{peak_loop as amx_peak_loop, PEAK_FLOP_PER_ITER as AMX_PEAK_FLOP_PER_ITER};
mod packed_kernel;
pub mod simd;
pub mod softmax;
pub mod team;

pub use attention::{paged_attention, paged_attention_on, AttentionElem, SeqChunk};
pub use cache_ops::{copy_blocks, qkv_rope_write_kv, swap_blocks, write_kv};
pub use kv_store::{KvDtype, KvElem, KvStore};
pub use matmul::linear;
pub use ops::{add_inplace, embedding, rms_norm, silu_and_mul, Llama3Scaling, Rope};
