//! The simulation loop: arrivals, schedule, advance the clock by the step's cost, record.

use block_manager::{BlockManager, BlockManagerConfig, KvStats};
use serde::Serialize;

use super::cost_model::CostModel;
use super::error::SimError;
use super::metrics::{RequestRecord, Slo, Summary};
use super::workload::{prompt_tokens, SimRequest};
use crate::{policy, FinishReason, Request, Scheduler, SchedulerConfig, StepResult};

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub scheduler: SchedulerConfig,
    pub policy: String,
    pub block_size: usize,
    pub num_blocks: usize,
    pub num_host_blocks: usize,
    pub watermark: f64,
    pub enable_prefix_caching: bool,
    pub cost_model: CostModel,
    /// Length of the shared system prompt of requests that have a `prefix_group`.
    pub shared_prefix_len: usize,
    pub slo: Slo,
    /// Keep one time-series point every this many steps (1 = every step).
    pub series_every: usize,
}

/// The state of the system after one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimePoint {
    pub t_s: f64,
    pub running: usize,
    pub waiting: usize,
    pub swapped: usize,
    pub step_tokens: usize,
    pub kv_usage: f64,
    pub kv_internal_fragmentation: f64,
    pub kv_shared_tokens: usize,
    pub kv_cached_free_blocks: usize,
}

/// Everything a simulation produced.
#[derive(Debug, Clone, Serialize)]
pub struct SimResult {
    pub policy: String,
    pub cost_model: String,
    pub requests: usize,
    pub completed: usize,
    pub rejected: usize,
    pub duration_s: f64,
    pub steps: u64,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub total_token_throughput: f64,
    pub goodput: Option<f64>,
    pub preemptions: u64,
    pub swaps_out: u64,
    pub prefix_hit_rate: f64,
    pub peak_kv_usage: f64,
    pub mean_kv_usage: f64,
    pub ttft_s: Summary,
    pub tpot_s: Summary,
    pub itl_s: Summary,
    pub e2e_s: Summary,
    pub queue_s: Summary,
    #[serde(skip)]
    pub records: Vec<RequestRecord>,
    #[serde(skip)]
    pub series: Vec<TimePoint>,
    /// Every inter-token latency, sorted (kept for CDF plots).
    #[serde(skip)]
    pub itls: Vec<f64>,
}

/// The KV cache during one step, as [`simulate_observed`] shows it to its observer: pages for
/// the step's tokens are allocated and counted as filled, nothing has finished yet.
#[derive(Debug, Clone, Copy)]
pub struct StepView {
    /// When the step ends.
    pub now_s: f64,
    /// How long it takes.
    pub dt_s: f64,
    pub kv: KvStats,
    /// Sequences running in this step.
    pub running: usize,
    pub waiting: usize,
}

/// Runs `requests` (sorted by arrival) through the scheduler on a virtual clock.
/// `progress` is called with the number of finished requests now and then.
pub fn simulate(
    cfg: &SimConfig,
    requests: &[SimRequest],
    progress: &mut dyn FnMut(usize),
) -> Result<SimResult, SimError> {
    simulate_observed(cfg, requests, progress, &mut |_| {})
}

