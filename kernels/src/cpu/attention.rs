//! Paged attention over a mixed batch (prefill chunks and decodes in one call).
//!
//! Each query token at position `p` of its sequence attends to positions `0..=p`, all read
//! from the paged cache through the block table (the chunk's own K/V were written by
//! `write_kv` first), so cached context, chunked prefill and decode are one code path.
//! Softmax is computed online in f32 (running max and sum), one pass over the pages. The query
//! heads of one KV head (GQA group) share each K/V read. Work is split over (token, KV head)
//! across threads; on AVX-512, chunks of several tokens (prefill) go instead by blocks of
//! query tokens, whose rows share each K/V read too (`attention_blocks`). The cache holds f32
//! or f16 (`KvElem`); scores and sums are f32 either way.

use super::isa::{self, Isa};
use super::kv_store::KvElem;
use super::simd::{axpy_lanes, dot_lanes};
use super::team::{self, SendPtr};
use crate::layout::KvLayout;

/// One sequence's part of the batch.
#[derive(Debug, Clone, Copy)]
pub struct SeqChunk<'a> {
    /// First row of this sequence's queries in `q` (and `out`).
    pub query_start: usize,
    pub query_len: usize,
    /// Tokens in the cache once this chunk is written: the last query is at `context_len - 1`.
    pub context_len: usize,
    pub block_table: &'a [u32],
}

/// `out[t, h, :] = softmax(q[t, h, :] · K[0..=p]ᵀ · scale) · V[0..=p]` for every token `t` of
/// every chunk. `q` and `out` are `[num_tokens, num_heads, head_dim]`.
#[allow(clippy::too_many_arguments)]
pub fn paged_attention<E: AttentionElem>(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    layout: &KvLayout,
    num_heads: usize,
    seqs: &[SeqChunk],
    scale: f32,
) {
    paged_attention_on(
        isa::selected(),
        out,
        q,
        k_cache,
        v_cache,
        layout,
        num_heads,
        seqs,
        scale,
    )
}

