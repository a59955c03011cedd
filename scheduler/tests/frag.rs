//! The fragmentation study: exact answers on hand-made workloads, and the partition of the
//! budget holding on random ones.

use scheduler::frag::{
    prepare_workload, run_allocator, AllocatorReport, AllocatorSpec, Arena, Fit, FragConfig,
    Moment, Reservation,
};
use scheduler::sim::{CostModel, SimRequest, WorkloadSpec};

fn cfg(budget_tokens: usize, max_tokens: usize, max_model_len: usize) -> FragConfig {
    FragConfig {
        budget_tokens,
        max_model_len,
        max_tokens,
        max_num_seqs: 256,
        max_num_batched_tokens: 8192,
        enable_chunked_prefill: true,
        watermark: 0.0,
        cost_model: CostModel::constant(1.0),
        shared_prefix_len: 0,
        series_points: usize::MAX,
    }
}

fn req(arrival_s: f64, prompt_len: usize, output_len: usize) -> SimRequest {
    SimRequest {
        arrival_s,
        prompt_len,
        output_len,
        prefix_group: None,
        priority: 0,
        n: 1,
    }
}

/// Runs one allocator and returns its report and every step's partition.
fn replay(
    spec: AllocatorSpec,
    c: &FragConfig,
    reqs: &[SimRequest],
) -> (AllocatorReport, Vec<Moment>) {
    let mut moments = Vec::new();
    let r = run_allocator(spec, c, reqs, &mut |_| {}, &mut |m| moments.push(*m)).unwrap();
    (r, moments)
}

fn parts(m: &Moment) -> [usize; 5] {
    let b = m.breakdown;
    [b.useful, b.reserved, b.internal, b.external, b.free]
}

fn contiguous(reservation: Reservation, fit: Fit) -> AllocatorSpec {
    AllocatorSpec::Contiguous { reservation, fit }
}

#[test]
fn contiguous_max_tokens_single_request_known_answer() {
    // Prompt 4, 3 outputs: 6 states in the end (the last token is never fed back);
    // max_tokens 5 reserves 4 + 5 − 1 = 8, so 2 slots are never used.
    let c = cfg(32, 5, 16);
    let (r, m) = replay(
        contiguous(Reservation::MaxTokens, Fit::First),
        &c,
        &[req(0.0, 4, 3)],
    );
    let got: Vec<[usize; 5]> = m.iter().map(parts).collect();
    assert_eq!(
        got,
        vec![[4, 2, 2, 0, 24], [5, 1, 2, 0, 24], [6, 0, 2, 0, 24]]
    );
    assert_eq!(r.completed, 1);
    assert_eq!(r.ttft_s.mean, 1.0);
    assert_eq!(r.e2e_s.mean, 3.0);
    assert!((r.mean.useful_frac - 5.0 / 32.0).abs() < 1e-12);
    assert!((r.mean.reserved_frac - 1.0 / 32.0).abs() < 1e-12);
    assert!((r.mean.internal_frac - 2.0 / 32.0).abs() < 1e-12);
    assert!((r.mean.free_frac - 24.0 / 32.0).abs() < 1e-12);
    assert!((r.mean.useful_of_allocated - 15.0 / 24.0).abs() < 1e-12);
}

#[test]
fn contiguous_max_len_and_oracle_reserve_what_they_say() {
    let c = cfg(40, 5, 16);
    let (_, m) = replay(
        contiguous(Reservation::MaxModelLen, Fit::First),
        &c,
        &[req(0.0, 4, 3)],
    );
    assert_eq!(parts(&m[0]), [4, 2, 10, 0, 24], "16 reserved, 6 ever used");
    let (_, m) = replay(
        contiguous(Reservation::Oracle, Fit::First),
        &c,
        &[req(0.0, 4, 3)],
    );
    assert_eq!(parts(&m[0]), [4, 2, 0, 0, 34], "exactly the final 6");
}

#[test]
fn paged_single_request_known_answer() {
    // Pages of 4 in a budget of 30: 7 pages, 2 slots no page can use.
    let c = cfg(30, 5, 16);
    let spec = AllocatorSpec::Paged {
        block_size: 4,
        sharing: true,
    };
    let (r, m) = replay(spec, &c, &[req(0.0, 4, 3)]);
    let got: Vec<[usize; 5]> = m.iter().map(parts).collect();
    assert_eq!(
        got,
        vec![[4, 0, 0, 2, 24], [5, 0, 3, 2, 20], [6, 0, 2, 2, 20]]
    );
    assert_eq!(r.completed, 1);
    assert!((r.mean.useful_of_allocated - 15.0 / 20.0).abs() < 1e-12);
}

