//! Paged attention over batches of prompt chunks (the prefill path, by query blocks on
//! AVX-512) against the float64 reference, and a row's result against how its prompt was
//! split into chunks and what else was in the batch.

use half::f16;
use kernels::cpu::isa::Isa;
use kernels::cpu::{self, AttentionElem, SeqChunk};
use kernels::KvLayout;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

mod common;
use common::{max_abs_diff, naive_attention, randv};

/// A cache holding the contexts of several sequences, pages handed out in a random order.
struct Cache<E> {
    layout: KvLayout,
    k: Vec<E>,
    v: Vec<E>,
    tables: Vec<Vec<u32>>,
    /// Each sequence's K and V as the cache holds them (rounded to `E`), `[ctx, kv, hd]`.
    stored: Vec<(Vec<f32>, Vec<f32>)>,
}

fn cache<E: AttentionElem>(
    rng: &mut StdRng,
    contexts: &[usize],
    kv_heads: usize,
    hd: usize,
    bs: usize,
) -> Cache<E> {
    let pages_needed: usize = contexts.iter().map(|c| c.div_ceil(bs)).sum();
    let layout = KvLayout {
        num_blocks: pages_needed + 2,
        num_kv_heads: kv_heads,
        block_size: bs,
        head_dim: hd,
    };
    // NaN everywhere nothing was written: a kernel that reads past a context shows it.
    let mut k = vec![E::from_f32(f32::NAN); layout.elems()];
    let mut v = vec![E::from_f32(f32::NAN); layout.elems()];
    let mut pages: Vec<u32> = (0..layout.num_blocks as u32).collect();
    pages.shuffle(rng);
    let (mut tables, mut stored) = (vec![], vec![]);
    for &ctx in contexts {
        let table: Vec<u32> = pages.drain(..ctx.div_ceil(bs)).collect();
        let (kk, vv) = (
            randv(rng, ctx * kv_heads * hd),
            randv(rng, ctx * kv_heads * hd),
        );
        let slots: Vec<i64> = (0..ctx).map(|p| layout.slot(&table, p) as i64).collect();
        cpu::write_kv(&mut k, &mut v, &layout, &kk, &vv, &slots);
        let round =
            |x: Vec<f32>| -> Vec<f32> { x.into_iter().map(|x| E::from_f32(x).to_f32()).collect() };
        tables.push(table);
        stored.push((round(kk), round(vv)));
    }
    Cache {
        layout,
        k,
        v,
        tables,
        stored,
    }
}

/// `(query_len, context_len)` chunks, one per sequence of `c`, as one batch.
fn batch<'a, E>(c: &'a Cache<E>, chunks: &[(usize, usize)]) -> Vec<SeqChunk<'a>> {
    let mut start = 0;
    chunks
        .iter()
        .zip(&c.tables)
        .map(|(&(query_len, context_len), table)| {
            let s = SeqChunk {
                query_start: start,
                query_len,
                context_len,
                block_table: table,
            };
            start += query_len;
            s
        })
        .collect()
}

#[test]
fn prompt_chunks_match_f64_attention_over_an_f32_cache() {
    prompt_chunks_match_reference::<f32>();
}

#[test]
fn prompt_chunks_match_f64_attention_over_an_f16_cache() {
    prompt_chunks_match_reference::<f16>();
}

