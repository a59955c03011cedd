//! The decode kernel's launcher: one query per sequence, split-K over the context when the
//! (sequence, KV head) blocks alone would not fill the device.

use std::collections::HashMap;

use super::batch::{AttentionBatch, DecodeRows};
use crate::cuda::elem::GpuElem;
use crate::cuda::entries::{decode_groups, HEAD_DIMS, TC_DTYPES};
use crate::cuda::launch::{arg, arg_mut, Device, KernelArg, LaunchCfg};
use crate::cuda::source::{KernelSource, PAGED_ATTENTION_DECODE, PAGED_ATTENTION_TC};
use crate::cuda::CudaError;

/// The largest group the decode kernels serve (the tensor-core one; CUDA cores up to 8).
pub const MAX_GROUP: usize = 16;
/// Groups from this size up run on the tensor cores (bf16, f16).
const TC_MIN_GROUP: usize = 4;
/// Keys per tile of the tensor-core decode kernel.
const TC_KEYS: usize = 64;
const WARPS: usize = 4;
/// One partition may be as long as this: the kernels keep no per-token state.
const MAX_PARTITION: usize = 1 << 20;

/// Which decode kernel serves a shape.
enum Kernel {
    /// CUDA cores, instantiated for groups up to the given size.
    Cores(usize),
    TensorCores,
}

fn kernel(dtype: &str, group: usize) -> Option<Kernel> {
    if TC_DTYPES.contains(&dtype) && (TC_MIN_GROUP..=MAX_GROUP).contains(&group) {
        return Some(Kernel::TensorCores);
    }
    let gmax = decode_groups(dtype).iter().find(|&&g| g >= group)?;
    Some(Kernel::Cores(*gmax))
}

/// Whether a decode kernel has an instance for this shape.
pub fn supports(dtype: &str, group: usize, head_dim: usize) -> bool {
    group >= 1 && HEAD_DIMS.contains(&head_dim) && kernel(dtype, group).is_some()
}

/// (source, entry, dynamic shared memory) of the decode kernel for this shape.
fn entry(dtype: &str, group: usize, head_dim: usize) -> (&'static KernelSource, String, usize) {
    match kernel(dtype, group) {
        Some(Kernel::TensorCores) => (
            &PAGED_ATTENTION_TC,
            format!("paged_attention_decode_tc_{dtype}_hd{head_dim}"),
            // Q (16 rows), then K and V in two stages of TC_KEYS rows, 16-bit elements.
            (16 + 4 * TC_KEYS) * head_dim * 2,
        ),
        Some(Kernel::Cores(gmax)) => (
            &PAGED_ATTENTION_DECODE,
            format!("paged_attention_decode_{dtype}_hd{head_dim}_g{gmax}"),
            // Each warp's output, max and sum per head, f32.
            WARPS * group * (head_dim + 2) * 4,
        ),
        None => unreachable!("the batch routes only supported shapes here"),
    }
}

/// How decode splits each context: (partition size, partitions).
///
/// `blocks` is the number of (sequence, KV head) blocks, `capacity` how many blocks the
/// device runs at once (resident blocks per multiprocessor, from the occupancy API, times
/// multiprocessors). One partition when the blocks fill the device and every context fits the
/// longest partition; otherwise partitions halve from 512 tokens (down to 64) until the
/// blocks fill it, so a small batch with long contexts still uses the whole device. Splitting
/// costs one more small launch, the reduction.
pub fn decode_partitions(
    blocks: usize,
    max_context: usize,
    max_partition: usize,
    capacity: usize,
) -> (usize, usize) {
    let ctx = max_context.max(1);
    if ctx <= max_partition && blocks >= capacity {
        return (max_partition, 1);
    }
    let mut ps = max_partition.min(512);
    while ps > 64 && blocks * ctx.div_ceil(ps) < capacity {
        ps /= 2;
    }
    (ps, ctx.div_ceil(ps))
}

/// Scratch for split-K decode, grown to the largest step seen, and the device's answers to
/// occupancy questions already asked.
pub struct AttentionWorkspace<D: Device> {
    part_out: Option<D::Buf<f32>>,
    part_max: Option<D::Buf<f32>>,
    part_sum: Option<D::Buf<f32>>,
    capacity: HashMap<(String, u32), usize>,
}

impl<D: Device> Default for AttentionWorkspace<D> {
    fn default() -> Self {
        AttentionWorkspace {
            part_out: None,
            part_max: None,
            part_sum: None,
            capacity: HashMap::new(),
        }
    }
}

impl<D: Device> AttentionWorkspace<D> {
    fn ensure(&mut self, dev: &D, rows: usize, head_dim: usize) -> Result<(), CudaError> {
        let grow = |s: &mut Option<D::Buf<f32>>, n: usize| -> Result<(), CudaError> {
            if s.as_ref()
                .is_none_or(|s| crate::cuda::launch::DeviceBuf::len(s) < n)
            {
                *s = Some(dev.alloc_zeros::<f32>(n.max(1))?);
            }
            Ok(())
        };
        grow(&mut self.part_out, rows * head_dim)?;
        grow(&mut self.part_max, rows)?;
        grow(&mut self.part_sum, rows)
    }

    /// Blocks of `entry` the whole device runs at once.
    fn capacity(
        &mut self,
        dev: &D,
        src: &KernelSource,
        entry: &str,
        threads: u32,
        shared: u32,
    ) -> Result<usize, CudaError> {
        let key = (entry.to_string(), shared);
        if let Some(&c) = self.capacity.get(&key) {
            return Ok(c);
        }
        let per_sm = dev.max_active_blocks_per_sm(src, entry, threads, shared)?;
        let c = per_sm.max(1) * dev.multiprocessors().max(1);
        self.capacity.insert(key, c);
        Ok(c)
    }
}

