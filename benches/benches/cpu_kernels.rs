//! CPU kernels at SmolLM2-135M shapes: the weight GEMMs in each weight layout and dtype, and paged
//! attention for a decode batch.
//!
//! Run: `cargo bench -p pagedrt-benches --bench cpu_kernels`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kernels::cpu::{self, SeqChunk};
use kernels::KvLayout;

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear 576x1536 (gate/up of SmolLM2)");
    let (k, n) = (576usize, 3072usize);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 * 1e-3).collect();
    let packed = cpu::packed::PackedMatrix::<f32>::pack(&w, n, k);
    let packed_bf16 = cpu::packed::PackedMatrix::<half::bf16>::pack(&w, n, k);
    for m in [1usize, 8, 64, 512, 2048] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
        let mut out = vec![0f32; m * n];
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("gemm crate, w[n,k]", m), &m, |b, &m| {
            b.iter(|| cpu::linear(&mut out, &x, &w, m, k, n))
        });
        g.bench_with_input(BenchmarkId::new("packed panels", m), &m, |b, &m| {
            b.iter(|| packed.linear(&mut out, &x, m))
        });
        g.bench_with_input(BenchmarkId::new("bf16 packed panels", m), &m, |b, &m| {
            b.iter(|| packed_bf16.linear(&mut out, &x, m))
        });
    }
    g.finish();
}

/// The same GEMM with the weights coming from memory, as in a real decode step (a step reads
/// all ~540 MB of the model's f32 weights, far more than the caches): each call uses the
/// next of enough distinct matrices to cover 256 MB.
fn gemm_cold(c: &mut Criterion) {
    let mut g = c.benchmark_group("linear 576x1536, weights from memory");
    let (k, n) = (576usize, 1536usize);
    let copies = (256 << 20) / (n * k * 4);
    let w: Vec<f32> = (0..n * k).map(|i| (i % 97) as f32 * 1e-3).collect();
    let packed: Vec<_> = (0..copies)
        .map(|_| cpu::packed::PackedMatrix::<f32>::pack(&w, n, k))
        .collect();
    for m in [1usize, 8, 64] {
        let x: Vec<f32> = (0..m * k).map(|i| (i % 13) as f32 * 1e-2).collect();
        let mut out = vec![0f32; m * n];
        let mut next = 0;
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_with_input(BenchmarkId::new("packed panels", m), &m, |b, &m| {
            b.iter(|| {
                next = (next + 1) % copies;
                packed[next].linear(&mut out, &x, m)
            })
        });
    }
    g.finish();
}

fn attention(c: &mut Criterion) {
    let layout = KvLayout {
        num_blocks: 64 * 1024 / 16 + 1,
        num_kv_heads: 3,
        block_size: 16,
        head_dim: 64,
    };
    let kc = vec![0.01f32; layout.elems()];
    let vc = vec![0.02f32; layout.elems()];
    // The same cache in f16 (`--kv-cache-dtype f16`): half the bytes per token.
    let kc16 = vec![half::f16::from_f32(0.01); layout.elems()];
    let vc16 = vec![half::f16::from_f32(0.02); layout.elems()];
    let heads = 9;
    let mut g = c.benchmark_group("paged attention decode, 9/3 heads, hd 64");
    for (order, ctx) in [64usize, 256, 1024]
        .into_iter()
        .flat_map(|ctx| [("contiguous", ctx), ("scattered", ctx)])
    {
        let batch = 64;
        let pages = (batch * ctx / 16) as u32;
        // Scattered: page i of the run goes to (i * 7919) mod pages, a permutation (7919
        // is prime and does not divide the page counts here), as a long-running cache
        // hands out pages.
        let page = |i: u32| match order {
            "contiguous" => i,
            _ => ((i as u64 * 7919) % pages as u64) as u32,
        };
        let tables: Vec<Vec<u32>> = (0..batch)
            .map(|s| {
                ((s * ctx / 16) as u32..((s + 1) * ctx / 16) as u32)
                    .map(page)
                    .collect()
            })
            .collect();
        let seqs: Vec<SeqChunk> = tables
            .iter()
            .enumerate()
            .map(|(i, t)| SeqChunk {
                query_start: i,
                query_len: 1,
                context_len: ctx,
                block_table: t,
            })
            .collect();
        let q = vec![0.1f32; batch * heads * 64];
        let mut out = vec![0f32; batch * heads * 64];
        g.throughput(Throughput::Bytes((batch * ctx * 2 * 3 * 64 * 4) as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("batch {batch}, {order} pages"), ctx),
            &ctx,
            |b, _| {
                b.iter(|| {
                    cpu::paged_attention(&mut out, &q, &kc, &vc, &layout, heads, &seqs, 0.125)
                })
            },
        );
        g.throughput(Throughput::Bytes((batch * ctx * 2 * 3 * 64 * 2) as u64));
        g.bench_with_input(
            BenchmarkId::new(format!("batch {batch}, {order} pages, f16 cache"), ctx),
            &ctx,
            |b, _| {
                b.iter(|| {
                    cpu::paged_attention(&mut out, &q, &kc16, &vc16, &layout, heads, &seqs, 0.125)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, gemm, gemm_cold, attention);
criterion_main!(benches);
