//! Fitting the simulator's cost model to measured engine steps (`pagedrt bench calibrate`).
//!
//! The cost model is linear in seven features of a step (see `scheduler::sim::CostModel`):
//! a constant; for steps above the small-batch knee, a constant (the switch to blocked
//! GEMMs), prefill tokens and decoding sequences; for steps at or below it, rows; and for
//! all, context tokens attended and prefill attention pairs. Where the knee lies depends on
//! the kernels (where weight streaming stops bounding a GEMM), so it is chosen from the
//! data ([`choose_knee`]: leave-one-out prediction error) rather than taken from a kernel
//! constant that goes stale when the kernels change. The design below varies the features
//! independently (prefill-only steps of several sizes, decode-only steps over a grid of
//! batch sizes and context lengths, and mixed steps), so the fit can tell them apart.

use scheduler::sim::CostModel;
pub use scheduler::StepCounts;
use serde::Serialize;

use crate::error::ToolError;
use crate::fit::{fit_relative, Fit};

/// The shape of one step: `decodes` sequences adding one token to `context` cached ones,
/// plus one prefill chunk of `prefill` tokens from position 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StepShape {
    pub decodes: usize,
    pub context: usize,
    pub prefill: usize,
}

impl StepShape {
    /// What the cost model sees of this shape: a decode reads its `context` cached tokens
    /// and itself; a chunk of n tokens from position 0 attends n(n+1)/2 pairs.
    pub fn counts(&self) -> StepCounts {
        let n = self.prefill;
        StepCounts {
            prefill_tokens: n,
            decode_seqs: self.decodes,
            context_tokens: self.decodes * (self.context + 1) + n,
            prefill_pairs: n * (n + 1) / 2,
        }
    }
}

/// Reads a step log (`pagedrt serve --step-log`): one JSON object per line with the
/// [`StepCounts`] fields and `seconds`.
pub fn read_step_log(text: &str) -> Result<Vec<(StepCounts, f64)>, ToolError> {
    #[derive(serde::Deserialize)]
    struct Line {
        #[serde(flatten)]
        counts: StepCounts,
        seconds: f64,
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let x: Line = serde_json::from_str(l)
                .map_err(|e| ToolError::Input(format!("step log line {}: {e}", i + 1)))?;
            Ok((x.counts, x.seconds))
        })
        .collect()
}

/// Reads the step log at `path` ([`read_step_log`]), errors naming the file.
pub fn load_step_log(path: &std::path::Path) -> Result<Vec<(StepCounts, f64)>, ToolError> {
    let text = std::fs::read_to_string(path).map_err(|e| ToolError::io(path, e))?;
    read_step_log(&text).map_err(|e| ToolError::Input(format!("{}: {e}", path.display())))
}

/// The designed set of step shapes.
pub fn design() -> Vec<StepShape> {
    let mut v = Vec::new();
    for prefill in [4, 8, 16, 64, 256, 512, 1024, 2048] {
        v.push(StepShape {
            decodes: 0,
            context: 0,
            prefill,
        });
    }
    for decodes in [1, 2, 4, 8, 12, 16, 64] {
        for context in [64, 512, 2048] {
            v.push(StepShape {
                decodes,
                context,
                prefill: 0,
            });
        }
    }
    for (decodes, context, prefill) in [
        (2, 256, 4),
        (8, 256, 256),
        (32, 128, 512),
        (4, 1024, 128),
        (3, 128, 64),
    ] {
        v.push(StepShape {
            decodes,
            context,
            prefill,
        });
    }
    v
}

const FEATURES: usize = 7;

