//! Random workloads on tiny caches (forcing preemption and swap), for every policy and
//! preemption mode: budgets and caps hold, nothing leaks, everyone finishes, and the outputs
//! equal those of a run with a cache big enough to never preempt.

mod common;

use common::{drive, make, req};
use proptest::prelude::*;
use scheduler::{policy::POLICY_NAMES, PreemptionMode, SchedulerConfig};

fn workload() -> impl Strategy<Value = Vec<(usize, usize, usize)>> {
    // (prompt length, output length, arrival step)
    prop::collection::vec((1usize..40, 1usize..30, 0usize..30), 1..16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn tiny_caches_change_nothing_but_the_schedule(
        w in workload(),
        bs in prop::sample::select(vec![1usize, 2, 4, 16]),
        budget in 8usize..64,
        max_seqs in 1usize..8,
        threshold in prop::option::of(1usize..16),
        chunked in any::<bool>(),
        mode in prop::sample::select(vec![
            PreemptionMode::Recompute, PreemptionMode::Swap, PreemptionMode::Auto,
        ]),
        policy in prop::sample::select(POLICY_NAMES.to_vec()),
    ) {
        let reqs: Vec<_> = w
            .iter()
            .enumerate()
            .map(|(i, &(p, o, a))| {
                let mut r = req(i as u64, p, o, a as f64);
                r.priority = (i % 3) as i32;
                (r, o)
            })
            .collect();
        let arrivals: Vec<usize> = w.iter().map(|x| x.2).collect();
        let longest = w.iter().map(|&(p, o, _)| p + o).max().unwrap();
        let cfg = SchedulerConfig {
            max_num_batched_tokens: if chunked { budget } else { budget.max(longest) },
            max_num_seqs: max_seqs,
            long_prefill_threshold: threshold,
            enable_chunked_prefill: chunked,
            preemption_mode: mode,
            ..SchedulerConfig::default()
        };
        // The smallest cache that still fits the longest request alone.
        let tiny = longest.div_ceil(bs) + 1;
        let reference = drive(&mut make(cfg.clone(), bs, 4096, 0, "fcfs"), &reqs, &arrivals);
        let run = drive(&mut make(cfg, bs, tiny, tiny / 2, policy), &reqs, &arrivals);
        prop_assert_eq!(run.outputs.len(), reqs.len());
        prop_assert_eq!(run.outputs, reference.outputs);
    }
}