/// `paged_attention` on a given path (`isa` must be supported by this CPU).
#[allow(clippy::too_many_arguments)]
pub fn paged_attention_on<E: AttentionElem>(
    isa: Isa,
    out: &mut [f32],
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    layout: &KvLayout,
    num_heads: usize,
    seqs: &[SeqChunk],
    scale: f32,
) {
    let hd = layout.head_dim;
    let group = num_heads / layout.num_kv_heads;
    assert!(
        layout.block_size <= 256,
        "block sizes above 256 are not supported"
    );
    assert!(
        group <= MAX_GROUP,
        "more than {MAX_GROUP} query heads per KV head"
    );
    let row = num_heads * hd;
    assert!(isa.supported(), "this CPU has no {isa} path");
    let vector = isa >= Isa::Avx2 && hd.is_multiple_of(16) && cfg!(target_arch = "x86_64");
    // Chunks of several query tokens (prefill) go by query blocks on AVX-512
    // (`attention_blocks`); decodes and short chunks one token at a time.
    let by_blocks = vector && isa >= Isa::Avx512;
    #[cfg(target_arch = "x86_64")]
    let (per_block, min_len) = (
        blocks_kernel::tokens_per_block(group),
        blocks_kernel::MIN_QUERY_LEN,
    );
    #[cfg(not(target_arch = "x86_64"))]
    let (per_block, min_len) = (1, usize::MAX);
    let mut blocks = Vec::new();
    // (row, sequence, position) of every query token taken one at a time.
    let mut tokens = Vec::new();
    for (s, c) in seqs.iter().enumerate() {
        let first = c.context_len - c.query_len;
        if by_blocks && c.query_len >= min_len {
            for b0 in (0..c.query_len).step_by(per_block) {
                let n = per_block.min(c.query_len - b0);
                blocks.push((c.query_start + b0, n, first + b0, s));
            }
        } else {
            for i in 0..c.query_len {
                tokens.push((c.query_start + i, s, first + i));
            }
        }
    }
    // Longest first: a prompt's last blocks read the most keys, and starting them first
    // keeps the job's tail (one core busy, the other idle) short.
    blocks.sort_by_key(|&(_, n, p0, _)| std::cmp::Reverse(p0 + n));
    let block_tasks = blocks.len() * layout.num_kv_heads;
    #[cfg(target_arch = "x86_64")]
    let block_inputs = blocks_kernel::BlockInputs {
        q,
        k_cache,
        v_cache,
        layout,
        group,
        scale,
    };
    let out_ptr = SendPtr(out.as_mut_ptr());
    // A task is one token (all its KV heads, whose pages lie side by side), or, with too
    // few tokens to keep every core busy (a single decoding sequence), one (token, KV
    // head) of the vector kernel. (Splitting heads in 64-sequence decode steps too, with
    // sampling still on rayon, ran 64 x (128 + 128) at 0.96-0.98x of the rayon build in
    // three interleaved pairs; split only for few tokens, 0.98-1.03x.)
    let heads_split = vector && tokens.len() < 4 * team::threads();
    let per_token = if heads_split { layout.num_kv_heads } else { 1 };
    team::for_each_task(block_tasks + tokens.len() * per_token, |i| {
        #[cfg(target_arch = "x86_64")]
        if i < block_tasks {
            let (t0, tokens, p0, s) = blocks[i / layout.num_kv_heads];
            let block = blocks_kernel::QueryBlock {
                t0,
                tokens,
                p0,
                kv_head: i % layout.num_kv_heads,
                table: seqs[s].block_table,
            };
            // SAFETY: AVX-512 was checked when `isa` was chosen, head_dim is a multiple of
            // 16 and the group at most MAX_GROUP (asserted above); every task writes only
            // its own (tokens, KV head) spans of `out`, and blocks share no tokens.
            unsafe { blocks_kernel::attend_block(out_ptr.get(), &block_inputs, &block) };
            return;
        }
        let i = i - block_tasks;
        let (t, s, pos) = tokens[i / per_token];
        let job = |span: std::ops::Range<usize>| TokenJob {
            // SAFETY: every task writes only its own (token, heads) span of `out`; tokens
            // are distinct rows and spans of one row do not overlap.
            out: unsafe {
                std::slice::from_raw_parts_mut(out_ptr.get().add(t * row + span.start), span.len())
            },
            q: &q[t * row..][span],
            k_cache,
            v_cache,
            layout,
            group,
            table: seqs[s].block_table,
            pos,
            scale,
        };
        #[cfg(target_arch = "x86_64")]
        if vector {
            let heads = if heads_split {
                let kvh = i % per_token;
                kvh..kvh + 1
            } else {
                0..layout.num_kv_heads
            };
            let job = job(heads.start * group * hd..heads.end * group * hd);
            for kvh in heads.clone() {
                let span = (kvh - heads.start) * group * hd..(kvh - heads.start + 1) * group * hd;
                let (o, q) = (&mut job.out[span.clone()], &job.q[span]);
                // The task's next KV head, whose first pages are fetched ahead.
                let next = (kvh + 1 < heads.end).then_some(kvh + 1);
                let (kc, vc, tb) = (k_cache, v_cache, job.table);
                // SAFETY: the path's features were checked when `isa` was chosen; head_dim
                // is a multiple of 16 and the block size at most 256 (asserted above).
                unsafe {
                    match isa {
                        Isa::Avx512 | Isa::Amx => attend_kv_head::<E, Avx512>(
                            o, q, kc, vc, layout, kvh, next, tb, pos, scale,
                        ),
                        _ => attend_kv_head::<E, Avx2>(
                            o, q, kc, vc, layout, kvh, next, tb, pos, scale,
                        ),
                    }
                };
            }
            return;
        }
        let job = job(0..row);
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx2 {
            // SAFETY: the CPU has AVX2 and FMA (the path was checked).
            unsafe { attend_avx2(job) };
            return;
        }
        attend(job);
    });
}

