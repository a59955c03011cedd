//! The page loop of the vector paths of CPU paged attention (AVX2 and AVX-512), for head
//! dims that are a multiple of 16.
//!
//! Why a hand-written kernel: profiling the 64 × (128 + 128) throughput run showed attention
//! at 22 % of the time (a scalar `expf` per key, one horizontal sum per dot product, and an
//! output row re-read and re-written per key) for about 4 % of the step's FLOPs. Here, per
//! chunk of pages (up to 256 keys) and per batch of up to four query heads of a GQA group:
//! - scores come several keys at a time for all heads of the batch (each key slice widened
//!   once), the dot products reduced together (`PageMath::scores`), for every page of the
//!   chunk before any V row is read: the K tiles stream one after another, fetched two pages
//!   ahead into L1, while each page's V tile is fetched into L2 for the second pass (one
//!   pass per page, K and V fetched together, ran a 30-layer decode step, 64 sequences at
//!   context 192 in f16, in 15.4-15.8 ms on AVX-512; chunks, 11.2-11.4 ms);
//! - the softmax weights of a whole chunk go through the vectorised `exp` at once, with one
//!   online-softmax rescale per chunk;
//! - the weighted V rows are summed with the output in registers: every head's
//!   accumulators stay in registers across a page's keys, and each V load feeds all heads
//!   of the batch (`PageMath::accumulate_v`).
//!
//! The page arithmetic is per ISA (`attention_avx2`, `attention_avx512`); the online
//! softmax, the order of pages and their prefetching are here, shared.

// Page loops index the block table, the weights and the output by page and head.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::kv_store::KvElem;
use crate::layout::KvLayout;

/// Query heads processed together (so each K/V load feeds several FMAs).
pub(crate) const HEAD_BATCH: usize = 4;

/// Keys whose scores are computed before any of their V rows are read: a chunk of pages.
pub(crate) const CHUNK_KEYS: usize = 256;
/// Room for a chunk's scores, with the padding a kernel's last pass over a page may write
/// (up to 8 keys past the page's end).
pub(crate) const WEIGHTS: usize = CHUNK_KEYS + 8;
/// How many pages ahead the K tiles are fetched into L1 during the scores pass.
const K_AHEAD: usize = 2;

/// Scores and weights of one chunk for up to `HEAD_BATCH` heads.
pub(crate) type PageWeights = [[f32; WEIGHTS]; HEAD_BATCH];

/// One ISA's arithmetic over a page.
pub(crate) trait PageMath<E> {
    /// `w[h][off + i] = scale · q[h] · k[i]` for the `n` keys of `kt` and the `w.len()`
    /// heads of `q` (`[heads, hd]`); up to 8 entries past `off + n` may be overwritten.
    ///
    /// # Safety
    /// The ISA's features are present; `hd % 16 == 0`, `off + n <= CHUNK_KEYS`.
    unsafe fn scores(
        w: &mut [[f32; WEIGHTS]],
        off: usize,
        q: &[f32],
        kt: &[E],
        n: usize,
        hd: usize,
        scale: f32,
    );
    /// `w[i] = exp(w[i] - shift)` in place; returns the sum.
    ///
    /// # Safety
    /// The ISA's features are present.
    unsafe fn exp_in_place(w: &mut [f32], shift: f32) -> f32;
    /// `out[h] = out[h] · rescale[h] + Σ_i w[h][off + i] · v[i]` for the `rescale.len()`
    /// heads and the `n` rows of `vt`.
    ///
    /// # Safety
    /// The ISA's features are present; `hd % 16 == 0`, `off + n <= CHUNK_KEYS`.
    unsafe fn accumulate_v(
        out: &mut [f32],
        w: &[[f32; WEIGHTS]],
        off: usize,
        rescale: &[f32],
        vt: &[E],
        n: usize,
        hd: usize,
    );
}

/// One query token, one KV head: attention of the `group` query heads in `qs`
/// (`[group, head_dim]`) over positions `0..=pos`, written to `out` (same shape), with the
/// page arithmetic of `M`. `next_kv_head` is the KV head the caller attends to next for this
/// token, if any: its first pages are fetched while this head's last ones are used (without
/// that, the first page of every head came from memory on demand: a 30-layer decode probe,
/// 64 sequences at context 192, alternated, 20.2 -> 17.4, 26.8 -> 20.1, 19.8 -> 18.9 ms).
///
/// # Safety
/// The CPU must support `M`'s ISA (at least AVX2, FMA and F16C), and
/// `layout.head_dim % 16 == 0`, `layout.block_size <= 256`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_kv_head<E: KvElem, M: PageMath<E>>(
    out: &mut [f32],
    qs: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    layout: &KvLayout,
    kv_head: usize,
    next_kv_head: Option<usize>,
    table: &[u32],
    pos: usize,
    scale: f32,
) {
    let hd = layout.head_dim;
    let group = qs.len() / hd;
    let mut g0 = 0;
    while g0 < group {
        let hb = (group - g0).min(HEAD_BATCH);
        let (q, o) = (
            &qs[g0 * hd..(g0 + hb) * hd],
            &mut out[g0 * hd..(g0 + hb) * hd],
        );
        // A later batch of this group reads the same pages again.
        let then = if g0 + hb < group {
            Some(kv_head)
        } else {
            next_kv_head
        };
        let args = (k_cache, v_cache, layout, kv_head, table, pos, scale, then);
        heads::<E, M>(o, q, hb, args);
        g0 += hb;
    }
}

