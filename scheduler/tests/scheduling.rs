//! Scheduler behaviour: one rule for all work, order, chunking, preemption, lifecycle.

mod common;

use common::{drive, make, next_token, req};
use scheduler::{
    FinishReason, PreemptionMode, Request, SchedulerConfig, SchedulerError, StepResult,
};

fn cfg(budget: usize, max_seqs: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_batched_tokens: budget,
        max_num_seqs: max_seqs,
        ..SchedulerConfig::default()
    }
}

#[test]
fn prefill_and_decode_share_one_step() {
    let mut s = make(cfg(64, 8), 4, 64, 0, "fcfs");
    s.add_request(req(1, 10, 5, 0.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    assert_eq!(
        (p.seqs.len(), p.seqs[0].len, p.seqs[0].samples),
        (1, 10, true)
    );
    s.update(&StepResult {
        sampled: vec![(1, 7)],
        finished: vec![],
    })
    .unwrap();
    s.add_request(req(2, 20, 5, 1.0)).unwrap();
    let p = s.schedule(1.0).unwrap();
    // The decode of 1 comes first, then 2's whole prompt.
    assert_eq!(p.seqs.len(), 2);
    assert_eq!((p.seqs[0].seq, p.seqs[0].start, p.seqs[0].len), (1, 10, 1));
    assert!(p.seqs[0].is_decode());
    assert_eq!((p.seqs[1].seq, p.seqs[1].start, p.seqs[1].len), (2, 0, 20));
    assert_eq!(p.input_ids[0], 7);
}

#[test]
fn long_prompts_are_chunked_and_decodes_go_first() {
    let mut c = cfg(16, 8);
    c.long_prefill_threshold = Some(12);
    let mut s = make(c, 4, 64, 0, "fcfs");
    s.add_request(req(1, 3, 50, 0.0)).unwrap();
    s.add_request(req(2, 40, 5, 0.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    // 1's prompt (3), then 2's first chunk capped at 12.
    assert_eq!(
        p.seqs
            .iter()
            .map(|x| (x.seq, x.len, x.samples))
            .collect::<Vec<_>>(),
        vec![(1, 3, true), (2, 12, false)]
    );
    s.update(&StepResult {
        sampled: vec![(1, 9)],
        finished: vec![],
    })
    .unwrap();
    let p = s.schedule(1.0).unwrap();
    assert_eq!(
        p.seqs
            .iter()
            .map(|x| (x.seq, x.start, x.len))
            .collect::<Vec<_>>(),
        vec![(1, 3, 1), (2, 12, 12)]
    );
}

#[test]
fn without_chunking_a_prompt_waits_for_a_step_with_room() {
    let mut c = cfg(16, 8);
    c.enable_chunked_prefill = false;
    let mut s = make(c, 4, 64, 0, "fcfs");
    s.add_request(req(1, 10, 2, 0.0)).unwrap();
    s.add_request(req(2, 10, 2, 0.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    assert_eq!(
        p.seqs.len(),
        1,
        "the second prompt does not fit the remaining budget"
    );
    // A request that can never fit one step without chunking is refused at once.
    let e = s.add_request(req(3, 15, 5, 0.0)).unwrap_err();
    assert!(matches!(e, SchedulerError::ExceedsBudget { .. }));
}

#[test]
fn requests_that_can_never_fit_are_rejected_at_admission() {
    let mut s = make(cfg(64, 8), 4, 8, 0, "fcfs"); // 32 token slots in all
    let e = s.add_request(req(1, 20, 13, 0.0)).unwrap_err();
    assert_eq!(
        e,
        SchedulerError::NeverFits {
            id: 1,
            needed_tokens: 33,
            capacity_tokens: 32
        }
    );
    s.add_request(req(1, 20, 12, 0.0)).unwrap();
    assert_eq!(
        s.add_request(req(1, 5, 1, 0.0)),
        Err(SchedulerError::DuplicateRequest(1))
    );
    assert_eq!(
        s.add_request(Request::new(2, vec![], 4)),
        Err(SchedulerError::EmptyPrompt(2))
    );
    let mut c = cfg(64, 8);
    c.max_model_len = Some(16);
    let mut s = make(c, 4, 64, 0, "fcfs");
    assert!(matches!(
        s.add_request(req(1, 10, 7, 0.0)),
        Err(SchedulerError::TooLong { .. })
    ));
}

#[test]
fn preemption_picks_the_latest_arrival_and_outputs_resume_where_they_stopped() {
    let reqs: Vec<_> = (0..6).map(|i| (req(i, 9, 24, i as f64), 24)).collect();
    let arrivals = vec![0; 6];
    // Reference: a cache big enough for everyone.
    let mut big = make(cfg(64, 8), 4, 256, 0, "fcfs");
    let reference = drive(&mut big, &reqs, &arrivals);
    assert_eq!(reference.preemptions, 0);
    for mode in [
        PreemptionMode::Recompute,
        PreemptionMode::Swap,
        PreemptionMode::Auto,
    ] {
        let mut c = cfg(64, 8);
        c.preemption_mode = mode;
        // 6 × 33 tokens need 54 pages of 4; give 24.
        let mut small = make(c, 4, 24, 64, "fcfs");
        let run = drive(&mut small, &reqs, &arrivals);
        assert!(run.preemptions > 0, "{mode:?}: the cache was never short");
        assert_eq!(run.outputs, reference.outputs, "{mode:?}");
        let counters = small.counters();
        match mode {
            PreemptionMode::Recompute => assert_eq!(counters.swaps_out, 0),
            PreemptionMode::Swap => assert!(counters.swaps_out > 0 && counters.recomputes == 0),
            PreemptionMode::Auto => {}
        }
    }
}

#[test]
fn the_victim_is_the_least_urgent_running_sequence() {
    let mut s = make(cfg(64, 8), 4, 6, 0, "fcfs");
    s.add_request(req(1, 8, 8, 0.0)).unwrap(); // 2 pages
    s.add_request(req(2, 8, 8, 1.0)).unwrap(); // 2 pages
    s.add_request(req(3, 7, 8, 2.0)).unwrap(); // 2 pages
    let p = s.schedule(0.0).unwrap();
    assert_eq!(p.seqs.len(), 3);
    let sampled = p.seqs.iter().map(|x| (x.seq, 1)).collect();
    s.update(&StepResult {
        sampled,
        finished: vec![],
    })
    .unwrap();
    // 1 and 2 need a page each (none free): 3, the latest, is preempted.
    let p = s.schedule(1.0).unwrap();
    assert_eq!(p.preempted, vec![3]);
    assert_eq!(p.seqs.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(s.sequence(3).unwrap().num_preemptions, 1);
    assert_eq!(s.sequence(3).unwrap().num_computed, 0);
    assert_eq!(s.num_waiting(), 1);
}

#[test]
fn recompute_after_preemption_hits_the_prefix_cache() {
    let mut s = make(cfg(64, 8), 4, 5, 0, "fcfs");
    s.add_request(req(1, 8, 8, 0.0)).unwrap();
    s.add_request(req(2, 8, 8, 1.0)).unwrap();
    s.add_request(req(3, 9, 8, 2.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    assert_eq!(p.seqs.len(), 2, "3 needs 3 pages, only 2 left");
    let sampled = p.seqs.iter().map(|x| (x.seq, 1)).collect();
    s.update(&StepResult {
        sampled,
        finished: vec![],
    })
    .unwrap();
    // 1 takes the last free page; 2 finds none and, being the least urgent running
    // sequence, preempts itself.
    let p = s.schedule(1.0).unwrap();
    assert_eq!(p.preempted, vec![2]);
    s.update(&StepResult {
        sampled: vec![(1, 1)],
        finished: vec![(1, FinishReason::Stop)],
    })
    .unwrap();
    // 2 comes back before 3 (its place in line) and finds its full pages cached.
    let p = s.schedule(2.0).unwrap();
    assert_eq!(p.seqs[0].seq, 2);
    assert_eq!(p.seqs[0].start, 8, "8 of its 9 tokens were still cached");
    assert!(s.kv_stats().prefix_hits >= 8);
}

#[test]
fn abort_frees_pages_in_every_state() {
    let mut c = cfg(64, 8);
    c.preemption_mode = PreemptionMode::Swap;
    let mut s = make(c, 4, 6, 16, "fcfs");
    s.add_request(req(1, 8, 8, 0.0)).unwrap();
    s.add_request(req(2, 8, 8, 1.0)).unwrap();
    s.add_request(req(3, 7, 8, 2.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    let sampled = p.seqs.iter().map(|x| (x.seq, 1)).collect();
    s.update(&StepResult {
        sampled,
        finished: vec![],
    })
    .unwrap();
    let p = s.schedule(1.0).unwrap();
    assert_eq!(p.preempted, vec![3]);
    assert_eq!(s.num_swapped(), 1);
    assert!(!p.swap_out.is_empty());
    s.add_request(req(4, 4, 4, 3.0)).unwrap(); // waiting
    s.abort(3).unwrap(); // swapped
    s.abort(4).unwrap(); // waiting
    s.abort(1).unwrap(); // running, with a step in flight
    s.update(&StepResult {
        sampled: vec![(2, 5)],
        finished: vec![],
    })
    .unwrap();
    s.abort(2).unwrap();
    assert_eq!(s.abort(2), Err(SchedulerError::UnknownRequest(2)));
    let st = s.kv_stats();
    assert_eq!((st.device.used_blocks, st.host.used_blocks), (0, 0));
    assert!(!s.has_unfinished());
    assert_eq!(s.counters().aborted, 4);
}

#[test]
fn a_sample_for_a_sequence_that_did_not_sample_is_an_error() {
    let mut c = cfg(4, 8);
    c.long_prefill_threshold = Some(4);
    let mut s = make(c, 4, 64, 0, "fcfs");
    s.add_request(req(1, 10, 4, 0.0)).unwrap();
    let p = s.schedule(0.0).unwrap();
    assert!(!p.seqs[0].samples);
    let e = s
        .update(&StepResult {
            sampled: vec![(1, 3)],
            finished: vec![],
        })
        .unwrap_err();
    assert_eq!(e, SchedulerError::UnexpectedSample(1));
}

#[test]
fn priority_and_sjf_policies_order_the_queue() {
    let mut s = make(cfg(8, 1), 4, 64, 0, "priority");
    let mut low = req(1, 4, 1, 0.0);
    low.priority = 5;
    let mut high = req(2, 4, 1, 1.0);
    high.priority = 0;
    s.add_request(low).unwrap();
    s.add_request(high).unwrap();
    assert_eq!(s.schedule(1.0).unwrap().seqs[0].seq, 2);

    let mut s = make(cfg(64, 1), 4, 64, 0, "sjf");
    s.add_request(req(1, 20, 20, 0.0)).unwrap();
    s.add_request(req(2, 4, 4, 0.01)).unwrap();
    assert_eq!(s.schedule(1.0).unwrap().seqs[0].seq, 2);
}

#[test]
fn aged_priority_does_not_starve_low_priority_requests() {
    // A stream of urgent requests arrives every step; one low-priority request waits.
    let mut reqs = vec![];
    let mut arrivals = vec![];
    let mut low = req(0, 4, 2, 0.0);
    low.priority = 10;
    reqs.push((low, 2));
    arrivals.push(0);
    for i in 1..400u64 {
        let mut r = req(i, 4, 2, i as f64);
        r.priority = 0;
        reqs.push((r, 2));
        arrivals.push(i as usize);
    }
    let mut s = make(cfg(8, 1), 4, 64, 0, "priority");
    let run = drive(&mut s, &reqs, &arrivals);
    assert_eq!(run.outputs.len(), 400);
}

#[test]
fn the_same_inputs_give_the_same_plans() {
    let reqs: Vec<_> = (0..20)
        .map(|i| {
            (
                req(i, 5 + (i as usize * 7) % 30, 20, i as f64),
                3 + (i as usize % 9),
            )
        })
        .collect();
    let arrivals: Vec<usize> = (0..20).map(|i| i / 3).collect();
    let a = drive(&mut make(cfg(32, 4), 4, 20, 8, "fcfs"), &reqs, &arrivals);
    let b = drive(&mut make(cfg(32, 4), 4, 20, 8, "fcfs"), &reqs, &arrivals);
    assert_eq!(a.outputs, b.outputs);
    assert_eq!(a.steps, b.steps);
    assert_eq!(next_token(&[1, 2]), next_token(&[1, 2]));
}

#[test]
fn parallel_sampling_forks_share_the_prompt_pages() {
    let mut s = make(cfg(64, 8), 4, 64, 0, "fcfs");
    s.add_request(req(1, 10, 8, 0.0)).unwrap(); // 3 pages, the last one half full
    let p = s.schedule(0.0).unwrap();
    assert!(p.seqs[0].samples);
    // Forking before the first sample is refused.
    assert_eq!(s.fork(1, 2, 5), Err(SchedulerError::NotForkable(1)));
    s.update(&StepResult {
        sampled: vec![(1, 100)],
        finished: vec![],
    })
    .unwrap();
    for (child, tok) in [(2, 101), (3, 102), (4, 103)] {
        s.fork(1, child, tok).unwrap();
    }
    assert_eq!(s.fork(1, 2, 9), Err(SchedulerError::DuplicateRequest(2)));
    let st = s.kv_stats();
    assert_eq!(
        st.device.used_blocks, 3,
        "4 sequences, one copy of the prompt"
    );
    assert_eq!(st.shared_tokens(), 30);
    // Next step: all four decode; three of them copy the shared partial page first.
    let p = s.schedule(1.0).unwrap();
    assert_eq!(p.seqs.len(), 4);
    assert_eq!(p.cow.len(), 3);
    let firsts: Vec<u32> = p.input_ids.clone();
    assert_eq!(firsts, vec![100, 101, 102, 103]);
    assert_eq!(s.kv_stats().device.used_blocks, 6);
    for id in 1..=4 {
        s.abort(id).unwrap();
    }
    assert_eq!(s.kv_stats().device.used_blocks, 0);
}

#[test]
fn a_missing_sample_is_reported_not_left_hanging() {
    let mut s = make(cfg(64, 8), 4, 64, 0, "fcfs");
    s.add_request(req(1, 5, 4, 0.0)).unwrap();
    s.add_request(req(2, 5, 4, 0.0)).unwrap();
    s.schedule(0.0).unwrap();
    let e = s
        .update(&StepResult {
            sampled: vec![(1, 3)],
            finished: vec![],
        })
        .unwrap_err();
    assert_eq!(e, SchedulerError::MissingSample(2));
    // Finishing it instead of sampling is fine.
    s.schedule(1.0).unwrap();
    s.update(&StepResult {
        sampled: vec![(1, 4)],
        finished: vec![(2, FinishReason::Stop)],
    })
    .unwrap_or_else(|e| panic!("{e}"));
}