/// Launches decode (and the split-K reduction) for `rows` of `batch`.
pub(super) fn launch<D: Device, E: GpuElem>(
    dev: &D,
    [out, q, kc, vc]: [KernelArg; 4],
    batch: &AttentionBatch<D>,
    rows: &DecodeRows,
    ws: &mut AttentionWorkspace<D>,
) -> Result<(), CudaError> {
    let s = &batch.shape;
    let (g, hd, kvh) = (s.group(), s.layout.head_dim, s.layout.num_kv_heads);
    let (src, entry, shared) = entry(E::SUFFIX, g, hd);
    let threads = (WARPS * 32) as u32;
    let capacity = ws.capacity(dev, src, &entry, threads, shared as u32)?;
    let (ps, parts) = decode_partitions(rows.rows * kvh, rows.max_context, MAX_PARTITION, capacity);
    ws.ensure(dev, rows.rows * s.num_heads * parts, hd)?;
    let (Some(po), Some(pm), Some(psum)) = (&mut ws.part_out, &mut ws.part_max, &mut ws.part_sum)
    else {
        unreachable!("ensure allocated the workspace");
    };
    let (bt, cl, sid, cu) = (
        arg(dev, &batch.view(dev, batch.tables)?),
        arg(dev, &batch.view(dev, batch.context_lens)?),
        arg(dev, &batch.view(dev, rows.seq_ids)?),
        arg(dev, &batch.view(dev, batch.cu_query)?),
    );
    let args = [
        out,
        arg_mut(dev, po),
        arg_mut(dev, pm),
        arg_mut(dev, psum),
        q,
        kc,
        vc,
        bt,
        KernelArg::I32(batch.max_blocks as i32),
        cl,
        sid,
        cu,
        KernelArg::I32(s.num_heads as i32),
        KernelArg::I32(kvh as i32),
        KernelArg::I32(s.layout.block_size.trailing_zeros() as i32),
        KernelArg::I32(ps as i32),
        KernelArg::F32(s.scale),
        KernelArg::I32(s.q_stride as i32),
    ];
    let cfg = LaunchCfg {
        grid: (kvh as u32, rows.rows as u32, parts as u32),
        block: (threads, 1, 1),
        shared_bytes: shared as u32,
    };
    // SAFETY: the batch was checked against the shape (every context fits its table, every
    // page exists, the block size is a power of two), the caller checked q, the caches and
    // out; the workspace holds `parts` partials per (row, head); every decode row's context
    // is at most rows.max_context, so no block reads past its partition count.
    unsafe { dev.launch(src, &entry, cfg, &args) }?;
    if parts > 1 {
        let args = [
            out,
            arg(dev, po),
            arg(dev, pm),
            arg(dev, psum),
            cl,
            sid,
            cu,
            KernelArg::I32(s.num_heads as i32),
            KernelArg::I32(ps as i32),
            KernelArg::I32(parts as i32),
        ];
        let cfg = LaunchCfg {
            grid: (s.num_heads as u32, rows.rows as u32, 1),
            block: (hd.min(256) as u32, 1, 1),
            shared_bytes: 0,
        };
        let entry = format!("paged_attention_reduce_{}_hd{hd}", E::SUFFIX);
        // SAFETY: reads the partials written above, writes the rows checked by the caller.
        unsafe { dev.launch(&PAGED_ATTENTION_DECODE, &entry, cfg, &args) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_the_context_and_fill_the_device() {
        for (blocks, ctx) in [(8, 1), (8, 32768), (128, 2048), (512, 256), (2048, 4096)] {
            let (ps, parts) = decode_partitions(blocks, ctx, MAX_PARTITION, 540);
            assert!(ps * parts >= ctx, "partitions cover the context");
            assert!(ps.is_power_of_two() && ps >= 64);
            assert!(
                parts == 1 || blocks * parts >= 540 || ps == 64,
                "{blocks} x {ctx}"
            );
        }
        // Enough blocks: one partition, no reduction, whatever the context.
        assert_eq!(
            decode_partitions(2048, 30000, MAX_PARTITION, 540),
            (MAX_PARTITION, 1)
        );
        // One sequence with a long context: split until the blocks fill the device.
        let (ps, parts) = decode_partitions(8, 32768, MAX_PARTITION, 540);
        assert!(8 * parts >= 540, "{ps} x {parts}");
        // The capacity decides: a device holding more blocks gets more partitions.
        let few = decode_partitions(64, 4096, MAX_PARTITION, 300).1;
        let many = decode_partitions(64, 4096, MAX_PARTITION, 1200).1;
        assert!(many > few, "{few} vs {many}");
    }

    #[test]
    fn groups_pick_their_kernel() {
        assert!(matches!(kernel("f32", 3), Some(Kernel::Cores(4))));
        assert!(matches!(kernel("f32", 8), Some(Kernel::Cores(8))));
        assert!(kernel("f32", 9).is_none());
        assert!(matches!(kernel("bf16", 3), Some(Kernel::Cores(4))));
        assert!(matches!(kernel("bf16", 4), Some(Kernel::TensorCores)));
        assert!(matches!(kernel("f16", 16), Some(Kernel::TensorCores)));
        assert!(kernel("f16", 17).is_none());
        assert!(!supports("bf16", 4, 96));
    }
}
