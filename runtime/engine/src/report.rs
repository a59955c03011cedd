//! What one engine step did: the tokens it produced, the shape of the work, how long it took
//! and how long the requests it first scheduled had waited. The step log and the server's
//! metrics are written from it, so neither reaches into the engine's state.

use scheduler::StepCounts;

use crate::TokenOutput;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepReport {
    /// One entry per token produced, in plan order.
    pub outputs: Vec<TokenOutput>,
    /// The step's shape as the cost model sees it (`None`: nothing was scheduled).
    pub counts: Option<StepCounts>,
    /// Tokens computed (prefill chunks plus decodes).
    pub num_tokens: usize,
    /// Seconds each request scheduled for the first time in this step had waited.
    pub queue_times_s: Vec<f64>,
    /// Schedule to outputs, in seconds.
    pub seconds: f64,
    /// Structured-output masks computed for this step (one per constrained sampling row).
    pub masks: usize,
    /// Seconds the mask helper spent on them (alongside the forward pass).
    pub mask_seconds: f64,
    /// Seconds sampling waited for the masks after the forward had finished (the part of
    /// the mask time that was on the step's critical path).
    pub mask_wait_seconds: f64,
}

impl StepReport {
    /// The step as one JSON line of the step log (`--step-log`): the [`StepCounts`] fields
    /// and `seconds`, as `pagedrt bench calibrate --from-steps` reads it. `None` for a step
    /// that scheduled nothing.
    pub fn log_line(&self) -> Option<String> {
        let c = self.counts?;
        Some(
            serde_json::json!({
                "prefill_tokens": c.prefill_tokens, "decode_seqs": c.decode_seqs,
                "context_tokens": c.context_tokens, "prefill_pairs": c.prefill_pairs,
                "seconds": self.seconds,
            })
            .to_string(),
        )
    }
}
