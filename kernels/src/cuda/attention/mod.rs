//! Paged attention over a step's batch: the host metadata checked once per step
//! ([`AttentionMeta`]), uploaded once per step ([`AttentionBatch`]), then one call per layer
//! ([`paged_attention`]) that runs the decode rows through the decode kernel and the prefill
//! chunks through the prefill kernel.

mod batch;
mod decode;
mod meta;
mod prefill;

pub use batch::{AttentionBatch, AttentionShape, Route};
pub use decode::{decode_partitions, AttentionWorkspace, MAX_GROUP as DECODE_MAX_GROUP};
pub use meta::{AttentionMeta, SeqChunk, MAX_SEQS};

use crate::cuda::elem::GpuElem;
use crate::cuda::launch::{arg, arg_mut, check, Device, DeviceBuf, DeviceBufMut};
use crate::cuda::CudaError;

/// Attention for every query row of `batch`: `out` is `[tokens, num_heads, head_dim]`, `q`
/// holds the tokens' rows `q_stride` apart, the caches follow the batch's layout.
pub fn paged_attention<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    q: &impl DeviceBuf<D, E>,
    k_cache: &impl DeviceBuf<D, E>,
    v_cache: &impl DeviceBuf<D, E>,
    batch: &AttentionBatch<D>,
    ws: &mut AttentionWorkspace<D>,
) -> Result<(), CudaError> {
    let k = "paged_attention";
    let s = &batch.shape;
    let (l, n) = (&s.layout, batch.num_tokens);
    let row = s.num_heads * l.head_dim;
    check(k, batch.dtype == E::SUFFIX, || {
        format!("a batch planned for {} run on {}", batch.dtype, E::SUFFIX)
    })?;
    check(
        k,
        k_cache.len() == l.elems() && v_cache.len() == l.elems(),
        || "cache size does not match the layout".into(),
    )?;
    check(k, n == 0 || q.len() >= (n - 1) * s.q_stride + row, || {
        "q does not cover every token's row".into()
    })?;
    check(k, out.len() == n * row, || {
        "out must be [tokens, num_heads, head_dim]".into()
    })?;
    if n == 0 {
        return Ok(());
    }
    // The kernels read q and write out with 16-byte vector accesses.
    check(k, q.device_addr(dev).is_multiple_of(16), || {
        "q is not 16-byte aligned".into()
    })?;
    check(k, out.device_addr(dev).is_multiple_of(16), || {
        "out is not 16-byte aligned".into()
    })?;
    let args = [
        arg_mut(dev, out),
        arg(dev, q),
        arg(dev, k_cache),
        arg(dev, v_cache),
    ];
    if let Some(rows) = &batch.decode {
        decode::launch::<D, E>(dev, args, batch, rows, ws)?;
    }
    if let Some(tiles) = &batch.prefill {
        prefill::launch::<D, E>(dev, args, batch, tiles)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
