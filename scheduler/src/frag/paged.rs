//! The paged allocator: the real block manager and scheduler, through the simulator.

use super::breakdown::Breakdown;
use super::{FragConfig, Moment, Outcome};
use crate::sim::{simulate_observed, SimConfig, SimError, SimRequest, Slo};
use crate::{PreemptionMode, SchedulerConfig};
use block_manager::KvStats;

/// Replays `requests` through the block manager with pages of `block_size` tokens.
pub fn run(
    cfg: &FragConfig,
    block_size: usize,
    sharing: bool,
    requests: &[SimRequest],
    progress: &mut dyn FnMut(usize),
    observe: &mut dyn FnMut(&Moment),
) -> Result<Outcome, SimError> {
    let num_blocks = cfg.budget_tokens / block_size;
    let sim = SimConfig {
        scheduler: SchedulerConfig {
            max_num_batched_tokens: cfg.max_num_batched_tokens,
            max_num_seqs: cfg.max_num_seqs,
            enable_chunked_prefill: cfg.enable_chunked_prefill,
            preemption_mode: PreemptionMode::Recompute,
            max_model_len: Some(cfg.max_model_len),
            ..SchedulerConfig::default()
        },
        policy: "fcfs".into(),
        block_size,
        num_blocks,
        num_host_blocks: 0,
        watermark: cfg.watermark,
        enable_prefix_caching: sharing,
        cost_model: cfg.cost_model.clone(),
        shared_prefix_len: cfg.shared_prefix_len,
        slo: Slo::default(),
        series_every: usize::MAX,
    };
    let mut max_concurrency = 0;
    let res = simulate_observed(&sim, requests, progress, &mut |v| {
        max_concurrency = max_concurrency.max(v.running);
        observe(&Moment {
            t_s: v.now_s,
            dt_s: v.dt_s,
            breakdown: breakdown(&v.kv, cfg.budget_tokens),
        });
    })?;
    Ok(Outcome {
        records: res.records,
        duration_s: res.duration_s,
        max_concurrency,
        preemptions: res.preemptions,
    })
}

/// The budget's partition from the block manager's statistics. Free pages that still hold
/// a cached prefix count as free: they are reclaimed on demand.
pub fn breakdown(kv: &KvStats, budget_tokens: usize) -> Breakdown {
    let pool_slots = kv.device.total_blocks * kv.block_size;
    Breakdown {
        useful: kv.filled_slots,
        reserved: 0,
        internal: kv.internal_fragmentation_slots(),
        external: budget_tokens - pool_slots,
        free: pool_slots - kv.allocated_slots,
        shared: kv.shared_tokens(),
    }
}
