//! CPU paged attention at SmolLM2-135M's shape (9 query heads over 3 KV heads, head dim 64,
//! 16-token pages) for a whole 30-layer step, every ISA path and cache dtype interleaved
//! round by round.
//!
//! `cargo run --release -p pagedrt-benches --bin cpu-attention -- [ROUNDS] [--only TEXT]
//! [--layers N]` (`--layers 1`: one layer's cache reused thirty times, resident in L3: the
//! kernel's compute time without the memory's).
//!
//! Cases: decode of 64 sequences at context 192 (the middle of a 64 x (128 + 128) run) and
//! of one at context 256, and the prefill of 16 prompts of 128 tokens (causal). Each layer
//! has its own cache, its pages scattered as a long-running pool hands them out, so a
//! step's K and V come from memory as in the engine (30 layers of f16 at 64 x 192 are
//! 280 MB). Printed: the median milliseconds per step, and the K+V bytes a decode step
//! reads per second.

use std::time::Instant;

use half::f16;
use kernels::cpu::huge_pages::{HugePageBuf, ZeroBits};
use kernels::cpu::isa::Isa;
use kernels::cpu::{paged_attention_on, AttentionElem, KvElem, SeqChunk};
use kernels::KvLayout;

const LAYERS: usize = 30;
const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HD: usize = 64;
const BS: usize = 16;

/// A batch shape: sequences, context of each, query tokens of each.
struct Shape {
    name: &'static str,
    seqs: usize,
    ctx: usize,
    q_len: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        name: "decode 64 x ctx 192",
        seqs: 64,
        ctx: 192,
        q_len: 1,
    },
    Shape {
        name: "decode 1 x ctx 256",
        seqs: 1,
        ctx: 256,
        q_len: 1,
    },
    Shape {
        name: "prefill 16 x 128",
        seqs: 16,
        ctx: 128,
        q_len: 128,
    },
];

/// One layer's caches for a shape, pages scattered.
struct Layer<E: ZeroBits> {
    k: HugePageBuf<E>,
    v: HugePageBuf<E>,
}

struct Setup<E: ZeroBits> {
    layout: KvLayout,
    layers: Vec<Layer<E>>,
    tables: Vec<Vec<u32>>,
    q: Vec<f32>,
}

fn setup<E: KvElem + ZeroBits>(s: &Shape, layers: usize) -> Setup<E> {
    let pages = s.seqs * s.ctx.div_ceil(BS);
    let layout = KvLayout {
        num_blocks: pages,
        num_kv_heads: KV_HEADS,
        block_size: BS,
        head_dim: HD,
    };
    // Page i of the run goes to (i * 7919) mod pages: a permutation when 7919 does not
    // divide the count.
    let per_seq = s.ctx.div_ceil(BS);
    let tables = (0..s.seqs)
        .map(|q| {
            (0..per_seq)
                .map(|i| (((q * per_seq + i) * 7919) % pages) as u32)
                .collect()
        })
        .collect();
    let layers = (0..layers)
        .map(|l| {
            let val = |i: usize| E::from_f32((((i + l) * 2654435761) % 1000) as f32 * 1e-3 - 0.5);
            // In huge pages, as the engine's cache is (`--kv-prefault` touches them).
            let mut k = HugePageBuf::zeroed(layout.elems());
            let mut v = HugePageBuf::zeroed(layout.elems());
            k.iter_mut().enumerate().for_each(|(i, x)| *x = val(i));
            v.iter_mut().enumerate().for_each(|(i, x)| *x = val(i + 17));
            Layer { k, v }
        })
        .collect();
    let q = (0..s.seqs * s.q_len * HEADS * HD)
        .map(|i| ((i * 31) % 97) as f32 * 0.01 - 0.5)
        .collect();
    Setup {
        layout,
        layers,
        tables,
        q,
    }
}

/// Seconds for one 30-layer step on `isa`.
fn step<E: AttentionElem + ZeroBits>(isa: Isa, s: &Shape, st: &Setup<E>, out: &mut [f32]) -> f64 {
    let seqs: Vec<SeqChunk> = st
        .tables
        .iter()
        .enumerate()
        .map(|(i, t)| SeqChunk {
            query_start: i * s.q_len,
            query_len: s.q_len,
            context_len: s.ctx,
            block_table: t,
        })
        .collect();
    let start = Instant::now();
    for l in st.layers.iter().cycle().take(LAYERS) {
        paged_attention_on(isa, out, &st.q, &l.k, &l.v, &st.layout, HEADS, &seqs, 0.125);
    }
    start.elapsed().as_secs_f64()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(5).max(1);
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned());
    let layers = args
        .iter()
        .position(|a| a == "--layers")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(LAYERS)
        .clamp(1, LAYERS);
    println!(
        "CPU path: {}; {layers} distinct layer caches",
        kernels::cpu::isa::describe()
    );
    println!(
        "{:<22} {:>5} {:>9} {:>10} {:>12}",
        "case", "cache", "path", "ms/step", "GB/s of KV"
    );
    for s in &SHAPES {
        let f32s = setup::<f32>(s, layers);
        let f16s = setup::<f16>(s, layers);
        let mut out = vec![0f32; s.seqs * s.q_len * HEADS * HD];
        let mut cases: Vec<(Isa, &str, Vec<f64>)> = vec![];
        for isa in Isa::available() {
            for dtype in ["f32", "f16"] {
                let id = format!("{}/{dtype}/{isa}", s.name);
                if only.as_deref().is_none_or(|o| id.contains(o)) {
                    cases.push((isa, dtype, vec![]));
                }
            }
        }
        for _ in 0..rounds {
            for (isa, dtype, secs) in cases.iter_mut() {
                let t = match *dtype {
                    "f32" => step(*isa, s, &f32s, &mut out),
                    _ => step(*isa, s, &f16s, &mut out),
                };
                secs.push(t);
            }
        }
        for (isa, dtype, secs) in &mut cases {
            secs.sort_by(f64::total_cmp);
            let t = secs[secs.len() / 2];
            let elem = if *dtype == "f32" { 4 } else { 2 };
            let kv_bytes = (LAYERS * s.seqs * s.ctx * KV_HEADS * HD * 2 * elem) as f64;
            println!(
                "{:<22} {:>5} {:>9} {:>10.2} {:>12.1}",
                s.name,
                dtype,
                isa.name(),
                t * 1e3,
                kv_bytes / t / 1e9
            );
        }
    }
}
