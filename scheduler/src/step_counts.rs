//! The shape of one step as the cost model sees it (`StepCounts`), taken from a `StepPlan`:
//! the engine logs it per step, the calibration fits the cost model to it, and the simulator
//! costs its own steps by it, so all three agree on what a step's shape is.

use crate::plan::StepPlan;
use crate::sim::CostModel;

/// The quantities of a step the cost model is linear in (taken from a real plan by
/// [`StepCounts::of`], or from a designed step shape in the calibration tool).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepCounts {
    pub prefill_tokens: usize,
    pub decode_seqs: usize,
    pub context_tokens: usize,
    pub prefill_pairs: usize,
}

impl StepCounts {
    /// The counts of a scheduled step, as `CostModel::step_time` reads them.
    pub fn of(plan: &StepPlan) -> Self {
        StepCounts {
            prefill_tokens: plan.num_prefill_tokens(),
            decode_seqs: plan.num_decode_seqs(),
            context_tokens: plan.num_context_tokens(),
            prefill_pairs: plan.num_prefill_attention_pairs(),
        }
    }

    /// What `model` says a step with these counts takes (no swapping).
    pub fn predicted_s(&self, model: &CostModel) -> f64 {
        model.compute_time(
            self.prefill_tokens,
            self.decode_seqs,
            self.context_tokens,
            self.prefill_pairs,
        )
    }

    /// The cost model's features for a knee of `knee` rows: [1, above, rows if at or below
    /// the knee, prefill tokens if above, decoding sequences if above, context tokens
    /// attended, prefill attention pairs].
    pub fn features(&self, knee: usize) -> Vec<f64> {
        let rows = self.prefill_tokens + self.decode_seqs;
        let above = if rows > knee { 1.0 } else { 0.0 };
        vec![
            1.0,
            above,
            (1.0 - above) * rows as f64,
            above * self.prefill_tokens as f64,
            above * self.decode_seqs as f64,
            self.context_tokens as f64,
            self.prefill_pairs as f64,
        ]
    }
}
