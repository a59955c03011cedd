//! Scheduler limits and preemption settings.

use crate::error::SchedulerError;

/// What happens to a running sequence chosen as a preemption victim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreemptionMode {
    /// Free its pages; it re-prefills later (its full pages stay in the prefix cache, so the
    /// re-prefill mostly hits).
    Recompute,
    /// Copy its pages to the host pool; falls back to recompute when the host pool is full.
    Swap,
    /// Per victim, whichever [`PreemptionCosts`] says is cheaper.
    Auto,
}

impl std::str::FromStr for PreemptionMode {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, SchedulerError> {
        match s {
            "recompute" => Ok(Self::Recompute),
            "swap" => Ok(Self::Swap),
            "auto" => Ok(Self::Auto),
            _ => Err(SchedulerError::InvalidConfig(format!(
                "unknown preemption mode '{s}' (recompute, swap, auto)"
            ))),
        }
    }
}

/// The cost model behind [`PreemptionMode::Auto`]: recomputing costs time per token to
/// re-prefill; swapping costs time per page moved, out and back in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PreemptionCosts {
    pub recompute_s_per_token: f64,
    pub swap_s_per_block: f64,
}

impl Default for PreemptionCosts {
    /// An 8B model on one H100 with 16-token pages: ~20 µs of GEMM per prefill token;
    /// a 2 MiB page over ~25 GB/s PCIe, twice (out and in).
    fn default() -> Self {
        PreemptionCosts {
            recompute_s_per_token: 20e-6,
            swap_s_per_block: 2.0 * 2.0 * 1048576.0 / 25e9,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Token budget of one step (prefill chunks + decodes).
    pub max_num_batched_tokens: usize,
    /// Sequences in one step.
    pub max_num_seqs: usize,
    /// Caps one sequence's prefill chunk, so one long prompt cannot starve decodes.
    pub long_prefill_threshold: Option<usize>,
    /// Split prompts that do not fit the remaining budget into chunks.
    pub enable_chunked_prefill: bool,
    pub preemption_mode: PreemptionMode,
    pub preemption_costs: PreemptionCosts,
    /// Longest prompt + output accepted.
    pub max_model_len: Option<usize>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            long_prefill_threshold: None,
            enable_chunked_prefill: true,
            preemption_mode: PreemptionMode::Recompute,
            preemption_costs: PreemptionCosts::default(),
            max_model_len: None,
        }
    }
}

impl SchedulerConfig {
    pub(crate) fn validate(&self) -> Result<(), SchedulerError> {
        if self.max_num_batched_tokens == 0 || self.max_num_seqs == 0 {
            return Err(SchedulerError::InvalidConfig(
                "max_num_batched_tokens and max_num_seqs must be positive".into(),
            ));
        }
        if self.long_prefill_threshold == Some(0) {
            return Err(SchedulerError::InvalidConfig(
                "long_prefill_threshold must be positive".into(),
            ));
        }
        Ok(())
    }
}
