//! Errors of the simulator and its inputs (workload specs, traces, cost models, SLOs).

use crate::SchedulerError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SimError {
    /// A length distribution, SLO or arrival process that does not parse or is out of range.
    #[error("{0}")]
    BadSpec(String),
    /// A trace line or request that does not parse or is out of range; names where.
    #[error("{source_name}: {problem}")]
    BadTrace {
        source_name: String,
        problem: String,
    },
    /// A cost model that is no preset and no valid JSON document.
    #[error("cost model {name}: {problem}")]
    BadCostModel { name: String, problem: String },
    /// A simulation configuration the scheduler or block manager refuses.
    #[error("invalid simulation configuration: {0}")]
    Config(String),
    /// Requests are waiting but nothing can ever be admitted.
    #[error("stalled at t={at_s:.3}s: {why}")]
    Stalled { at_s: f64, why: String },
    #[error(transparent)]
    Scheduler(#[from] SchedulerError),
    #[error(transparent)]
    Block(#[from] block_manager::BlockError),
}
