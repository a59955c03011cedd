//! Launching paged attention: the decode kernel (one query per sequence, split-K when that
//! fills the GPU better) and the mixed-batch kernel (chunks of queries per sequence).

use super::elem::GpuElem;
use super::launch::{arg, arg_mut, check, Device, DeviceBuf, DeviceBufMut, KernelArg, LaunchCfg};
use super::source::{self, PAGED_ATTENTION_DECODE, PAGED_ATTENTION_PREFILL};
use super::CudaError;
use crate::layout::KvLayout;

/// Query heads per KV head the decode kernel serves (the prefill kernel takes up to 32).
pub const DECODE_MAX_GROUP: usize = 8;
const DECODE_WARPS: usize = 4;
const PREFILL_ROWS: usize = 32;
/// Shared memory a block may use without opting in.
const SMEM_LIMIT: usize = 48 * 1024;
/// The decode kernel's static shared memory (head_max and head_sum).
const DECODE_STATIC_SMEM: usize = 2 * DECODE_MAX_GROUP * 4;

/// What both attention kernels read: the queries, the caches, and per-sequence metadata.
pub struct AttentionInputs<'a, D: ?Sized, E> {
    /// `[tokens, num_heads, head_dim]` rows, `q_stride` elements apart.
    pub q: &'a dyn DeviceBuf<D, E>,
    pub q_stride: usize,
    pub k_cache: &'a dyn DeviceBuf<D, E>,
    pub v_cache: &'a dyn DeviceBuf<D, E>,
    pub layout: KvLayout,
    pub num_heads: usize,
    pub scale: f32,
    /// `[num_seqs, max_blocks]` block numbers.
    pub block_tables: &'a dyn DeviceBuf<D, i32>,
    pub max_blocks: usize,
    /// Tokens in the cache per sequence, this step's included.
    pub context_lens: &'a dyn DeviceBuf<D, i32>,
}

impl<D: Device, E: GpuElem> AttentionInputs<'_, D, E> {
    /// q, the K and V caches, the block tables and the context lengths as kernel arguments.
    fn args(&self, dev: &D) -> [KernelArg; 5] {
        [
            arg(dev, &Dyn(self.q)),
            arg(dev, &Dyn(self.k_cache)),
            arg(dev, &Dyn(self.v_cache)),
            arg(dev, &Dyn(self.block_tables)),
            arg(dev, &Dyn(self.context_lens)),
        ]
    }

    fn group(&self) -> usize {
        self.num_heads / self.layout.num_kv_heads.max(1)
    }

    fn check(&self, kernel: &str, num_seqs: usize, num_tokens: usize) -> Result<(), CudaError> {
        let l = &self.layout;
        check(
            kernel,
            l.num_kv_heads > 0 && self.num_heads.is_multiple_of(l.num_kv_heads),
            || "num_heads must be a multiple of num_kv_heads".into(),
        )?;
        check(
            kernel,
            self.k_cache.len() == l.elems() && self.v_cache.len() == l.elems(),
            || "cache size does not match the layout".into(),
        )?;
        check(kernel, self.context_lens.len() == num_seqs, || {
            "one context length per sequence".into()
        })?;
        check(
            kernel,
            self.block_tables.len() == num_seqs * self.max_blocks,
            || "block tables must be [num_seqs, max_blocks]".into(),
        )?;
        let row = self.num_heads * l.head_dim;
        check(
            kernel,
            self.q_stride >= row
                && (self.q_stride * std::mem::size_of::<E>()).is_multiple_of(16)
                && (num_tokens == 0 || self.q.len() >= (num_tokens - 1) * self.q_stride + row),
            || "q rows must be 16-byte aligned and cover every token".into(),
        )
    }
}

/// A `dyn DeviceBuf` as a sized one, for [`arg`].
struct Dyn<'a, D: ?Sized, T>(&'a dyn DeviceBuf<D, T>);

impl<D: ?Sized, T> DeviceBuf<D, T> for Dyn<'_, D, T> {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn device_addr(&self, dev: &D) -> u64 {
        self.0.device_addr(dev)
    }
}

/// Scratch for split-K decode, grown to the largest step seen.
pub struct DecodeWorkspace<D: Device> {
    part_out: Option<D::Buf<f32>>,
    part_max: Option<D::Buf<f32>>,
    part_sum: Option<D::Buf<f32>>,
}

impl<D: Device> Default for DecodeWorkspace<D> {
    fn default() -> Self {
        DecodeWorkspace {
            part_out: None,
            part_max: None,
            part_sum: None,
        }
    }
}