/// Fits `base`'s seven step coefficients to `(shape, seconds)` samples, with the small-batch
/// law below `knee` rows (0: none). A coefficient the data would make negative is fixed at 0
/// and the rest refitted (a step never gets cheaper with more work). Returns the model and
/// the fit (over all seven features).
pub fn fit_cost_model(
    samples: &[(StepCounts, f64)],
    base: &CostModel,
    knee: usize,
) -> Result<(CostModel, Fit), ToolError> {
    // Without a knee every step is "above": the constant and the rows feature drop out.
    let mut active = [true, knee > 0, knee > 0, true, true, true, true];
    loop {
        let idx: Vec<usize> = (0..FEATURES).filter(|&j| active[j]).collect();
        let rows: Vec<Vec<f64>> = samples
            .iter()
            .map(|(s, _)| {
                let f = s.features(knee);
                idx.iter().map(|&j| f[j]).collect()
            })
            .collect();
        let y: Vec<f64> = samples.iter().map(|x| x.1).collect();
        let fit = fit_relative(&rows, &y)?;
        if let Some(k) = fit.coef.iter().position(|&c| c < 0.0) {
            active[idx[k]] = false;
            continue;
        }
        let mut coef = [0.0; FEATURES];
        for (k, &j) in idx.iter().enumerate() {
            coef[j] = fit.coef[k];
        }
        let model = CostModel {
            step_overhead_s: coef[0],
            gemm_switch_s: coef[1],
            small_batch_per_row_s: coef[2],
            small_batch_rows: knee,
            per_prefill_token_s: coef[3],
            per_decode_seq_s: coef[4],
            per_context_token_s: coef[5],
            per_prefill_attention_pair_s: coef[6],
            ..base.clone()
        };
        let full = Fit {
            coef: coef.to_vec(),
            ..fit
        };
        return Ok((model, full));
    }
}

/// The knee whose model best predicts steps it was not fitted to: for each candidate (no
/// knee, and every row count the samples have up to 64), the RMS relative error of
/// leave-one-out predictions. Knees between two sampled row counts fit identically, so
/// only sampled counts are tried. Returns the knee and its cross-validated error.
pub fn choose_knee(
    samples: &[(StepCounts, f64)],
    base: &CostModel,
) -> Result<(usize, f64), ToolError> {
    let mut candidates: Vec<usize> = samples
        .iter()
        .map(|(c, _)| c.prefill_tokens + c.decode_seqs)
        .filter(|&r| r <= 64)
        .collect();
    candidates.push(0);
    candidates.sort_unstable();
    candidates.dedup();
    let mut best: Option<(usize, f64)> = None;
    for knee in candidates {
        let Some(err) = loo_error(samples, base, knee) else {
            continue;
        };
        if best.is_none_or(|(_, e)| err < e) {
            best = Some((knee, err));
        }
    }
    best.ok_or_else(|| {
        ToolError::Fit("no knee gives a model that can be fitted to these steps".into())
    })
}

