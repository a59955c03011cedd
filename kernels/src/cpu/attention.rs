//! Paged attention over a mixed batch (prefill chunks and decodes in one call).
//!
//! Each query token at position `p` of its sequence attends to positions `0..=p`, all read
//! from the paged cache through the block table (the chunk's own K/V were written by
//! `write_kv` first), so cached context, chunked prefill and decode are one code path.
//! Softmax is computed online in f32 (running max and sum), one pass over the pages. The query
//! heads of one KV head (GQA group) share each K/V read. Work is split over (token, KV head)
//! across threads.

use rayon::prelude::*;

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
pub fn paged_attention(
    out: &mut [f32],
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    layout: &KvLayout,
    num_heads: usize,
    seqs: &[SeqChunk],
    scale: f32,
) {
    let hd = layout.head_dim;
    let group = num_heads / layout.num_kv_heads;
    let row = num_heads * hd;
    // (sequence, position) of every query token.
    let mut tokens = Vec::new();
    for (s, c) in seqs.iter().enumerate() {
        for i in 0..c.query_len {
            tokens.push((c.query_start + i, s, c.context_len - c.query_len + i));
        }
    }
    let out_ptr = SendPtr(out.as_mut_ptr());
    tokens.par_iter().for_each(|&(t, s, pos)| {
        let table = seqs[s].block_table;
        // SAFETY: every token writes only its own row of `out`, and rows are distinct.
        let out_row = unsafe { std::slice::from_raw_parts_mut(out_ptr.get().add(t * row), row) };
        let q_row = &q[t * row..(t + 1) * row];
        let mut scores = vec![0f32; group];
        for kvh in 0..layout.num_kv_heads {
            let qs = &q_row[kvh * group * hd..(kvh + 1) * group * hd];
            let acc = &mut out_row[kvh * group * hd..(kvh + 1) * group * hd];
            acc.fill(0.0);
            let mut max = vec![f32::NEG_INFINITY; group];
            let mut sum = vec![0f32; group];
            for p in 0..=pos {
                let off = layout.offset(layout.slot(table, p), kvh);
                let k = &k_cache[off..off + hd];
                let v = &v_cache[off..off + hd];
                for g in 0..group {
                    scores[g] = dot(&qs[g * hd..(g + 1) * hd], k) * scale;
                }
                for g in 0..group {
                    let a = &mut acc[g * hd..(g + 1) * hd];
                    let sc = scores[g];
                    if sc > max[g] {
                        let r = (max[g] - sc).exp();
                        sum[g] *= r;
                        a.iter_mut().for_each(|x| *x *= r);
                        max[g] = sc;
                    }
                    let w = (sc - max[g]).exp();
                    sum[g] += w;
                    a.iter_mut().zip(v).for_each(|(x, &vv)| *x += w * vv);
                }
            }
            for g in 0..group {
                let inv = 1.0 / sum[g];
                acc[g * hd..(g + 1) * hd].iter_mut().for_each(|x| *x *= inv);
            }
        }
    });
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight independent accumulators let the compiler vectorise.
    let mut s = [0f32; 8];
    let chunks = a.len() / 8;
    for i in 0..chunks {
        for j in 0..8 {
            s[j] += a[i * 8 + j] * b[i * 8 + j];
        }
    }
    let mut total: f32 = s.iter().sum();
    for i in chunks * 8..a.len() {
        total += a[i] * b[i];
    }
    total
}

/// A raw pointer that may cross threads; used where disjoint rows are written in parallel.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: users guarantee that threads write disjoint ranges.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}
