//! The page loop of the vector paths of CPU paged attention (AVX2 and AVX-512), for head
//! dims that are a multiple of 16.
//!
//! Why a hand-written kernel: profiling the 64 × (128 + 128) throughput run showed attention
//! at 22 % of the time (a scalar `expf` per key, one horizontal sum per dot product, and an
//! output row re-read and re-written per key) for about 4 % of the step's FLOPs. Here, per
//! page and per batch of up to four query heads of a GQA group:
//! - scores come several keys at a time for all heads of the batch (each key slice widened
//!   once), the dot products reduced together (`PageMath::scores`);
//! - the softmax weights of a whole page go through the vectorised `exp`;
//! - the weighted V rows are summed with the output in registers: every head's
//!   accumulators stay in registers across the page's keys, and each V load feeds all heads
//!   of the batch (`PageMath::accumulate_v`).
//!
//! The page arithmetic is per ISA (`attention_avx2`, `attention_avx512`); the online
//! softmax, the order of pages and their prefetching are here, shared.

use std::arch::x86_64::*;

use super::kv_store::KvElem;
use crate::layout::KvLayout;

/// Query heads processed together (so each K/V load feeds several FMAs).
pub(crate) const HEAD_BATCH: usize = 4;

/// Scores and weights of one page for up to `HEAD_BATCH` heads, padded to 256 keys.
pub(crate) type PageWeights = [[f32; 256]; HEAD_BATCH];

/// One ISA's arithmetic over a page.
pub(crate) trait PageMath<E> {
    /// `w[h][i] = scale · q[h] · k[i]` for the `n` keys of `kt` and the `w.len()` heads of
    /// `q` (`[heads, hd]`).
    ///
    /// # Safety
    /// The ISA's features are present; `hd % 16 == 0`, `n <= 256`.
    unsafe fn scores(w: &mut [[f32; 256]], q: &[f32], kt: &[E], n: usize, hd: usize, scale: f32);
    /// `w[i] = exp(w[i] - shift)` in place; returns the sum.
    ///
    /// # Safety
    /// The ISA's features are present.
    unsafe fn exp_in_place(w: &mut [f32], shift: f32) -> f32;
    /// `out[h] = out[h] · rescale[h] + Σ_i w[h][i] · v[i]` for the `rescale.len()` heads.
    ///
    /// # Safety
    /// The ISA's features are present; `hd % 16 == 0`, `n <= 256`.
    unsafe fn accumulate_v(
        out: &mut [f32],
        w: &[[f32; 256]],
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

/// `hb` query heads over all pages of the sequence, online softmax per page.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn heads<E: KvElem, M: PageMath<E>>(
    out: &mut [f32],
    q: &[f32],
    hb: usize,
    args: PageArgs<E>,
) {
    let (k_cache, v_cache, layout, kv_head, table, pos, scale, then_head) = args;
    let (hd, bs) = (layout.head_dim, layout.block_size);
    // Scores then weights of the current page, padded to a multiple of 8 keys.
    let mut w: PageWeights = [[0f32; 256]; HEAD_BATCH];
    let mut max = [f32::NEG_INFINITY; HEAD_BATCH];
    let mut sum = [0f32; HEAD_BATCH];
    out.fill(0.0);
    let pages = pos / bs + 1;
    for (b, &page) in table.iter().enumerate().take(pages) {
        let n = (pos + 1 - b * bs).min(bs);
        // Two pages ahead into L2, the next one on into L1 (see `prefetch`); past the last
        // page, the first pages of the head that is read next.
        let ahead = |d: usize| {
            let (head, i) = if b + d < pages {
                (kv_head, b + d)
            } else {
                (then_head?, b + d - pages)
            };
            (i < pages).then(|| {
                let len = (pos + 1 - i * bs).min(bs) * hd;
                (layout.tile(table[i] as usize, head), len)
            })
        };
        if let Some((start, len)) = ahead(2) {
            prefetch::<_MM_HINT_T1, E>(k_cache, start, len);
            prefetch::<_MM_HINT_T1, E>(v_cache, start, len);
        }
        if let Some((start, len)) = ahead(1) {
            prefetch::<_MM_HINT_T0, E>(k_cache, start, len);
            prefetch::<_MM_HINT_T0, E>(v_cache, start, len);
        }
        let tile = layout.tile(page as usize, kv_head);
        let kt = &k_cache[tile..tile + n * hd];
        let vt = &v_cache[tile..tile + n * hd];
        let mut rescale = [1f32; HEAD_BATCH];
        M::scores(&mut w[..hb], q, kt, n, hd, scale);
        for h in 0..hb {
            let page_max = w[h][..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if page_max > max[h] {
                rescale[h] = (max[h] - page_max).exp();
                sum[h] *= rescale[h];
                max[h] = page_max;
            }
            sum[h] += M::exp_in_place(&mut w[h][..n], max[h]);
        }
        M::accumulate_v(out, &w[..hb], &rescale[..hb], vt, n, hd);
    }
    for h in 0..hb {
        let inv = 1.0 / sum[h];
        out[h * hd..(h + 1) * hd].iter_mut().for_each(|x| *x *= inv);
    }
}

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
