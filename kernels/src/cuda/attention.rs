//! Launching paged attention: the decode kernel (one query per sequence, split-K when that
//! fills the GPU better) and the mixed-batch kernel (chunks of queries per sequence).

use cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{driver_err, Gpu};
use super::elem::GpuElem;
use super::ops::{addr, addr_mut, check};
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
pub struct AttentionInputs<'a, E: GpuElem> {
    /// `[tokens, num_heads, head_dim]` rows, `q_stride` elements apart.
    pub q: CudaView<'a, E>,
    pub q_stride: usize,
    pub k_cache: CudaView<'a, E>,
    pub v_cache: CudaView<'a, E>,
    pub layout: KvLayout,
    pub num_heads: usize,
    pub scale: f32,
    /// `[num_seqs, max_blocks]` block numbers.
    pub block_tables: CudaView<'a, i32>,
    pub max_blocks: usize,
    /// Tokens in the cache per sequence, this step's included.
    pub context_lens: CudaView<'a, i32>,
}

impl<E: GpuElem> AttentionInputs<'_, E> {
    /// Device addresses of q, the K and V caches, the block tables and the context lengths.
    fn addrs(&self, s: &CudaStream) -> [u64; 5] {
        [
            addr(&self.q, s),
            addr(&self.k_cache, s),
            addr(&self.v_cache, s),
            addr(&self.block_tables, s),
            addr(&self.context_lens, s),
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

/// Scratch for split-K decode, grown to the largest step seen.
#[derive(Default)]
pub struct DecodeWorkspace {
    part_out: Option<CudaSlice<f32>>,
    part_max: Option<CudaSlice<f32>>,
    part_sum: Option<CudaSlice<f32>>,
}

impl DecodeWorkspace {
    fn ensure(&mut self, gpu: &Gpu, rows: usize, head_dim: usize) -> Result<(), CudaError> {
        let stream = gpu.stream();
        let grow = |s: &mut Option<CudaSlice<f32>>, n: usize| -> Result<(), CudaError> {
            if s.as_ref().is_none_or(|s| s.len() < n) {
                *s = Some(stream.alloc_zeros::<f32>(n.max(1)).map_err(driver_err)?);
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
pub fn paged_attention_decode<E: GpuElem>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<E>,
    inp: &AttentionInputs<E>,
    max_context: usize,
    ws: &mut DecodeWorkspace,
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
    let (ps, parts) = decode_partitions(
        num_seqs,
        kvh,
        g,
        hd,
        max_context,
        gpu.info().multiprocessors,
    );
    ws.ensure(gpu, num_seqs * inp.num_heads * parts, hd)?;
    let (Some(po), Some(pm), Some(psum)) = (&mut ws.part_out, &mut ws.part_max, &mut ws.part_sum)
    else {
        unreachable!("ensure allocated the workspace");
    };
    let suffix = format!("{}_hd{hd}", E::SUFFIX);
    let f = gpu.function(
        &PAGED_ATTENTION_DECODE,
        &format!("paged_attention_decode_{suffix}"),
    )?;
    let (mb, nh, nkv, bs) = (
        inp.max_blocks as i32,
        inp.num_heads as i32,
        kvh as i32,
        inp.layout.block_size as i32,
    );
    let (psz, qs) = (ps as i32, inp.q_stride as i32);
    let stream = gpu.stream();
    let o = addr_mut(out, stream);
    let [q, kc, vc, bt, cl] = inp.addrs(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&o).arg(&mut *po).arg(&mut *pm).arg(&mut *psum);
    b.arg(&q).arg(&kc).arg(&vc).arg(&bt).arg(&mb);
    b.arg(&cl)
        .arg(&nh)
        .arg(&nkv)
        .arg(&bs)
        .arg(&psz)
        .arg(&inp.scale)
        .arg(&qs);
    let cfg = LaunchConfig {
        grid_dim: (kvh as u32, num_seqs as u32, parts as u32),
        block_dim: ((DECODE_WARPS * 32) as u32, 1, 1),
        shared_mem_bytes: ((g * ps + DECODE_WARPS * g * hd) * 4) as u32,
    };
    // SAFETY: shapes checked above; the workspace holds parts partials per (seq, head); the
    // shared memory fits 48 KiB by construction of `decode_partitions`; every context length
    // is at most max_context, so no block reads past its partition count.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;
    if parts > 1 {
        let f = gpu.function(
            &PAGED_ATTENTION_DECODE,
            &format!("paged_attention_reduce_{suffix}"),
        )?;
        let p = parts as i32;
        let mut b = stream.launch_builder(&f);
        b.arg(&o).arg(&*po).arg(&*pm).arg(&*psum).arg(&cl);
        b.arg(&nh).arg(&psz).arg(&p);
        let cfg = LaunchConfig {
            grid_dim: (inp.num_heads as u32, num_seqs as u32, 1),
            block_dim: (hd.min(256) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: reads the partials written above, writes out rows checked above.
        unsafe { b.launch(cfg) }.map_err(driver_err)?;
    }
    Ok(())
}

/// Mixed-batch attention: sequence `s` has `query_lens[s]` consecutive query rows (in
/// order), the last at position `context_len - 1`. `out` is `[tokens, num_heads, head_dim]`.
pub fn paged_attention_prefill<E: GpuElem>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<E>,
    inp: &AttentionInputs<E>,
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
    let stream = gpu.stream();
    let up = |v: &[i32]| stream.memcpy_stod(v).map_err(driver_err);
    let (cu, ts, tf) = (up(&cu)?, up(&tile_seq)?, up(&tile_first)?);
    let f = gpu.function(
        &PAGED_ATTENTION_PREFILL,
        &format!("paged_attention_prefill_{}_hd{hd}", E::SUFFIX),
    )?;
    let (mb, tpt, nh) = (inp.max_blocks as i32, per_tile as i32, inp.num_heads as i32);
    let (nkv, bs, qs) = (
        inp.layout.num_kv_heads as i32,
        inp.layout.block_size as i32,
        inp.q_stride as i32,
    );
    let o = addr_mut(out, stream);
    let [q, kc, vc, bt, cl] = inp.addrs(stream);
    let mut b = stream.launch_builder(&f);
    b.arg(&o).arg(&q).arg(&kc).arg(&vc).arg(&bt).arg(&mb);
    b.arg(&cu)
        .arg(&cl)
        .arg(&ts)
        .arg(&tf)
        .arg(&tpt)
        .arg(&nh)
        .arg(&nkv);
    b.arg(&bs).arg(&inp.scale).arg(&qs);
    let cfg = LaunchConfig {
        grid_dim: (tile_seq.len() as u32, inp.layout.num_kv_heads as u32, 1),
        block_dim: (128, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: shapes checked above; each context length is at least its query length (the
    // engine's contract: the chunk's own K/V are in the cache).
    unsafe { b.launch(cfg) }.map_err(driver_err)?;
    Ok(())
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
