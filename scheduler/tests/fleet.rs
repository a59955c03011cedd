//! The fleet simulator against references: one replica behind any router is the
//! single-replica simulator; N identical replicas behind round-robin split a workload of
//! identical requests exactly; kv-aware routing keeps prefix groups where their pages are.

use scheduler::sim::router::{CacheAwareConfig, RouterPolicy};
use scheduler::sim::{
    simulate, simulate_fleet, Arrivals, CostModel, FleetConfig, LenDist, SimConfig, SimRequest,
    Slo, WorkloadSpec,
};
use scheduler::SchedulerConfig;

fn single(blocks: usize, prefix_len: usize) -> SimConfig {
    SimConfig {
        scheduler: SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 64,
            ..SchedulerConfig::default()
        },
        policy: "fcfs".into(),
        block_size: 16,
        num_blocks: blocks,
        num_host_blocks: 0,
        watermark: 0.0,
        enable_prefix_caching: true,
        cost_model: CostModel::preset("cpu-smollm2-135m").unwrap(),
        shared_prefix_len: prefix_len,
        slo: Slo::default(),
        series_every: 1,
    }
}

fn fleet(n: usize, router: RouterPolicy, one: &SimConfig) -> FleetConfig {
    FleetConfig {
        replicas: vec![one.replica(); n],
        router,
        cache_aware: CacheAwareConfig::default(),
        shared_prefix_len: one.shared_prefix_len,
        slo: Slo::default(),
        seed: 0,
        max_series_points: 100,
    }
}

fn workload(n: usize, rate: f64, prefix: Option<(u32, usize)>, seed: u64) -> Vec<SimRequest> {
    WorkloadSpec {
        num_requests: n,
        arrivals: Arrivals::Poisson { rate },
        prompt_len: LenDist::Uniform(16, 200),
        output_len: LenDist::Uniform(4, 64),
        shared_prefix: prefix,
        priority_levels: 1,
        parallel_samples: 1,
        seed,
    }
    .generate()
    .unwrap()
}

fn near(a: f64, b: f64) -> bool {
    (a / b - 1.0).abs() < 0.003
}

/// The nearest-rank percentile (what the fleet's histograms approximate).
fn rank(values: &[f64], p: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_unstable_by(f64::total_cmp);
    v[((p / 100.0) * (v.len() - 1) as f64).round() as usize]
}

#[test]
fn one_replica_behind_any_router_is_the_single_replica_simulator() {
    let cfg = single(400, 128);
    let reqs = workload(600, 3.0, Some((4, 128)), 5);
    let want = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
    let exact = |f: &dyn Fn(&scheduler::sim::RequestRecord) -> Option<f64>| -> Vec<f64> {
        want.records.iter().filter_map(f).collect()
    };
    let (ttft, tpot, e2e) = (
        exact(&|r| r.ttft()),
        exact(&|r| r.tpot()),
        exact(&|r| r.e2e()),
    );
    for router in [
        RouterPolicy::RoundRobin,
        RouterPolicy::PowerOfTwo,
        RouterPolicy::LeastLoaded,
        RouterPolicy::CacheAware,
        RouterPolicy::KvAware,
    ] {
        let got = simulate_fleet(
            &fleet(1, router, &cfg),
            reqs.clone().into_iter(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(got.completed, want.completed);
        assert_eq!(got.per_replica[0].steps, want.steps);
        assert!((got.duration_s - want.duration_s).abs() < 1e-9);
        assert!((got.prefix_hit_rate - want.prefix_hit_rate).abs() < 1e-12);
        // Means are exact; percentiles are within the histogram's resolution of the exact
        // nearest-rank ones.
        for (g, w, all) in [
            (got.ttft_s, want.ttft_s, &ttft),
            (got.tpot_s, want.tpot_s, &tpot),
            (got.itl_s, want.itl_s, &want.itls),
            (got.e2e_s, want.e2e_s, &e2e),
        ] {
            assert_eq!(g.count, w.count);
            assert!(near(g.mean, w.mean), "{router:?}: {g:?} vs {w:?}");
            for (p, v) in [(50.0, g.median), (90.0, g.p90), (99.0, g.p99)] {
                assert!(
                    near(v, rank(all, p)),
                    "{router:?} p{p}: {v} vs {}",
                    rank(all, p)
                );
            }
        }
    }
}

#[test]
fn round_robin_splits_identical_requests_exactly_and_conserves_tokens() {
    let cfg = single(2000, 0);
    let reqs: Vec<SimRequest> = (0..900)
        .map(|i| SimRequest {
            arrival_s: i as f64 * 0.01,
            prompt_len: 64,
            output_len: 8,
            prefix_group: None,
            priority: 0,
            n: 1,
        })
        .collect();
    let r = simulate_fleet(
        &fleet(3, RouterPolicy::RoundRobin, &cfg),
        reqs.into_iter(),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.completed, 900);
    assert!(r.per_replica.iter().all(|q| q.requests == 300));
    assert!((r.output_token_throughput * r.duration_s - 900.0 * 8.0).abs() < 1e-6);
    // The series is thinned to its budget and covers the run.
    assert!(
        r.series.len() <= 100 && r.series.len() > 20,
        "{}",
        r.series.len()
    );
    assert!(r.series.last().unwrap().t_s > 8.0);
}

#[test]
fn kv_aware_keeps_prefix_groups_on_the_replica_that_holds_them_round_robin_thrashes() {
    // Two groups of 512-token system prompts; each replica's cache (40 pages) holds one
    // prefix (32 pages), not two. After one request of each group, requests come one at a time in the order A, A,
    // B, B, ...: kv-aware sends every A where A's pages are and every B where B's are;
    // round-robin sends both groups to both replicas, each evicting the other's prefix.
    let mut cfg = single(40, 512);
    // A tenth of the CPU engine's step times: each request is done before the next comes.
    cfg.cost_model = CostModel::preset("cpu-smollm2-135m").unwrap().scaled(0.1);
    let req = |t: f64, g: u32| SimRequest {
        arrival_s: t,
        prompt_len: 528,
        output_len: 4,
        prefix_group: Some(g),
        priority: 0,
        n: 1,
    };
    let mut reqs = vec![req(0.0, 0), req(0.001, 1)];
    reqs.extend((0..40).map(|i| req(1.0 + i as f64, ((i / 2) % 2) as u32)));
    let run = |router| {
        simulate_fleet(
            &fleet(2, router, &cfg),
            reqs.clone().into_iter(),
            &mut |_| {},
        )
        .unwrap()
    };
    let (kv, rr) = (run(RouterPolicy::KvAware), run(RouterPolicy::RoundRobin));
    assert_eq!((kv.completed, rr.completed), (42, 42));
    // kv-aware: every request after the first two finds its 512 prefix tokens.
    let hits = 40.0 * 512.0 / (42.0 * 528.0);
    assert!(
        (kv.prefix_hit_rate - hits).abs() < 1e-9,
        "{}",
        kv.prefix_hit_rate
    );
    assert_eq!(
        (kv.per_replica[0].requests, kv.per_replica[1].requests),
        (21, 21)
    );
    // Round-robin: the other group's request just before evicted all but the head of this
    // one's prefix (pages are evicted tail first: 34 of 40 are taken).
    assert!(rr.prefix_hit_rate < 0.3 * hits, "{}", rr.prefix_hit_rate);
    assert!(kv.ttft_s.mean < rr.ttft_s.mean);
}