#[test]
fn first_fit_leaves_the_holes_a_hand_calculation_predicts() {
    // Budget 35. A (10 states), B and C (10 each) land at 0, 10, 20; 5 slots stay at the
    // end. A finishes after its prefill, leaving holes of 10 and 5: 15 slots free, yet D,
    // which needs 15 contiguous slots, waits until B and C are gone.
    let c = cfg(35, 5, 64);
    let reqs = [
        req(0.0, 10, 1),
        req(0.0, 6, 5),
        req(0.0, 6, 5),
        req(0.5, 15, 1),
    ];
    let (r, m) = replay(contiguous(Reservation::Oracle, Fit::First), &c, &reqs);
    let got: Vec<[usize; 5]> = m.iter().map(parts).collect();
    assert_eq!(
        got,
        vec![
            [22, 8, 0, 0, 5],
            [14, 6, 0, 15, 0],
            [16, 4, 0, 15, 0],
            [18, 2, 0, 15, 0],
            [20, 0, 0, 15, 0],
            [15, 0, 0, 0, 20],
        ]
    );
    assert_eq!(r.completed, 4);
    assert_eq!(r.max_concurrency, 3);
    // D arrived at 0.5 and got its token at the end of step 6.
    assert_eq!(r.ttft_s.max, 5.5);
}

#[test]
fn best_fit_picks_the_tightest_hole() {
    for (fit, want, small) in [(Fit::First, 10, 55), (Fit::Best, 50, 25)] {
        let mut a = Arena::new(100, fit);
        let offs: Vec<usize> = [10, 30, 10, 15, 10]
            .iter()
            .map(|&l| a.alloc(l).unwrap())
            .collect();
        assert_eq!(offs, vec![0, 10, 40, 50, 65]);
        a.release(10);
        a.release(50);
        assert_eq!(
            a.holes().collect::<Vec<_>>(),
            vec![(10, 30), (50, 15), (75, 25)]
        );
        assert_eq!(a.alloc(15), Some(want), "{fit:?}");
        assert_eq!(a.free_in_holes_smaller_than(26), small);
    }
    let mut a = Arena::new(10, Fit::First);
    assert_eq!(a.alloc(11), None);
    assert_eq!(a.alloc(0), None);
}

fn all_specs() -> Vec<AllocatorSpec> {
    let mut v = AllocatorSpec::default_set(Fit::First);
    v.extend([Reservation::MaxModelLen, Reservation::Oracle].map(|r| contiguous(r, Fit::Best)));
    v
}

#[test]
fn every_step_partitions_the_budget_exactly() {
    for (seed, n, prefix) in [
        (1u64, 1usize, None),
        (2, 3, None),
        (3, 1, Some((2u32, 40usize))),
    ] {
        let mut spec = WorkloadSpec::sharegpt_like(60, 20.0, seed);
        spec.parallel_samples = n;
        spec.shared_prefix = prefix;
        let mut c = cfg(9_000, 300, 2_400);
        c.shared_prefix_len = prefix.map_or(0, |p| p.1);
        c.watermark = 0.01;
        let (reqs, _) = prepare_workload(&c, &spec.generate().unwrap());
        for a in all_specs() {
            let (r, m) = replay(a, &c, &reqs);
            assert!(!m.is_empty());
            for x in &m {
                assert_eq!(
                    x.breakdown.total(),
                    c.budget_tokens,
                    "{} at {}",
                    r.name,
                    x.t_s
                );
            }
            let f = r.mean;
            let sum =
                f.useful_frac + f.reserved_frac + f.internal_frac + f.external_frac + f.free_frac;
            assert!((sum - 1.0).abs() < 1e-9, "{}: {sum}", r.name);
            assert_eq!(r.completed, reqs.len(), "{}", r.name);
            if n > 1
                && a == (AllocatorSpec::Paged {
                    block_size: 16,
                    sharing: true,
                })
            {
                assert!(f.shared_frac > 0.0, "forked samples share prompt pages");
            }
            if matches!(a, AllocatorSpec::Contiguous { .. }) {
                assert_eq!(f.shared_frac, 0.0);
            }
        }
    }
}

#[test]
fn paging_wastes_little_and_reservations_waste_in_the_order_they_reserve() {
    let spec = WorkloadSpec::sharegpt_like(400, f64::INFINITY, 7);
    let mut c = cfg(30_000, 1024, 4096);
    c.watermark = 0.01;
    let (reqs, dropped) = prepare_workload(&c, &spec.generate().unwrap());
    assert_eq!(dropped, 0);
    let run = |a| replay(a, &c, &reqs).0;
    let paged = run(AllocatorSpec::Paged {
        block_size: 16,
        sharing: true,
    });
    assert!(
        paged.mean.useful_of_allocated >= 0.96,
        "{}",
        paged.mean.useful_of_allocated
    );
    let oracle = run(contiguous(Reservation::Oracle, Fit::First));
    let max_tokens = run(contiguous(Reservation::MaxTokens, Fit::First));
    let max_len = run(contiguous(Reservation::MaxModelLen, Fit::First));
    let u = |r: &AllocatorReport| r.mean.useful_of_allocated;
    assert!(u(&paged) > u(&oracle) && u(&oracle) > u(&max_tokens) && u(&max_tokens) > u(&max_len));
    assert!(paged.max_concurrency > max_len.max_concurrency);
    assert!(paged.request_throughput > max_len.request_throughput);
}

#[test]
fn names_round_trip() {
    for a in all_specs() {
        assert_eq!(AllocatorSpec::parse(&a.name()).unwrap(), a);
    }
    assert!(AllocatorSpec::parse("paged-0").is_err());
    assert!(AllocatorSpec::parse("contiguous-pow2").is_err());
}
