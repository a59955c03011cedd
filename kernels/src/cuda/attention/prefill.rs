//! The prefill kernel's launcher: chunks of queries per sequence, each attending to its
//! cached context and the causal part of its own chunk, in tiles listed once per step.

use super::batch::{AttentionBatch, PrefillTiles};
use crate::cuda::elem::GpuElem;
use crate::cuda::entries::TC_DTYPES;
use crate::cuda::launch::{arg, Device, KernelArg, LaunchCfg};
use crate::cuda::source::{PAGED_ATTENTION_PREFILL, PAGED_ATTENTION_TC, PREFILL_SHAPES};
use crate::cuda::CudaError;

/// Query rows ((token, head) pairs of one KV group) per block: on CUDA cores (f32), on the
/// tensor cores (16 per warp).
const CORE_ROWS: usize = 32;
const TC_ROWS: usize = 64;

fn rows(dtype: &str) -> usize {
    if TC_DTYPES.contains(&dtype) {
        TC_ROWS
    } else {
        CORE_ROWS
    }
}

/// Whether the prefill kernel has an instance for this shape.
pub fn supports(dtype: &str, group: usize, head_dim: usize) -> bool {
    (1..=rows(dtype)).contains(&group) && PREFILL_SHAPES.contains(&(dtype, head_dim))
}

/// Query tokens per tile: as many as the rows hold with every head of the group.
pub fn tokens_per_tile(dtype: &str, group: usize, _head_dim: usize) -> usize {
    (rows(dtype) / group.max(1)).max(1)
}

/// Keys per K/V tile of the tensor-core kernel.
fn tc_keys(head_dim: usize) -> usize {
    if head_dim <= 128 {
        64
    } else {
        32
    }
}

/// Launches prefill for the `tiles` of `batch`.
pub(super) fn launch<D: Device, E: GpuElem>(
    dev: &D,
    [out, q, kc, vc]: [KernelArg; 4],
    batch: &AttentionBatch<D>,
    tiles: &PrefillTiles,
) -> Result<(), CudaError> {
    let s = &batch.shape;
    let hd = s.layout.head_dim;
    let args = [
        out,
        q,
        kc,
        vc,
        arg(dev, &batch.view(dev, batch.tables)?),
        KernelArg::I32(batch.max_blocks as i32),
        arg(dev, &batch.view(dev, batch.cu_query)?),
        arg(dev, &batch.view(dev, batch.context_lens)?),
        arg(dev, &batch.view(dev, tiles.tile_seq)?),
        arg(dev, &batch.view(dev, tiles.tile_first)?),
        KernelArg::I32(tiles.tokens_per_tile as i32),
        KernelArg::I32(s.num_heads as i32),
        KernelArg::I32(s.layout.num_kv_heads as i32),
        KernelArg::I32(s.layout.block_size.trailing_zeros() as i32),
        KernelArg::F32(s.scale),
        KernelArg::I32(s.q_stride as i32),
    ];
    let tc = TC_DTYPES.contains(&E::SUFFIX);
    let (src, entry, shared) = if tc {
        // Q (64 rows), then K and V in two stages, 16-bit elements.
        let bytes = (TC_ROWS + 4 * tc_keys(hd)) * hd * 2;
        let entry = format!("paged_attention_prefill_tc_{}_hd{hd}", E::SUFFIX);
        (&PAGED_ATTENTION_TC, entry, bytes)
    } else {
        let entry = format!("paged_attention_prefill_{}_hd{hd}", E::SUFFIX);
        (&PAGED_ATTENTION_PREFILL, entry, 0)
    };
    let cfg = LaunchCfg {
        grid: (tiles.tiles as u32, s.layout.num_kv_heads as u32, 1),
        block: (128, 1, 1),
        shared_bytes: shared as u32,
    };
    // SAFETY: the batch was checked against the shape (contexts cover their queries and fit
    // their tables, pages exist, the block size is a power of two); the caller checked q, the
    // caches and out.
    unsafe { dev.launch(src, &entry, cfg, &args) }
}