/// [`simulate`], calling `observe` once per step with the cache as the step sees it (the
/// fragmentation study's view of memory).
pub fn simulate_observed(
    cfg: &SimConfig,
    requests: &[SimRequest],
    progress: &mut dyn FnMut(usize),
    observe: &mut dyn FnMut(&StepView),
) -> Result<SimResult, SimError> {
    let bm_cfg = BlockManagerConfig::new(cfg.block_size, cfg.num_blocks)
        .with_host_blocks(cfg.num_host_blocks)
        .with_watermark(cfg.watermark)
        .with_prefix_caching(cfg.enable_prefix_caching);
    let bm = BlockManager::new(bm_cfg)?;
    let pol = policy::by_name(&cfg.policy).ok_or_else(|| {
        SimError::Config(format!(
            "unknown policy '{}' (one of {})",
            cfg.policy,
            policy::POLICY_NAMES.join(", ")
        ))
    })?;
    // `auto` preemption weighs recompute against swap with the same cost model as the steps.
    let mut sched_cfg = cfg.scheduler.clone();
    sched_cfg.preemption_costs = crate::PreemptionCosts {
        recompute_s_per_token: cfg.cost_model.per_prefill_token_s,
        swap_s_per_block: 2.0
            * cfg.block_size as f64
            * cfg.cost_model.kv_bytes_per_token
            * cfg.cost_model.per_swap_byte_s,
    };
    let mut sched = Scheduler::new(sched_cfg, bm, pol)?;
    let mut records: Vec<RequestRecord> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| RequestRecord::new(i as u64, r))
        .collect();
    let mut itls: Vec<f64> = Vec::new();
    let nreq = requests.len();
    // Per sequence (requests first, then forked children): tokens made and when the last was.
    let mut seq_out: Vec<usize> = vec![0; nreq];
    let mut last_token: Vec<f64> = vec![0.0; nreq];
    // The request each forked child belongs to, and live sequences per request.
    let mut child_owner: Vec<usize> = Vec::new();
    let mut live: Vec<usize> = vec![1; nreq];
    let owner = |id: usize, child_owner: &[usize]| {
        if id < nreq {
            id
        } else {
            child_owner[id - nreq]
        }
    };
    let mut series = Vec::new();
    let (mut now, mut next, mut done) = (0.0f64, 0usize, 0usize);
    let (mut usage_sum, mut usage_peak, mut usage_time) = (0.0f64, 0.0f64, 0.0f64);
    let mut step_no: u64 = 0;
    loop {
        while next < requests.len() && requests[next].arrival_s <= now {
            let r = &requests[next];
            let mut req = Request::new(
                next as u64,
                prompt_tokens(r, next as u64, cfg.shared_prefix_len),
                r.output_len,
            );
            req.arrival_s = r.arrival_s;
            req.priority = r.priority;
            if let Err(e) = sched.add_request(req) {
                records[next].rejected = Some(e.to_string());
                done += 1;
            }
            next += 1;
        }
        if !sched.has_unfinished() {
            if next == requests.len() {
                break;
            }
            now = now.max(requests[next].arrival_s);
            continue;
        }
        let plan = sched.schedule(now)?;
        if plan.is_empty() {
            if next == requests.len() {
                return Err(SimError::Stalled {
                    at_s: now,
                    why: format!(
                        "{} waiting requests cannot be admitted",
                        sched.num_waiting()
                    ),
                });
            }
            now = requests[next].arrival_s;
            continue;
        }
        let dt = cfg.cost_model.step_time(&plan, cfg.block_size);
        now += dt;
        step_no += 1;
        observe(&StepView {
            now_s: now,
            dt_s: dt,
            kv: sched.kv_stats(),
            running: sched.num_running(),
            waiting: sched.num_waiting(),
        });
        let mut result = StepResult::default();
        let mut forks: Vec<usize> = Vec::new();
        for sc in &plan.seqs {
            let id = sc.seq as usize;
            let ri = owner(id, &child_owner);
            let rec = &mut records[ri];
            rec.first_scheduled_s.get_or_insert(now - dt);
            if !sc.samples {
                continue;
            }
            if rec.first_token_s.is_none() {
                rec.first_token_s = Some(now);
            } else if seq_out[id] > 0 {
                itls.push(now - last_token[id]);
            }
            last_token[id] = now;
            seq_out[id] += 1;
            rec.output_len += 1;
            result.sampled.push((sc.seq, 1 + (sc.seq % 1000) as u32));
            let want = requests[ri].output_len;
            if id < nreq && seq_out[id] == 1 && rec.n > 1 {
                if want == 1 {
                    // Every sample is done with its only token: nothing to fork.
                    rec.output_len += rec.n - 1;
                } else {
                    forks.push(id);
                }
            }
            if seq_out[id] >= want {
                result.finished.push((sc.seq, FinishReason::Length));
                live[ri] -= 1;
                if live[ri] == 0 {
                    rec.finish_s = Some(now);
                    done += 1;
                }
            }
        }
        for &id in &plan.preempted {
            records[owner(id as usize, &child_owner)].preemptions += 1;
        }
        sched.update(&result)?;
        for parent in forks {
            for _ in 1..records[parent].n {
                let child = nreq + child_owner.len();
                sched.fork(parent as u64, child as u64, 1 + (child % 1000) as u32)?;
                child_owner.push(parent);
                seq_out.push(1);
                last_token.push(now);
                records[parent].output_len += 1;
                live[parent] += 1;
            }
        }
        if !result.finished.is_empty() {
            progress(done);
        }
        let kv = sched.kv_stats();
        usage_sum += kv.usage() * dt;
        usage_time += dt;
        usage_peak = usage_peak.max(kv.usage());
        if (step_no as usize).is_multiple_of(cfg.series_every.max(1)) {
            series.push(TimePoint {
                t_s: now,
                running: sched.num_running(),
                waiting: sched.num_waiting(),
                swapped: sched.num_swapped(),
                step_tokens: plan.num_tokens(),
                kv_usage: kv.usage(),
                kv_internal_fragmentation: kv.internal_fragmentation(),
                kv_shared_tokens: kv.shared_tokens(),
                kv_cached_free_blocks: kv.device.cached_free_blocks,
            });
        }
    }
    progress(done);
    let counters = sched.counters();
    let kv = sched.kv_stats();
    let completed: Vec<&RequestRecord> = records.iter().filter(|r| r.finish_s.is_some()).collect();
    let collect = |f: &dyn Fn(&RequestRecord) -> Option<f64>| -> Vec<f64> {
        completed.iter().filter_map(|r| f(r)).collect()
    };
    let out_tokens: usize = records.iter().map(|r| r.output_len).sum();
    let in_tokens: usize = completed.iter().map(|r| r.prompt_len).sum();
    let duration = now.max(f64::MIN_POSITIVE);
    let goodput = cfg
        .slo
        .is_set()
        .then(|| completed.iter().filter(|r| cfg.slo.met(r)).count() as f64 / duration);
    let itl_s = Summary::of(&mut itls);
    let result = SimResult {
        policy: cfg.policy.clone(),
        cost_model: cfg.cost_model.name.clone(),
        requests: requests.len(),
        completed: completed.len(),
        rejected: records.iter().filter(|r| r.rejected.is_some()).count(),
        duration_s: now,
        steps: step_no,
        request_throughput: completed.len() as f64 / duration,
        output_token_throughput: out_tokens as f64 / duration,
        total_token_throughput: (out_tokens + in_tokens) as f64 / duration,
        goodput,
        preemptions: counters.preemptions,
        swaps_out: counters.swaps_out,
        prefix_hit_rate: kv.prefix_hit_rate(),
        peak_kv_usage: usage_peak,
        mean_kv_usage: if usage_time > 0.0 {
            usage_sum / usage_time
        } else {
            0.0
        },
        ttft_s: Summary::of(&mut collect(&|r| r.ttft())),
        tpot_s: Summary::of(&mut collect(&|r| r.tpot())),
        itl_s,
        e2e_s: Summary::of(&mut collect(&|r| r.e2e())),
        queue_s: Summary::of(&mut collect(&|r| r.queue())),
        records,
        series,
        itls,
    };
    Ok(result)
}
