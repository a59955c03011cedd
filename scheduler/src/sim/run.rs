//! The simulation loop: arrivals, schedule, advance the clock by the step's cost, record.

use block_manager::KvStats;
use serde::Serialize;

use super::cost_model::CostModel;
use super::error::SimError;
use super::metrics::{RequestRecord, Slo, Summary};
use super::replica::{Observer, Replica, ReplicaConfig};
use super::workload::{prompt_tokens, SimRequest};
use crate::SchedulerConfig;

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

impl SimConfig {
    /// How each simulated engine is built.
    pub fn replica(&self) -> ReplicaConfig {
        ReplicaConfig {
            scheduler: self.scheduler.clone(),
            policy: self.policy.clone(),
            block_size: self.block_size,
            num_blocks: self.num_blocks,
            num_host_blocks: self.num_host_blocks,
            watermark: self.watermark,
            enable_prefix_caching: self.enable_prefix_caching,
            cost_model: self.cost_model.clone(),
        }
    }
}

/// Every request's record and every inter-token latency, as the single-replica report wants.
struct Records {
    records: Vec<RequestRecord>,
    itls: Vec<f64>,
    done: usize,
}

impl Observer for Records {
    fn scheduled(&mut self, req: u64, start: f64) {
        self.records[req as usize]
            .first_scheduled_s
            .get_or_insert(start);
    }
    fn token(&mut self, req: u64, t: f64, first: bool, itl: Option<f64>) {
        let r = &mut self.records[req as usize];
        if first {
            r.first_token_s = Some(t);
        }
        if let Some(d) = itl {
            self.itls.push(d);
        }
        r.output_len += 1;
    }
    fn extra_tokens(&mut self, req: u64, k: usize) {
        self.records[req as usize].output_len += k;
    }
    fn finished(&mut self, req: u64, t: f64) {
        self.records[req as usize].finish_s = Some(t);
        self.done += 1;
    }
    fn preempted(&mut self, req: u64) {
        self.records[req as usize].preemptions += 1;
    }
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
    let nreq = requests.len();
    let mut rep = Replica::new(&cfg.replica(), nreq as u64)?;
    let mut rec = Records {
        records: requests
            .iter()
            .enumerate()
            .map(|(i, r)| RequestRecord::new(i as u64, r))
            .collect(),
        itls: Vec::new(),
        done: 0,
    };
    let mut series = Vec::new();
    let (mut now, mut next) = (0.0f64, 0usize);
    let (mut usage_sum, mut usage_peak, mut usage_time) = (0.0f64, 0.0f64, 0.0f64);
    loop {
        while next < nreq && requests[next].arrival_s <= now {
            let r = &requests[next];
            let prompt = prompt_tokens(r, next as u64, cfg.shared_prefix_len);
            if let Err(e) = rep.add(
                next as u64,
                r.arrival_s,
                prompt,
                r.output_len,
                r.n,
                r.priority,
            ) {
                rec.records[next].rejected = Some(e.to_string());
                rec.done += 1;
            }
            next += 1;
        }
        if !rep.scheduler().has_unfinished() {
            if next == nreq {
                break;
            }
            now = now.max(requests[next].arrival_s);
            continue;
        }
        let Some(dt) = rep.begin_step(now)? else {
            if next == nreq {
                return Err(SimError::Stalled {
                    at_s: now,
                    why: format!(
                        "{} waiting requests cannot be admitted",
                        rep.scheduler().num_waiting()
                    ),
                });
            }
            now = requests[next].arrival_s;
            continue;
        };
        now += dt;
        let sched = rep.scheduler();
        observe(&StepView {
            now_s: now,
            dt_s: dt,
            kv: sched.kv_stats(),
            running: sched.num_running(),
            waiting: sched.num_waiting(),
        });
        let step_tokens = rep.pending_plan().map_or(0, |p| p.num_tokens());
        if rep.finish_step(&mut rec)? {
            progress(rec.done);
        }
        let sched = rep.scheduler();
        let kv = sched.kv_stats();
        usage_sum += kv.usage() * dt;
        usage_time += dt;
        usage_peak = usage_peak.max(kv.usage());
        if (rep.steps() as usize).is_multiple_of(cfg.series_every.max(1)) {
            series.push(TimePoint {
                t_s: now,
                running: sched.num_running(),
                waiting: sched.num_waiting(),
                swapped: sched.num_swapped(),
                step_tokens,
                kv_usage: kv.usage(),
                kv_internal_fragmentation: kv.internal_fragmentation(),
                kv_shared_tokens: kv.shared_tokens(),
                kv_cached_free_blocks: kv.device.cached_free_blocks,
            });
        }
    }
    let Records {
        records,
        mut itls,
        done,
    } = rec;
    let sched = rep.scheduler();
    let step_no = rep.steps();
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