impl<D: Device> DecodeWorkspace<D> {
    fn ensure(&mut self, dev: &D, rows: usize, head_dim: usize) -> Result<(), CudaError> {
        let grow = |s: &mut Option<D::Buf<f32>>, n: usize| -> Result<(), CudaError> {
            if s.as_ref().is_none_or(|s| s.len() < n) {
                *s = Some(dev.alloc_zeros::<f32>(n.max(1))?);
            }
            Ok(())
        };
        grow(&mut self.part_out, rows * head_dim)?;
        grow(&mut self.part_max, rows)?;
        grow(&mut self.part_sum, rows)
    }
}

/// How decode splits each context: (partition size, partitions).
///
/// A partition's scores live in shared memory, which bounds its size. Within that, one
/// partition per (sequence, KV head) when those blocks already fill the GPU twice over and
/// every context fits; otherwise partitions halve (down to 64 tokens) until there are at
/// least two blocks per multiprocessor, so short batches with long contexts still use the
/// whole GPU. The reduction costs one extra small launch.
pub fn decode_partitions(
    num_seqs: usize,
    num_kv_heads: usize,
    group: usize,
    head_dim: usize,
    max_context: usize,
    multiprocessors: usize,
) -> (usize, usize) {
    let red = DECODE_WARPS * group * head_dim * 4;
    let fit = (SMEM_LIMIT - DECODE_STATIC_SMEM - red) / (group * 4);
    let max_ps = prev_pow2(fit.min(1024));
    let ctx = max_context.max(1);
    let blocks = num_seqs * num_kv_heads;
    if ctx <= max_ps && blocks >= 2 * multiprocessors {
        return (max_ps, 1);
    }
    let mut ps = max_ps.min(512);
    while ps > 64 && blocks * ctx.div_ceil(ps) < 2 * multiprocessors {
        ps /= 2;
    }
    (ps, ctx.div_ceil(ps))
}

fn prev_pow2(n: usize) -> usize {
    1 << (usize::BITS - 1 - n.max(1).leading_zeros())
}

/// Decode attention: `out[s]` (`[num_seqs, num_heads, head_dim]`) for the query of each
/// sequence `s` (row `s` of q). `max_context` bounds every context length.
pub fn paged_attention_decode<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    inp: &AttentionInputs<D, E>,
    max_context: usize,
    ws: &mut DecodeWorkspace<D>,
) -> Result<(), CudaError> {
    let name = "paged_attention_decode";
    let num_seqs = inp.context_lens.len();
    inp.check(name, num_seqs, num_seqs)?;
    let (g, hd, kvh) = (inp.group(), inp.layout.head_dim, inp.layout.num_kv_heads);
    check(name, g <= DECODE_MAX_GROUP, || {
        format!("{g} query heads per KV head (at most {DECODE_MAX_GROUP})")
    })?;
    check(name, source::DECODE_HEAD_DIMS.contains(&hd), || {
        format!("head_dim {hd} (supported: {:?})", source::DECODE_HEAD_DIMS)
    })?;
    check(name, out.len() == num_seqs * inp.num_heads * hd, || {
        "out must be [num_seqs, num_heads, head_dim]".into()
    })?;
    if num_seqs == 0 {
        return Ok(());
    }
    let (ps, parts) = decode_partitions(num_seqs, kvh, g, hd, max_context, dev.multiprocessors());
    ws.ensure(dev, num_seqs * inp.num_heads * parts, hd)?;
    let (Some(po), Some(pm), Some(psum)) = (&mut ws.part_out, &mut ws.part_max, &mut ws.part_sum)
    else {
        unreachable!("ensure allocated the workspace");
    };
    let suffix = format!("{}_hd{hd}", E::SUFFIX);
    let o = arg_mut(dev, out);
    let [q, kc, vc, bt, cl] = inp.args(dev);
    let args = [
        o,
        arg_mut(dev, po),
        arg_mut(dev, pm),
        arg_mut(dev, psum),
        q,
        kc,
        vc,
        bt,
        KernelArg::I32(inp.max_blocks as i32),
        cl,
        KernelArg::I32(inp.num_heads as i32),
        KernelArg::I32(kvh as i32),
        KernelArg::I32(inp.layout.block_size as i32),
        KernelArg::I32(ps as i32),
        KernelArg::F32(inp.scale),
        KernelArg::I32(inp.q_stride as i32),
    ];
    let cfg = LaunchCfg {
        grid: (kvh as u32, num_seqs as u32, parts as u32),
        block: ((DECODE_WARPS * 32) as u32, 1, 1),
        shared_bytes: ((g * ps + DECODE_WARPS * g * hd) * 4) as u32,
    };
    // SAFETY: shapes checked above; the workspace holds parts partials per (seq, head); the
    // shared memory fits 48 KiB by construction of `decode_partitions`; every context length
    // is at most max_context, so no block reads past its partition count.
    unsafe {
        dev.launch(
            &PAGED_ATTENTION_DECODE,
            &format!("paged_attention_decode_{suffix}"),
            cfg,
            &args,
        )
    }?;
    if parts > 1 {
        let args = [
            o,
            arg(dev, po),
            arg(dev, pm),
            arg(dev, psum),
            cl,
            KernelArg::I32(inp.num_heads as i32),
            KernelArg::I32(ps as i32),
            KernelArg::I32(parts as i32),
        ];
        let cfg = LaunchCfg {
            grid: (inp.num_heads as u32, num_seqs as u32, 1),
            block: (hd.min(256) as u32, 1, 1),
            shared_bytes: 0,
        };
        // SAFETY: reads the partials written above, writes out rows checked above.
        unsafe {
            dev.launch(
                &PAGED_ATTENTION_DECODE,
                &format!("paged_attention_reduce_{suffix}"),
                cfg,
                &args,
            )
        }?;
    }
    Ok(())
}

