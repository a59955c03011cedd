//! Block-manager hot paths: page allocate/free, one decode step's `allocate_slots` for 1,024
//! sequences, and `lookup_prefix` of a 2,048-token prompt.
//!
//! Run: `cargo bench -p pagedrt-benches --bench block_manager`

use block_manager::{BlockManager, BlockManagerConfig, BlockPool};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use std::time::{Duration, Instant};

fn allocate_free(c: &mut Criterion) {
    let mut pool = BlockPool::new(65_536, 16).unwrap();
    // Keep half the pool in use so the free list is a realistic mix.
    for _ in 0..32_768 {
        pool.allocate();
    }
    c.bench_function("pool/allocate+free one page", |b| {
        b.iter(|| {
            let p = pool.allocate().unwrap();
            pool.release(black_box(p)).unwrap();
        })
    });
}

/// 1,024 running sequences with varied lengths, as after their prefills.
fn running_batch(n: u64) -> BlockManager {
    let cfg = BlockManagerConfig::new(16, 65_536).with_watermark(0.0);
    let mut m = BlockManager::new(cfg).unwrap();
    for s in 0..n {
        let hit = m.lookup_prefix(&[], None);
        m.admit(s, &hit, 100 + (s as usize * 37) % 900).unwrap();
    }
    m
}

fn decode_step(c: &mut Criterion) {
    // Steady state: the same manager steps again and again (as in the engine); every 256
    // steps, outside the timed region, the batch is freed and re-admitted so it never fills.
    c.bench_function("manager/decode step allocate_slots x1024", |b| {
        b.iter_custom(|iters| {
            let mut m = running_batch(1024);
            let mut total = Duration::ZERO;
            for i in 0..iters {
                if i % 256 == 255 {
                    m = running_batch(1024);
                }
                let t = Instant::now();
                for s in 0..1024u64 {
                    m.allocate_slots(s, 1).unwrap();
                }
                total += t.elapsed();
            }
            total
        })
    });
    // Cold: a fresh copy of the manager each time, so its pages are not in the CPU caches
    // (closer to a step that follows a forward pass which evicted them).
    let base = running_batch(1024);
    c.bench_function(
        "manager/decode step allocate_slots x1024 (cold caches)",
        |b| {
            b.iter_batched_ref(
                || base.clone(),
                |m| {
                    for s in 0..1024u64 {
                        m.allocate_slots(s, 1).unwrap();
                    }
                },
                BatchSize::LargeInput,
            )
        },
    );
}

fn lookup(c: &mut Criterion) {
    let cfg = BlockManagerConfig::new(16, 4096);
    let mut m = BlockManager::new(cfg).unwrap();
    let prompt: Vec<u32> = (0..2048u32)
        .map(|i| i.wrapping_mul(2_654_435_761) % 49_152)
        .collect();
    let hit = m.lookup_prefix(&prompt, None);
    m.admit(0, &hit, prompt.len()).unwrap();
    m.cache_full_blocks(0, &prompt).unwrap();
    assert_eq!(m.lookup_prefix(&prompt, None).num_cached_tokens, 2032);
    c.bench_function("manager/lookup_prefix 2048 tokens bs16", |b| {
        b.iter(|| black_box(m.lookup_prefix(black_box(&prompt), None)))
    });
}

criterion_group!(benches, allocate_free, decode_step, lookup);
criterion_main!(benches);
