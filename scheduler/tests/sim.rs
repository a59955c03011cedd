//! The simulator against cases with closed-form answers, its workloads against their
//! distributions, and its determinism.

use scheduler::sim::{
    parse_trace, simulate, Arrivals, CostModel, LenDist, SimConfig, SimRequest, Slo, WorkloadSpec,
};
use scheduler::SchedulerConfig;

fn config(max_seqs: usize, budget: usize, blocks: usize, step_s: f64) -> SimConfig {
    SimConfig {
        scheduler: SchedulerConfig {
            max_num_batched_tokens: budget,
            max_num_seqs: max_seqs,
            ..SchedulerConfig::default()
        },
        policy: "fcfs".into(),
        block_size: 16,
        num_blocks: blocks,
        num_host_blocks: 0,
        watermark: 0.0,
        enable_prefix_caching: true,
        cost_model: CostModel::constant(step_s),
        shared_prefix_len: 0,
        slo: Slo::default(),
        series_every: 1,
    }
}

fn fixed(n: usize, prompt: usize, output: usize) -> Vec<SimRequest> {
    WorkloadSpec {
        num_requests: n,
        arrivals: Arrivals::AllAtOnce,
        prompt_len: LenDist::Fixed(prompt),
        output_len: LenDist::Fixed(output),
        shared_prefix: None,
        priority_levels: 1,
        parallel_samples: 1,
        seed: 1,
    }
    .generate()
    .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

#[test]
fn constant_step_time_and_unlimited_memory_all_in_one_batch() {
    // N requests at t=0, everyone fits one step: the prefill step yields each first token at
    // c, then O-1 decode steps: e2e = O·c, TTFT = c, TPOT = ITL = c.
    let (n, p, o, c) = (32, 20, 10, 0.05);
    let r = simulate(&config(64, 4096, 4096, c), &fixed(n, p, o), &mut |_| {}).unwrap();
    assert_eq!(r.completed, n);
    assert_eq!(r.steps, o as u64);
    assert!(close(r.duration_s, o as f64 * c));
    assert!(close(r.ttft_s.mean, c) && close(r.ttft_s.p99, c));
    assert!(close(r.tpot_s.mean, c) && close(r.itl_s.median, c));
    assert!(close(r.e2e_s.mean, o as f64 * c));
    assert!(close(r.request_throughput, n as f64 / (o as f64 * c)));
    assert!(close(
        r.output_token_throughput,
        (n * o) as f64 / (o as f64 * c)
    ));
    assert_eq!(r.preemptions, 0);
}

#[test]
fn a_scaled_cost_model_is_a_proportionally_slower_machine() {
    // Every coefficient of a realistic model scaled by f: each step takes f times as long,
    // and with all requests at t = 0 (no arrival times to race) every latency scales by f.
    let base = CostModel::cpu_smollm2_135m();
    let f = 1.37;
    let slow = base.scaled(f);
    let counts = [(0, 1, 200, 0), (512, 0, 512, 131_328), (100, 7, 3000, 5050)];
    for (p, d, c, pairs) in counts {
        let (b, s) = (
            base.compute_time(p, d, c, pairs),
            slow.compute_time(p, d, c, pairs),
        );
        assert!(close(s, f * b), "{s} vs {f} x {b}");
    }
    assert_eq!(slow.kv_bytes_per_token, base.kv_bytes_per_token);
    assert_eq!(slow.kv_capacity_tokens, base.kv_capacity_tokens);
    let mut cfg = config(8, 256, 4096, 0.0);
    cfg.cost_model = base;
    let r1 = simulate(&cfg, &fixed(20, 100, 12), &mut |_| {}).unwrap();
    cfg.cost_model = slow;
    let r2 = simulate(&cfg, &fixed(20, 100, 12), &mut |_| {}).unwrap();
    assert_eq!(r1.steps, r2.steps);
    assert!(close(r2.duration_s, f * r1.duration_s));
    assert!(close(r2.ttft_s.median, f * r1.ttft_s.median));
    assert!(close(r2.tpot_s.median, f * r1.tpot_s.median));
    assert!(close(r2.request_throughput, r1.request_throughput / f));
}

#[test]
fn constant_step_time_one_at_a_time_is_a_queue() {
    // max_num_seqs = 1: request k starts after k·O steps. TTFT_k = (kO + 1)c, e2e_k = (k+1)Oc.
    let (n, o, c) = (10usize, 5usize, 0.1);
    let r = simulate(&config(1, 4096, 4096, c), &fixed(n, 8, o), &mut |_| {}).unwrap();
    let mean_e2e = (1..=n).map(|k| (k * o) as f64 * c).sum::<f64>() / n as f64;
    let mean_ttft = (0..n).map(|k| (k * o + 1) as f64 * c).sum::<f64>() / n as f64;
    assert!(
        close(r.e2e_s.mean, mean_e2e),
        "{} vs {mean_e2e}",
        r.e2e_s.mean
    );
    assert!(close(r.ttft_s.mean, mean_ttft));
    assert!(close(r.duration_s, (n * o) as f64 * c));
    assert!(close(r.queue_s.max, ((n - 1) * o) as f64 * c));
}

#[test]
fn poisson_arrivals_and_sharegpt_lengths_have_the_requested_means() {
    let reqs = WorkloadSpec::sharegpt_like(20_000, 4.0, 7)
        .generate()
        .unwrap();
    let span = reqs.last().unwrap().arrival_s;
    let rate = (reqs.len() - 1) as f64 / span;
    assert!((rate - 4.0).abs() < 0.15, "rate {rate}");
    let mean = |f: &dyn Fn(&SimRequest) -> usize| {
        reqs.iter().map(f).sum::<usize>() as f64 / reqs.len() as f64
    };
    let (pm, om) = (mean(&|r| r.prompt_len), mean(&|r| r.output_len));
    assert!((pm - 202.0).abs() < 12.0, "prompt mean {pm}");
    assert!((om - 179.0).abs() < 10.0, "output mean {om}");
    assert!(reqs.iter().any(|r| r.prompt_len > 1000), "no long tail");
}

#[test]
fn gamma_burstiness_keeps_the_rate_but_changes_the_spread() {
    let gaps = |burstiness: f64| {
        let spec = WorkloadSpec {
            arrivals: Arrivals::Gamma {
                rate: 10.0,
                burstiness,
            },
            ..WorkloadSpec::sharegpt_like(20_000, 10.0, 3)
        };
        let r = spec.generate().unwrap();
        let g: Vec<f64> = r
            .windows(2)
            .map(|w| w[1].arrival_s - w[0].arrival_s)
            .collect();
        let m = g.iter().sum::<f64>() / g.len() as f64;
        let cv = (g.iter().map(|x| (x - m).powi(2)).sum::<f64>() / g.len() as f64).sqrt() / m;
        (m, cv)
    };
    let (m_bursty, cv_bursty) = gaps(0.25);
    let (m_regular, cv_regular) = gaps(4.0);
    assert!((m_bursty - 0.1).abs() < 0.01 && (m_regular - 0.1).abs() < 0.01);
    // Gamma(k) gaps have coefficient of variation 1/sqrt(k).
    assert!((cv_bursty - 2.0).abs() < 0.2, "cv {cv_bursty}");
    assert!((cv_regular - 0.5).abs() < 0.05, "cv {cv_regular}");
}

#[test]
fn shared_prefixes_hit_the_prefix_cache() {
    let spec = WorkloadSpec {
        num_requests: 200,
        arrivals: Arrivals::Poisson { rate: 20.0 },
        prompt_len: LenDist::Fixed(32),
        output_len: LenDist::Fixed(16),
        shared_prefix: Some((2, 256)),
        priority_levels: 1,
        parallel_samples: 1,
        seed: 5,
    };
    let reqs = spec.generate().unwrap();
    let mut cfg = config(64, 2048, 8192, 0.01);
    cfg.shared_prefix_len = 256;
    let r = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
    // 256 of 288 prompt tokens are shared; all but the first of each group hit.
    assert!(r.prefix_hit_rate > 0.8, "hit rate {}", r.prefix_hit_rate);
    cfg.enable_prefix_caching = false;
    let r2 = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
    assert_eq!(r2.prefix_hit_rate, 0.0);
}

#[test]
fn overload_preempts_yet_everyone_finishes_and_nothing_leaks() {
    let reqs = WorkloadSpec::sharegpt_like(300, f64::INFINITY, 11)
        .generate()
        .unwrap();
    let mut cfg = config(128, 1024, 600, 0.01);
    cfg.cost_model = CostModel::h100_llama3_8b();
    let r = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
    assert!(r.preemptions > 0);
    assert_eq!(r.completed + r.rejected, 300);
    assert!(r.rejected < 10, "{} rejected", r.rejected);
    assert!(r.peak_kv_usage > 0.9);
    assert_eq!(r.series.last().unwrap().running, 0);
}

#[test]
fn same_seed_same_results_byte_for_byte() {
    let run = || {
        let reqs = WorkloadSpec::sharegpt_like(500, 30.0, 42)
            .generate()
            .unwrap();
        let mut cfg = config(64, 512, 2000, 0.0);
        cfg.cost_model = CostModel::h100_llama3_8b();
        cfg.slo = Slo::parse(&["ttft:200".into(), "tpot:50".into()]).unwrap();
        let r = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
        serde_json::to_string(&r).unwrap()
    };
    let a = run();
    assert_eq!(a, run());
    assert!(a.contains("\"goodput\":"));
}

#[test]
fn traces_parse_from_csv_and_jsonl_and_bad_lines_are_named() {
    let csv = "arrival_s,prompt_len,output_len,prefix_group\n0.5,10,5,\n0.1,20,3,1\n";
    let t = parse_trace(csv, true, "t.csv").unwrap();
    assert_eq!(t.len(), 2);
    assert_eq!(
        (t[0].arrival_s, t[0].prompt_len, t[0].prefix_group),
        (0.1, 20, Some(1))
    );
    let jsonl =
        "{\"arrival_s\":0,\"prompt_len\":4,\"output_len\":2}\n{\"arrival_s\":1,\"prompt_len\":x}\n";
    let e = parse_trace(jsonl, false, "t.jsonl")
        .unwrap_err()
        .to_string();
    assert!(e.contains("line 2") && e.contains("t.jsonl"), "{e}");
    let e = parse_trace("arrival_s,prompt_len\n0,1\n", true, "t.csv").unwrap_err();
    assert!(e.to_string().contains("output_len"));
}

#[test]
fn length_distributions_parse() {
    assert_eq!(LenDist::parse("128").unwrap(), LenDist::Fixed(128));
    assert_eq!(
        LenDist::parse("uniform:4:8").unwrap(),
        LenDist::Uniform(4, 8)
    );
    assert!(matches!(
        LenDist::parse("lognormal:200:1").unwrap(),
        LenDist::LogNormal { .. }
    ));
    assert!(LenDist::parse("uniform:9:3").is_err());
    assert!(LenDist::parse("zipf:3").is_err());
}

#[test]
fn parallel_sampling_shares_prompt_pages_and_finishes_every_sample() {
    let spec = |n| WorkloadSpec {
        num_requests: 50,
        arrivals: Arrivals::AllAtOnce,
        prompt_len: LenDist::Fixed(200),
        output_len: LenDist::Fixed(20),
        shared_prefix: None,
        priority_levels: 1,
        parallel_samples: n,
        seed: 9,
    };
    let cfg = config(512, 16384, 100_000, 0.01);
    let one = simulate(&cfg, &spec(1).generate().unwrap(), &mut |_| {}).unwrap();
    let four = simulate(&cfg, &spec(4).generate().unwrap(), &mut |_| {}).unwrap();
    assert_eq!(four.completed, 50);
    // Every sample produced all its tokens.
    assert!(four.records.iter().all(|r| r.output_len == 4 * 20));
    assert!(close(
        four.output_token_throughput * four.duration_s,
        50.0 * 80.0
    ));
    // The prompt is held once per request: far less than 4 separate requests would need.
    let peak_shared = four
        .series
        .iter()
        .map(|p| p.kv_shared_tokens)
        .max()
        .unwrap();
    assert!(peak_shared >= 50 * 3 * 192, "shared {peak_shared}");
    assert!(four.peak_kv_usage < 2.0 * one.peak_kv_usage);
    assert!(close(four.tpot_s.mean, one.tpot_s.mean));
}

#[test]
fn parallel_sampling_survives_preemption_by_recompute_and_swap() {
    let spec = WorkloadSpec {
        num_requests: 40,
        arrivals: Arrivals::Poisson { rate: 50.0 },
        prompt_len: LenDist::Uniform(20, 90),
        output_len: LenDist::Uniform(2, 60),
        shared_prefix: None,
        priority_levels: 1,
        parallel_samples: 3,
        seed: 4,
    };
    let reqs = spec.generate().unwrap();
    for mode in [
        scheduler::PreemptionMode::Recompute,
        scheduler::PreemptionMode::Swap,
    ] {
        let mut cfg = config(64, 256, 60, 0.01);
        cfg.scheduler.preemption_mode = mode;
        cfg.num_host_blocks = 40;
        let r = simulate(&cfg, &reqs, &mut |_| {}).unwrap();
        assert!(r.preemptions > 0, "{mode:?}");
        assert_eq!(r.completed, 40, "{mode:?}");
        for (q, req) in r.records.iter().zip(&reqs) {
            assert_eq!(q.output_len, 3 * req.output_len, "{mode:?}");
        }
    }
}