/// The caches, the layout, the KV head, the block table, the position, the scale, and the KV
/// head whose pages (of the same token) are read after these, if any.
type PageArgs<'a, E> = (
    &'a [E],
    &'a [E],
    &'a KvLayout,
    usize,
    &'a [u32],
    usize,
    f32,
    Option<usize>,
);

/// `hb` query heads over all pages of the sequence, in chunks of up to `CHUNK_KEYS` keys:
/// first every page's scores (the K tiles streaming one after another), one online-softmax
/// step for the whole chunk, then every page's weighted V rows (the V tiles, fetched into L2
/// while the scores were computed).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn heads<E: KvElem, M: PageMath<E>>(
    out: &mut [f32],
    q: &[f32],
    hb: usize,
    args: PageArgs<E>,
) {
    let (k_cache, v_cache, layout, kv_head, table, pos, scale, then_head) = args;
    let (hd, bs) = (layout.head_dim, layout.block_size);
    let mut w: PageWeights = [[0f32; WEIGHTS]; HEAD_BATCH];
    let mut max = [f32::NEG_INFINITY; HEAD_BATCH];
    let mut sum = [0f32; HEAD_BATCH];
    out.fill(0.0);
    let pages = pos / bs + 1;
    let keys_in = |b: usize| (pos + 1 - b * bs).min(bs);
    // Page `b` of this head, or past the last one, of the head read next.
    let tile_at = |b: usize| -> Option<(usize, usize)> {
        let (head, i) = if b < pages {
            (kv_head, b)
        } else {
            (then_head?, b - pages)
        };
        (i < pages).then(|| (layout.tile(table[i] as usize, head), keys_in(i) * hd))
    };
    let per_chunk = (CHUNK_KEYS / bs).max(1);
    for c0 in (0..pages).step_by(per_chunk) {
        let c1 = (c0 + per_chunk).min(pages);
        for b in c0..c1 {
            // K two pages ahead into L1, this page's V into L2 for the second pass.
            if let Some((start, len)) = tile_at(b + K_AHEAD) {
                prefetch::<_MM_HINT_T0, E>(k_cache, start, len);
            }
            let tile = layout.tile(table[b] as usize, kv_head);
            let n = keys_in(b);
            prefetch::<_MM_HINT_T1, E>(v_cache, tile, n * hd);
            M::scores(
                &mut w[..hb],
                (b - c0) * bs,
                q,
                &k_cache[tile..tile + n * hd],
                n,
                hd,
                scale,
            );
        }
        let keys = (pos + 1 - c0 * bs).min((c1 - c0) * bs);
        let mut rescale = [1f32; HEAD_BATCH];
        for h in 0..hb {
            let chunk_max = w[h][..keys]
                .iter()
                .copied()
                .fold(f32::NEG_INFINITY, f32::max);
            if chunk_max > max[h] {
                rescale[h] = (max[h] - chunk_max).exp();
                sum[h] *= rescale[h];
                max[h] = chunk_max;
            }
            sum[h] += M::exp_in_place(&mut w[h][..keys], max[h]);
        }
        for b in c0..c1 {
            if let Some((start, len)) = (b + 1 < c1).then(|| {
                let t = layout.tile(table[b + 1] as usize, kv_head);
                (t, keys_in(b + 1) * hd)
            }) {
                prefetch::<_MM_HINT_T0, E>(v_cache, start, len);
            }
            let tile = layout.tile(table[b] as usize, kv_head);
            let n = keys_in(b);
            let r = if b == c0 { &rescale[..hb] } else { &ONES[..hb] };
            M::accumulate_v(
                out,
                &w[..hb],
                (b - c0) * bs,
                r,
                &v_cache[tile..tile + n * hd],
                n,
                hd,
            );
        }
        // The K tiles the next chunk (or the next head) starts with were fetched while
        // this chunk's last scores were computed.
    }
    for h in 0..hb {
        let inv = 1.0 / sum[h];
        out[h * hd..(h + 1) * hd].iter_mut().for_each(|x| *x *= inv);
    }
}

/// Rescales that change nothing (pages after a chunk's first).
const ONES: [f32; HEAD_BATCH] = [1.0; HEAD_BATCH];

/// Asks for `cache[start..start + len]` ahead of use, into the cache level `HINT` names.
/// Pages are scattered, so the hardware prefetcher, which follows one stream and stops at
/// 4 KiB boundaries, misses the start of every page; the block table says which pages come
/// next. One page ahead into L1 alone left decode attention latency-bound (a page's 64
/// lines of K and V asked for at once, more than L1 tracks); two pages ahead into L2 plus
/// the next into L1: a 30-layer decode step (64 sequences, context 192, f16, on the Zen 4
/// VM) 25.7-26.0 -> 17.6-19.0 ms. Farther (three, four pages) measured the same.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn prefetch<const HINT: i32, E>(cache: &[E], start: usize, len: usize) {
    let p = cache[start..start + len].as_ptr() as *const i8;
    for off in (0..std::mem::size_of_val(&cache[start..start + len])).step_by(64) {
        _mm_prefetch::<HINT>(p.add(off));
    }
}
