//! The AVX2/FMA inner loop of CPU paged attention, for head dims that are a multiple of 16.
//!
//! Why a hand-written kernel: profiling the 64 × (128 + 128) throughput run showed attention
//! at 22 % of the time (a scalar `expf` per key, one horizontal sum per dot product, and an
//! output row re-read and re-written per key) for about 4 % of the step's FLOPs. Here, per
//! page and per batch of up to four query heads of a GQA group:
//! - scores come four keys at a time for all heads of the batch (each key slice widened
//!   once), the dot products reduced together into one vector per head;
//! - the softmax weights of a whole page go through the vectorised `exp` of `softmax`;
//! - the weighted V rows are summed with the output in registers: for each 16-wide slice of
//!   the head dim, every head's accumulator stays in a register across the page's keys, and
//!   each V load feeds all heads of the batch.
//!
//! The cache's elements are f32 or f16 (`Lanes`); f16 is widened in registers with F16C,
//! so an f16 cache streams half the bytes.

// Register-blocked loops index several arrays (heads, key rows, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use half::f16;

use super::kv_store::KvElem;
use super::softmax::exp_weights_in_place;
use crate::layout::KvLayout;

/// A KV element this kernel can load eight at a time as f32.
pub trait Lanes: Sized {
    /// Whether this CPU has what `load8` needs (beyond AVX2 and FMA).
    fn avx2_supported() -> bool;
    /// Eight elements from `p` as f32.
    ///
    /// # Safety
    /// AVX2 and FMA (and F16C for f16) are present; `p..p + 8` is readable.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Lanes for f32 {
    fn avx2_supported() -> bool {
        true
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Lanes for f16 {
    fn avx2_supported() -> bool {
        std::arch::is_x86_feature_detected!("f16c")
    }
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
}

/// Query heads processed together (so each K/V load feeds several FMAs).
const HEAD_BATCH: usize = 4;

/// One query token, one KV head: attention of the `group` query heads in `qs`
/// (`[group, head_dim]`) over positions `0..=pos`, written to `out` (same shape).
/// `next_kv_head` is the KV head the caller attends to next for this token, if any: its
/// first pages are fetched while this head's last ones are used (without that, the first
/// page of every head came from memory on demand: a 30-layer decode probe, 64 sequences at
/// context 192, alternated, 20.2 -> 17.4, 26.8 -> 20.1, 19.8 -> 18.9 ms).
///
/// # Safety
/// The CPU must support AVX2 and FMA (and `E::avx2_supported()`), and
/// `layout.head_dim % 16 == 0`, `layout.block_size <= 256`.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn attend_kv_head<E: KvElem + Lanes>(
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
        match hb {
            1 => heads::<E, 1>(o, q, args),
            2 => heads::<E, 2>(o, q, args),
            3 => heads::<E, 3>(o, q, args),
            _ => heads::<E, 4>(o, q, args),
        }
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

/// `H` query heads over all pages of the sequence, online softmax per page.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn heads<E: Lanes, const H: usize>(out: &mut [f32], q: &[f32], args: PageArgs<E>) {
    let (k_cache, v_cache, layout, kv_head, table, pos, scale, then_head) = args;
    let (hd, bs) = (layout.head_dim, layout.block_size);
    // Scores then weights of the current page, padded to a multiple of 8 keys.
    let mut w = [[0f32; 256]; H];
    let mut max = [f32::NEG_INFINITY; H];
    let mut sum = [0f32; H];
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
        let mut rescale = [1f32; H];
        // Up to three heads share a pass over the keys; four go as two and two.
        match H {
            1 => group_scores::<E, 1>(&mut w[..], q, kt, n, hd, scale),
            2 => group_scores::<E, 2>(&mut w[..], q, kt, n, hd, scale),
            3 => group_scores::<E, 3>(&mut w[..], q, kt, n, hd, scale),
            _ => {
                group_scores::<E, 2>(&mut w[..2], &q[..2 * hd], kt, n, hd, scale);
                group_scores::<E, 2>(&mut w[2..], &q[2 * hd..], kt, n, hd, scale);
            }
        }
        for h in 0..H {
            let page_max = w[h][..n].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if page_max > max[h] {
                rescale[h] = (max[h] - page_max).exp();
                sum[h] *= rescale[h];
                max[h] = page_max;
            }
            sum[h] += exp_weights_in_place(&mut w[h][..n], max[h], 1.0);
        }
        accumulate_v::<E, H>(out, &w, &rescale, vt, n, hd);
    }
    for h in 0..H {
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

/// Scores of `G` query heads (`q` is `[G, hd]`) for the `n` keys of a page, four keys per
/// pass: each eight-element slice of a key is widened once and feeds all `G` heads, so an
/// f16 page is converted once per pass over it rather than once per head (the conversions
/// were the largest cost of decode attention: 1.08-1.11x on a 30-layer decode step).
/// `G * 4` accumulators, `G` query vectors and a key vector fill the 16 registers at `G = 3`.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_scores<E: Lanes, const G: usize>(
    scores: &mut [[f32; 256]],
    q: &[f32],
    kt: &[E],
    n: usize,
    hd: usize,
    scale: f32,
) {
    let qp = q.as_ptr();
    let sc = _mm_set1_ps(scale);
    let mut i0 = 0;
    while i0 < n {
        // Keys past the page's end re-read its last key; their scores are never used
        // (`i0 + 4 <= 256` as `i0 < n <= 256` is a multiple of 4).
        let rows: [*const E; 4] =
            std::array::from_fn(|j| kt.as_ptr().add((i0 + j).min(n - 1) * hd));
        let mut acc = [[_mm256_setzero_ps(); 4]; G];
        let mut c = 0;
        while c < hd {
            let qv: [__m256; G] = std::array::from_fn(|h| _mm256_loadu_ps(qp.add(h * hd + c)));
            for j in 0..4 {
                let k = E::load8(rows[j].add(c));
                for h in 0..G {
                    acc[h][j] = _mm256_fmadd_ps(qv[h], k, acc[h][j]);
                }
            }
            c += 8;
        }
        for h in 0..G {
            let s = _mm_mul_ps(hsum4(acc[h]), sc);
            _mm_storeu_ps(scores[h].as_mut_ptr().add(i0), s);
        }
        i0 += 4;
    }
}

/// Four horizontal sums at once: lane `j` of the result is the sum of the lanes of `v[j]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum4(v: [__m256; 4]) -> __m128 {
    let a = _mm256_hadd_ps(v[0], v[1]);
    let b = _mm256_hadd_ps(v[2], v[3]);
    let ab = _mm256_hadd_ps(a, b);
    _mm_add_ps(_mm256_castps256_ps128(ab), _mm256_extractf128_ps(ab, 1))
}

