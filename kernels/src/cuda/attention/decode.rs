//! The decode kernel's launcher: one query per sequence, split-K over the context when the
//! (sequence, KV head) blocks alone would not fill the device.

use std::collections::HashMap;

use super::batch::{AttentionBatch, DecodeRows};
use crate::cuda::elem::GpuElem;
use crate::cuda::launch::{arg, arg_mut, Device, KernelArg, LaunchCfg, DEFAULT_SHARED_LIMIT};
use crate::cuda::source::{DECODE_HEAD_DIMS, PAGED_ATTENTION_DECODE};
use crate::cuda::CudaError;

/// Query heads per KV head the decode kernel serves.
pub const MAX_GROUP: usize = 8;
const WARPS: usize = 4;
/// The kernel's static shared memory (head_max and head_sum).
const STATIC_SMEM: usize = 2 * MAX_GROUP * 4;

/// Whether the decode kernel has an instance for this shape.
pub fn supports(_dtype: &str, group: usize, head_dim: usize) -> bool {
    (1..=MAX_GROUP).contains(&group) && DECODE_HEAD_DIMS.contains(&head_dim)
}

/// The longest partition whose scores fit the kernel's shared memory.
fn max_partition(group: usize, head_dim: usize) -> usize {
    let red = WARPS * group * head_dim * 4;
    let fit = (DEFAULT_SHARED_LIMIT - STATIC_SMEM - red) / (group * 4);
    prev_pow2(fit.min(1024))
}

fn shared_bytes(group: usize, head_dim: usize, partition: usize) -> usize {
    (group * partition + WARPS * group * head_dim) * 4
}

fn prev_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
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
        entry: &str,
        threads: u32,
        shared: u32,
    ) -> Result<usize, CudaError> {
        let key = (entry.to_string(), shared);
        if let Some(&c) = self.capacity.get(&key) {
            return Ok(c);
        }
        let per_sm =
            dev.max_active_blocks_per_sm(&PAGED_ATTENTION_DECODE, entry, threads, shared)?;
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
    rows: &DecodeRows<D>,
    ws: &mut AttentionWorkspace<D>,
) -> Result<(), CudaError> {
    let s = &batch.shape;
    let (g, hd, kvh) = (s.group(), s.layout.head_dim, s.layout.num_kv_heads);
    let suffix = format!("{}_hd{hd}", E::SUFFIX);
    let entry = format!("paged_attention_decode_{suffix}");
    let threads = (WARPS * 32) as u32;
    let max_ps = max_partition(g, hd);
    let capacity = ws.capacity(dev, &entry, threads, shared_bytes(g, hd, max_ps) as u32)?;
    let (ps, parts) = decode_partitions(rows.rows * kvh, rows.max_context, max_ps, capacity);
    ws.ensure(dev, rows.rows * s.num_heads * parts, hd)?;
    let (Some(po), Some(pm), Some(psum)) = (&mut ws.part_out, &mut ws.part_max, &mut ws.part_sum)
    else {
        unreachable!("ensure allocated the workspace");
    };
    let (bt, cl, sid, cu) = (
        arg(dev, &batch.tables),
        arg(dev, &batch.context_lens),
        arg(dev, &rows.seq_ids),
        arg(dev, &batch.cu_query),
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
        KernelArg::I32(s.layout.block_size as i32),
        KernelArg::I32(ps as i32),
        KernelArg::F32(s.scale),
        KernelArg::I32(s.q_stride as i32),
    ];
    let cfg = LaunchCfg {
        grid: (kvh as u32, rows.rows as u32, parts as u32),
        block: (threads, 1, 1),
        shared_bytes: shared_bytes(g, hd, ps) as u32,
    };
    // SAFETY: the batch was checked against the shape (every context fits its table, every
    // page exists), the caller checked q, the caches and out; the workspace holds `parts`
    // partials per (row, head); every decode row's context is at most rows.max_context, so
    // no block reads past its partition count; the shared memory fits 48 KiB by
    // construction of `max_partition`.
    unsafe { dev.launch(&PAGED_ATTENTION_DECODE, &entry, cfg, &args) }?;
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
        let entry = format!("paged_attention_reduce_{suffix}");
        // SAFETY: reads the partials written above, writes the rows checked by the caller.
        unsafe { dev.launch(&PAGED_ATTENTION_DECODE, &entry, cfg, &args) }?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_fit_shared_memory_and_fill_the_device() {
        for g in 1..=MAX_GROUP {
            for hd in [64, 128, 256] {
                let max_ps = max_partition(g, hd);
                for (blocks, ctx) in [(8, 1), (8, 32768), (128, 2048), (512, 256), (2048, 4096)] {
                    let (ps, parts) = decode_partitions(blocks, ctx, max_ps, 540);
                    let smem = shared_bytes(g, hd, ps) + STATIC_SMEM;
                    assert!(smem <= DEFAULT_SHARED_LIMIT, "g {g} hd {hd}: {smem} bytes");
                    assert!(ps * parts >= ctx, "partitions cover the context");
                    assert!(ps.is_power_of_two() && ps >= 64 && ps <= max_ps);
                }
            }
        }
        // Enough blocks and short contexts: one partition, no reduction.
        assert_eq!(decode_partitions(2048, 256, 512, 540).1, 1);
        // One sequence with a long context: split until the blocks fill the device.
        let (ps, parts) = decode_partitions(8, 32768, 512, 540);
        assert!(8 * parts >= 540, "{ps} x {parts}");
        // The capacity decides: a device holding twice the blocks gets more partitions.
        let few = decode_partitions(64, 4096, 512, 300).1;
        let many = decode_partitions(64, 4096, 512, 1200).1;
        assert!(many > few, "{few} vs {many}");
    }
}