/// RMS relative error of leave-one-out predictions with this knee; `None` if some fold
/// cannot be fitted (too few steps on one side of the knee).
fn loo_error(samples: &[(StepCounts, f64)], base: &CostModel, knee: usize) -> Option<f64> {
    let mut sq = 0.0;
    for i in 0..samples.len() {
        let rest: Vec<(StepCounts, f64)> = samples
            .iter()
            .enumerate()
            .filter(|&(j, _)| j != i)
            .map(|(_, s)| *s)
            .collect();
        let (_, fit) = fit_cost_model(&rest, base, knee).ok()?;
        let (c, y) = samples[i];
        let rel = (fit.predict(&c.features(knee)) - y) / y;
        if !rel.is_finite() {
            return None;
        }
        sq += rel * rel;
    }
    Some((sq / samples.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;
    use scheduler::{ScheduledSeq, StepPlan};

    /// The plan the simulator would cost for a shape (built independently of `features`).
    fn plan_of(s: &StepShape) -> StepPlan {
        let seq = |start, len| ScheduledSeq {
            seq: 0,
            start,
            len,
            samples: true,
            table_offset: 0,
            table_len: 0,
        };
        let mut p = StepPlan::default();
        p.seqs.extend((0..s.decodes).map(|_| seq(s.context, 1)));
        if s.prefill > 0 {
            p.seqs.push(seq(0, s.prefill));
        }
        p
    }

    /// The known model the synthetic timings come from, with its knee at `knee` rows.
    fn truth(knee: usize) -> CostModel {
        CostModel {
            name: "truth".into(),
            step_overhead_s: 0.02,
            per_prefill_token_s: 2e-3,
            per_decode_seq_s: 1.5e-3,
            per_context_token_s: 2e-6,
            per_prefill_attention_pair_s: 3e-8,
            small_batch_rows: knee,
            small_batch_per_row_s: 4e-4,
            gemm_switch_s: 0.01,
            per_swap_byte_s: 1e-10,
            kv_bytes_per_token: 46080.0,
            kv_capacity_tokens: Some(1000),
        }
    }

    #[test]
    fn calibration_recovers_known_coefficients_from_synthetic_timings() {
        let truth = truth(8);
        let samples: Vec<(StepCounts, f64)> = design()
            .into_iter()
            .map(|s| (s.counts(), truth.step_time(&plan_of(&s), 16)))
            .collect();
        let (got, fit) = fit_cost_model(&samples, &CostModel::constant(0.0), 8).unwrap();
        assert_eq!(got.small_batch_rows, 8);
        let pairs = [
            (got.gemm_switch_s, truth.gemm_switch_s),
            (got.small_batch_per_row_s, truth.small_batch_per_row_s),
            (got.step_overhead_s, truth.step_overhead_s),
            (got.per_prefill_token_s, truth.per_prefill_token_s),
            (got.per_decode_seq_s, truth.per_decode_seq_s),
            (got.per_context_token_s, truth.per_context_token_s),
            (
                got.per_prefill_attention_pair_s,
                truth.per_prefill_attention_pair_s,
            ),
        ];
        for (g, w) in pairs {
            assert!((g - w).abs() <= 1e-6 * w, "{g} vs {w}");
        }
        assert!(fit.max_rel_residual < 1e-9);
        // With ±5 % noise the fit still lands near the truth and reports the noise.
        let noisy: Vec<(StepCounts, f64)> = samples
            .iter()
            .enumerate()
            .map(|(i, (s, y))| (*s, y * if i % 2 == 0 { 1.05 } else { 0.95 }))
            .collect();
        let (got, fit) = fit_cost_model(&noisy, &CostModel::constant(0.0), 8).unwrap();
        assert!((got.per_decode_seq_s / truth.per_decode_seq_s - 1.0).abs() < 0.25);
        assert!(fit.rms_rel_residual > 0.01 && fit.rms_rel_residual < 0.06);
    }

    #[test]
    fn the_knee_is_found_from_the_timings() {
        for true_knee in [0, 4, 12] {
            let truth = truth(true_knee);
            // ±3 % noise, so the exact model does not simply fit every point.
            let samples: Vec<(StepCounts, f64)> = design()
                .into_iter()
                .enumerate()
                .map(|(i, s)| {
                    let y = truth.step_time(&plan_of(&s), 16);
                    (s.counts(), y * [1.03, 0.97, 1.0][i % 3])
                })
                .collect();
            let (knee, err) = choose_knee(&samples, &CostModel::constant(0.0)).unwrap();
            assert_eq!(knee, true_knee, "cross-validated error {err}");
            assert!(err < 0.06, "{err}");
        }
    }

    #[test]
    fn counts_of_a_plan_match_the_shape_and_a_step_log_reads_back() {
        for s in design() {
            assert_eq!(StepCounts::of(&plan_of(&s)), s.counts(), "{s:?}");
        }
        let c = design()[3].counts();
        let line = serde_json::json!({"prefill_tokens": c.prefill_tokens,
            "decode_seqs": c.decode_seqs, "context_tokens": c.context_tokens,
            "prefill_pairs": c.prefill_pairs, "seconds": 0.25});
        let log = format!("{line}\n\n{line}\n");
        assert_eq!(read_step_log(&log).unwrap(), vec![(c, 0.25), (c, 0.25)]);
        let err = read_step_log("{\"seconds\": 1}").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }
}