/// `out[h] = out[h] · rescale[h] + Σ_i w[h][i] · v[i]`, 16 columns of the head dim at a
/// time so the `2·H` accumulators stay in registers across the page's keys.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn accumulate_v<E: Lanes, const H: usize>(
    out: &mut [f32],
    w: &[[f32; 256]; H],
    rescale: &[f32; H],
    vt: &[E],
    n: usize,
    hd: usize,
) {
    let op = out.as_mut_ptr();
    let vp = vt.as_ptr();
    let mut c = 0;
    while c < hd {
        let mut acc = [[_mm256_setzero_ps(); 2]; H];
        for h in 0..H {
            let r = _mm256_set1_ps(rescale[h]);
            acc[h][0] = _mm256_mul_ps(_mm256_loadu_ps(op.add(h * hd + c)), r);
            acc[h][1] = _mm256_mul_ps(_mm256_loadu_ps(op.add(h * hd + c + 8)), r);
        }
        for i in 0..n {
            let v0 = E::load8(vp.add(i * hd + c));
            let v1 = E::load8(vp.add(i * hd + c + 8));
            for h in 0..H {
                let wi = _mm256_set1_ps(w[h][i]);
                acc[h][0] = _mm256_fmadd_ps(wi, v0, acc[h][0]);
                acc[h][1] = _mm256_fmadd_ps(wi, v1, acc[h][1]);
            }
        }
        for h in 0..H {
            _mm256_storeu_ps(op.add(h * hd + c), acc[h][0]);
            _mm256_storeu_ps(op.add(h * hd + c + 8), acc[h][1]);
        }
        c += 16;
    }
}