/// Several prompt chunks and a decode in one batch, on every ISA path this CPU has: query
/// counts around the block sizes (4 to 16 tokens per block, by group), contexts longer than
/// the chunk (cached prefixes) and across the kernel's 64-key softmax steps, head dims of
/// one to eight 16-wide slices, GQA groups of 1 to 64 heads.
fn prompt_chunks_match_reference<E: AttentionElem>() {
    let mut rng = StdRng::seed_from_u64(7);
    let shapes = [
        // (heads, kv_heads, head dim, block size)
        (9usize, 3usize, 64usize, 16usize),
        (4, 4, 16, 1),
        (8, 1, 80, 8),
        (10, 2, 32, 64),
        (64, 1, 16, 16),
        (6, 2, 128, 256),
        (12, 4, 48, 16),
    ];
    for &(heads, kv_heads, hd, bs) in &shapes {
        let q_lens = [4usize, 5, 15, 16, 17, 33, 70];
        let mut chunks: Vec<(usize, usize)> = q_lens
            .iter()
            .map(|&q| (q, q + rng.random_range(0..80usize)))
            .collect();
        chunks.push((1, rng.random_range(1..150usize)));
        chunks.shuffle(&mut rng);
        let contexts: Vec<usize> = chunks.iter().map(|c| c.1).collect();
        let c = cache::<E>(&mut rng, &contexts, kv_heads, hd, bs);
        let seqs = batch(&c, &chunks);
        let tokens: usize = chunks.iter().map(|c| c.0).sum();
        let q = randv(&mut rng, tokens * heads * hd);
        let scale = 1.0 / (hd as f64).sqrt();
        let mut want = vec![];
        let mut row = 0;
        for (i, &(q_len, ctx)) in chunks.iter().enumerate() {
            let (k, v) = &c.stored[i];
            let qs = &q[row * heads * hd..(row + q_len) * heads * hd];
            want.extend(naive_attention(
                qs, k, v, q_len, ctx, heads, kv_heads, hd, scale,
            ));
            row += q_len;
        }
        for isa in Isa::available() {
            let mut out = vec![f32::NAN; tokens * heads * hd];
            let (k, v) = (&c.k, &c.v);
            cpu::paged_attention_on(
                isa,
                &mut out,
                &q,
                k,
                v,
                &c.layout,
                heads,
                &seqs,
                scale as f32,
            );
            let err = max_abs_diff(&out, &want);
            assert!(
                err < 1e-5,
                "{isa} {:?} heads {heads}/{kv_heads} hd {hd} bs {bs} {chunks:?}: {err}",
                E::DTYPE
            );
        }
    }
}

/// The rows of a 45-token prompt, computed as one chunk alone, and as two chunks of at
/// least four tokens (the shortest chunk the prefill blocks take) in a batch with another
/// prompt and a decode: the same bits, on every path. So a prompt's attention does not
/// depend on the scheduler's chunking or on its batch-mates.
#[test]
fn a_prompt_row_does_not_depend_on_its_chunking_or_its_batch() {
    let mut rng = StdRng::seed_from_u64(11);
    let (heads, kv_heads, hd, bs) = (9, 3, 64, 16);
    let c = cache::<f16>(&mut rng, &[45, 60, 100], kv_heads, hd, bs);
    let row = heads * hd;
    let q = randv(&mut rng, 45 * row);
    let others = randv(&mut rng, 31 * row);
    for isa in Isa::available() {
        let alone = {
            let seqs = batch(&c, &[(45, 45)]);
            let mut out = vec![0f32; 45 * row];
            cpu::paged_attention_on(
                isa, &mut out, &q, &c.k, &c.v, &c.layout, heads, &seqs, 0.125,
            );
            out
        };
        for split in [4usize, 16, 20, 41] {
            // The prompt's two chunks, the other prompt's 30-token chunk and a decode.
            let t = &c.tables;
            let seqs = [
                SeqChunk {
                    query_start: 0,
                    query_len: 30,
                    context_len: 60,
                    block_table: &t[1],
                },
                SeqChunk {
                    query_start: 30,
                    query_len: 45 - split,
                    context_len: 45,
                    block_table: &t[0],
                },
                SeqChunk {
                    query_start: 75 - split,
                    query_len: 1,
                    context_len: 100,
                    block_table: &t[2],
                },
                SeqChunk {
                    query_start: 76 - split,
                    query_len: split,
                    context_len: split,
                    block_table: &t[0],
                },
            ];
            let mut qb = others[..30 * row].to_vec();
            qb.extend_from_slice(&q[split * row..]);
            qb.extend_from_slice(&others[30 * row..]);
            qb.extend_from_slice(&q[..split * row]);
            let mut out = vec![0f32; 76 * row];
            cpu::paged_attention_on(
                isa, &mut out, &qb, &c.k, &c.v, &c.layout, heads, &seqs, 0.125,
            );
            let mut got = out[(76 - split) * row..].to_vec();
            got.extend_from_slice(&out[30 * row..(75 - split) * row]);
            let same = got
                .iter()
                .zip(&alone)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{isa}: split at {split} changed the prompt's rows");
        }
    }
}