/// A KV element the attention kernel reads: its vector paths' loads.
#[cfg(target_arch = "x86_64")]
pub trait AttentionElem:
    KvElem + super::attention_avx2::Lanes + super::attention_avx512::Lanes512
{
}
#[cfg(target_arch = "x86_64")]
impl<E: KvElem + super::attention_avx2::Lanes + super::attention_avx512::Lanes512> AttentionElem
    for E
{
}
/// A KV element the attention kernel reads.
#[cfg(not(target_arch = "x86_64"))]
pub trait AttentionElem: KvElem {}
#[cfg(not(target_arch = "x86_64"))]
impl<E: KvElem> AttentionElem for E {}

#[cfg(target_arch = "x86_64")]
use super::{
    attention_avx2::Avx2, attention_avx512::Avx512, attention_blocks as blocks_kernel,
    attention_pages::attend_kv_head,
};

/// One query token's attention over its sequence.
struct TokenJob<'a, E> {
    out: &'a mut [f32],
    q: &'a [f32],
    k_cache: &'a [E],
    v_cache: &'a [E],
    layout: &'a KvLayout,
    group: usize,
    table: &'a [u32],
    pos: usize,
    scale: f32,
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn attend_avx2<E: KvElem>(job: TokenJob<E>) {
    attend(job)
}

/// Most query heads per KV head the CPU kernel handles (Llama 3 uses 4, Qwen2 up to 7).
pub const MAX_GROUP: usize = 64;

/// Page by page: the scores of a whole page (its K tile is contiguous), one rescale of the
/// running sums per page rather than per key, then the weighted V rows. The query heads of
/// the group take turns on each page while its K and V tiles are in L1.
/// K and V rows are widened to f32 one row at a time (this is the portable reference path;
/// the AVX2 kernel widens in registers).
#[inline(always)]
fn attend<E: KvElem>(j: TokenJob<E>) {
    let (hd, bs, group) = (j.layout.head_dim, j.layout.block_size, j.group);
    let mut scores = [0f32; 256];
    let mut row = vec![0f32; hd];
    let widen = |row: &mut [f32], src: &[E]| {
        for (d, &s) in row.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    };
    let mut max = [f32::NEG_INFINITY; MAX_GROUP];
    let mut sum = [0f32; MAX_GROUP];
    for kvh in 0..j.layout.num_kv_heads {
        let qs = &j.q[kvh * group * hd..(kvh + 1) * group * hd];
        let acc = &mut j.out[kvh * group * hd..(kvh + 1) * group * hd];
        acc.fill(0.0);
        max[..group].fill(f32::NEG_INFINITY);
        sum[..group].fill(0.0);
        for (b, &page) in j.table.iter().enumerate().take(j.pos / bs + 1) {
            let n = (j.pos + 1 - b * bs).min(bs);
            let tile = j.layout.tile(page as usize, kvh);
            let kt = &j.k_cache[tile..tile + n * hd];
            let vt = &j.v_cache[tile..tile + n * hd];
            for g in 0..group {
                let qg = &qs[g * hd..(g + 1) * hd];
                let a = &mut acc[g * hd..(g + 1) * hd];
                let sc = &mut scores[..n];
                for (i, s) in sc.iter_mut().enumerate() {
                    widen(&mut row, &kt[i * hd..(i + 1) * hd]);
                    *s = dot_lanes(qg, &row) * j.scale;
                }
                let page_max = sc.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                if page_max > max[g] {
                    // Rescale what was accumulated under the old maximum.
                    let r = (max[g] - page_max).exp();
                    sum[g] *= r;
                    a.iter_mut().for_each(|x| *x *= r);
                    max[g] = page_max;
                }
                for (i, &s) in sc.iter().enumerate() {
                    let w = (s - max[g]).exp();
                    sum[g] += w;
                    widen(&mut row, &vt[i * hd..(i + 1) * hd]);
                    axpy_lanes(a, w, &row);
                }
            }
        }
        for g in 0..group {
            let inv = 1.0 / sum[g];
            acc[g * hd..(g + 1) * hd].iter_mut().for_each(|x| *x *= inv);
        }
    }
}
