//! One scheduler step (`schedule` + `update`) with 1 to 4,096 running decode sequences.
//!
//! Run: `cargo bench -p pagedrt-benches --bench scheduler`

use block_manager::{BlockManager, BlockManagerConfig};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use scheduler::{policy::Fcfs, Request, Scheduler, SchedulerConfig, StepResult};
use std::time::{Duration, Instant};

/// `n` sequences that have finished their prefill and are decoding.
fn decoding(n: usize) -> Scheduler {
    let cfg = SchedulerConfig {
        max_num_batched_tokens: 1 << 20,
        max_num_seqs: n,
        ..SchedulerConfig::default()
    };
    let bm = BlockManager::new(BlockManagerConfig::new(16, n * 64 + 64)).unwrap();
    let mut s = Scheduler::new(cfg, bm, Box::new(Fcfs)).unwrap();
    for i in 0..n as u64 {
        let prompt = (0..100 + (i % 200) as u32).map(|t| t + i as u32).collect();
        s.add_request(Request::new(i, prompt, 700)).unwrap();
    }
    step(&mut s);
    s
}

fn step(s: &mut Scheduler) {
    let plan = s.schedule(0.0).unwrap();
    let result = StepResult {
        sampled: plan
            .seqs
            .iter()
            .filter(|x| x.samples)
            .map(|x| (x.seq, 7))
            .collect(),
        finished: vec![],
    };
    s.update(&result).unwrap();
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scheduler/decode step");
    for n in [1usize, 64, 256, 1024, 4096] {
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, &n| {
            // Rebuilt (untimed) every 256 steps so sequences never run out of room.
            b.iter_custom(|iters| {
                let mut s = decoding(n);
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    if i % 256 == 255 {
                        s = decoding(n);
                    }
                    let t = Instant::now();
                    step(&mut s);
                    total += t.elapsed();
                }
                total
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
