//! A fake model that drives the scheduler as the engine would, checking every plan.

use block_manager::{BlockManager, BlockManagerConfig};
use scheduler::{policy, FinishReason, Request, Scheduler, SchedulerConfig, StepResult};
use std::collections::BTreeMap;

/// The "model": the next token is a hash of the whole context, so a lost, repeated or
/// reordered token anywhere changes every later output.
pub fn next_token(context: &[u32]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &t in context {
        h = (h ^ t as u64).wrapping_mul(0x100_0000_01b3);
    }
    (h % 1000) as u32
}

pub fn make(
    cfg: SchedulerConfig,
    bs: usize,
    blocks: usize,
    host: usize,
    policy_name: &str,
) -> Scheduler {
    let bm = BlockManager::new(
        BlockManagerConfig::new(bs, blocks)
            .with_host_blocks(host)
            .with_watermark(0.0),
    )
    .unwrap();
    Scheduler::new(cfg, bm, policy::by_name(policy_name).unwrap()).unwrap()
}

/// Output lengths per request id, and what happened.
pub struct Run {
    pub outputs: BTreeMap<u64, Vec<u32>>,
    pub steps: usize,
    pub max_tokens_in_step: usize,
    pub max_seqs_in_step: usize,
    pub preemptions: u64,
}

/// Runs requests (with their output lengths) to completion, one step per loop, checking the
/// invariants of every plan. `arrivals[i]` = step at which request i is added.
pub fn drive(s: &mut Scheduler, reqs: &[(Request, usize)], arrivals: &[usize]) -> Run {
    let cfg = s.config().clone();
    let mut outputs: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
    let mut run = Run {
        outputs: BTreeMap::new(),
        steps: 0,
        max_tokens_in_step: 0,
        max_seqs_in_step: 0,
        preemptions: 0,
    };
    let want: BTreeMap<u64, usize> = reqs.iter().map(|(r, n)| (r.id, *n)).collect();
    let mut step = 0;
    loop {
        for (i, (r, _)) in reqs.iter().enumerate() {
            if arrivals[i] == step {
                s.add_request(r.clone()).unwrap();
            }
        }
        let all_arrived = arrivals.iter().all(|&a| a <= step);
        if all_arrived && !s.has_unfinished() {
            break;
        }
        assert!(step < 100_000, "no progress: starvation or livelock");
        let plan = s.schedule(step as f64).unwrap();
        let bs = s.block_manager().block_size();
        run.max_tokens_in_step = run.max_tokens_in_step.max(plan.num_tokens());
        run.max_seqs_in_step = run.max_seqs_in_step.max(plan.seqs.len());
        assert!(plan.num_tokens() <= cfg.max_num_batched_tokens);
        assert!(plan.seqs.len() <= cfg.max_num_seqs);
        let mut result = StepResult::default();
        let mut offset = 0;
        for sc in &plan.seqs {
            let seq = s.sequence(sc.seq).unwrap();
            assert_eq!(sc.start, seq.num_computed);
            assert_eq!(
                &plan.input_ids[offset..offset + sc.len],
                &seq.tokens[sc.start..sc.start + sc.len]
            );
            offset += sc.len;
            assert!(sc.table_len * bs >= sc.context_len(), "table too short");
            if let Some(t) = cfg.long_prefill_threshold {
                assert!(sc.len <= t.max(1));
            }
            if sc.samples {
                let tok = next_token(&seq.tokens);
                result.sampled.push((sc.seq, tok));
                let done = seq.num_output_tokens() + 1 >= want[&sc.seq];
                if done {
                    let mut out = seq.output().to_vec();
                    out.push(tok);
                    outputs.insert(sc.seq, out);
                    result.finished.push((sc.seq, FinishReason::Length));
                }
            }
        }
        s.update(&result).unwrap();
        s.block_manager().check_invariants().unwrap();
        step += 1;
    }
    let st = s.kv_stats();
    assert_eq!(st.device.used_blocks, 0, "pages leaked");
    assert_eq!(st.host.used_blocks, 0, "host pages leaked");
    run.steps = step;
    run.preemptions = s.counters().preemptions;
    run.outputs = outputs;
    run
}

pub fn req(id: u64, prompt_len: usize, max_tokens: usize, arrival: f64) -> Request {
    let prompt = (0..prompt_len as u32)
        .map(|i| (i * 7 + id as u32) % 500)
        .collect();
    let mut r = Request::new(id, prompt, max_tokens);
    r.arrival_s = arrival;
    r
}