/// Mixed-batch attention: sequence `s` has `query_lens[s]` consecutive query rows (in
/// order), the last at position `context_len - 1`. `out` is `[tokens, num_heads, head_dim]`.
pub fn paged_attention_prefill<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    inp: &AttentionInputs<D, E>,
    query_lens: &[usize],
) -> Result<(), CudaError> {
    let name = "paged_attention_prefill";
    let num_seqs = query_lens.len();
    let num_tokens: usize = query_lens.iter().sum();
    inp.check(name, num_seqs, num_tokens)?;
    let (g, hd) = (inp.group(), inp.layout.head_dim);
    check(name, g <= PREFILL_ROWS, || {
        format!("{g} query heads per KV head (at most 32)")
    })?;
    check(
        name,
        source::PREFILL_SHAPES.contains(&(E::SUFFIX, hd)),
        || {
            format!(
                "{} at head_dim {hd} (supported: {:?})",
                E::SUFFIX,
                source::PREFILL_SHAPES
            )
        },
    )?;
    check(name, out.len() == num_tokens * inp.num_heads * hd, || {
        "out must be [tokens, num_heads, head_dim]".into()
    })?;
    if num_tokens == 0 {
        return Ok(());
    }
    let per_tile = (PREFILL_ROWS / g).max(1);
    let mut cu = vec![0i32; num_seqs + 1];
    let (mut tile_seq, mut tile_first) = (Vec::new(), Vec::new());
    for (s, &n) in query_lens.iter().enumerate() {
        cu[s + 1] = cu[s] + n as i32;
        for first in (0..n).step_by(per_tile) {
            tile_seq.push(s as i32);
            tile_first.push(first as i32);
        }
    }
    let (cu, ts, tf) = (
        dev.upload(&cu)?,
        dev.upload(&tile_seq)?,
        dev.upload(&tile_first)?,
    );
    let [q, kc, vc, bt, cl] = inp.args(dev);
    let args = [
        arg_mut(dev, out),
        q,
        kc,
        vc,
        bt,
        KernelArg::I32(inp.max_blocks as i32),
        arg(dev, &cu),
        cl,
        arg(dev, &ts),
        arg(dev, &tf),
        KernelArg::I32(per_tile as i32),
        KernelArg::I32(inp.num_heads as i32),
        KernelArg::I32(inp.layout.num_kv_heads as i32),
        KernelArg::I32(inp.layout.block_size as i32),
        KernelArg::F32(inp.scale),
        KernelArg::I32(inp.q_stride as i32),
    ];
    let cfg = LaunchCfg {
        grid: (tile_seq.len() as u32, inp.layout.num_kv_heads as u32, 1),
        block: (128, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: shapes checked above; each context length is at least its query length (the
    // engine's contract: the chunk's own K/V are in the cache).
    unsafe {
        dev.launch(
            &PAGED_ATTENTION_PREFILL,
            &format!("paged_attention_prefill_{}_hd{hd}", E::SUFFIX),
            cfg,
            &args,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_partitions_fit_shared_memory_and_fill_the_gpu() {
        for g in 1..=DECODE_MAX_GROUP {
            for hd in [64, 128, 256] {
                for (seqs, ctx) in [(1, 1), (1, 32768), (16, 2048), (64, 256), (256, 4096)] {
                    let (ps, parts) = decode_partitions(seqs, 8, g, hd, ctx, 132);
                    let smem = (g * ps + DECODE_WARPS * g * hd) * 4 + DECODE_STATIC_SMEM;
                    assert!(smem <= SMEM_LIMIT, "g {g} hd {hd}: {smem} bytes");
                    assert!(ps * parts >= ctx, "partitions cover the context");
                    assert!(ps.is_power_of_two() && ps >= 64);
                }
            }
        }
        // A big batch with short contexts: one partition, no reduction.
        assert_eq!(decode_partitions(256, 8, 4, 128, 256, 132).1, 1);
        // One sequence with a long context: split so that the blocks fill the GPU.
        let (ps, parts) = decode_partitions(1, 8, 4, 128, 32768, 132);
        assert!(8 * parts >= 2 * 132, "{ps} x {parts}");
    }
}
