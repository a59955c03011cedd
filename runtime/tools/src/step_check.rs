//! How well a cost model predicts a step log (`pagedrt bench check-steps`).
//!
//! Why: a simulator run is only as good as its cost model, and on a shared machine the
//! machine itself changes speed. Costing every step a server actually ran (`pagedrt serve
//! --step-log`) with the model separates the two kinds of error. If the measured/predicted
//! ratio is the same in every class of step, the model's shape is right and the machine
//! ran that much slower or faster (a drift: `pagedrt simulate --cost-scale RATIO` replays
//! the workload at the speed the machine actually had); if the classes disagree, the
//! model's shape is wrong for that mix of steps.

use scheduler::sim::{percentile_sorted, CostModel};
use serde::Serialize;

use crate::error::ToolError;
use scheduler::StepCounts;

/// The class of a step, as a sort key: prefill only, mixed, then decode-only steps by
/// batch size in doublings (1, 2-3, 4-7, ...). Their costs scale differently (prefill with
/// tokens, decode with sequences, and small decode batches with neither).
fn class_key(c: &StepCounts) -> (u8, u32) {
    match (c.prefill_tokens, c.decode_seqs) {
        (_, 0) => (0, 0),
        (0, d) => (2, d.ilog2()),
        _ => (1, 0),
    }
}

/// The name a class is reported under.
fn class_name(key: (u8, u32)) -> String {
    match key {
        (0, _) => "prefill only".into(),
        (1, _) => "mixed".into(),
        (_, 0) => "decode 1".into(),
        (_, log) => format!("decode {}-{}", 1usize << log, (2usize << log) - 1),
    }
}

/// One class of steps: how many, and the median of measured / predicted over them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClassCheck {
    pub class: String,
    pub steps: usize,
    pub median_ratio: f64,
}

/// A step log costed by a model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepCheck {
    pub steps: usize,
    pub measured_s: f64,
    pub predicted_s: f64,
    /// `measured_s / predicted_s`: how much slower (above 1) the machine ran these steps
    /// than the model says, weighted by time.
    pub ratio: f64,
    /// By class, in a fixed order (prefill only, mixed, decode by batch size).
    pub classes: Vec<ClassCheck>,
}

/// Costs every `(counts, seconds)` step with `model`.
pub fn check_steps(
    samples: &[(StepCounts, f64)],
    model: &CostModel,
) -> Result<StepCheck, ToolError> {
    if samples.is_empty() {
        return Err(ToolError::Fit("the step log has no steps".into()));
    }
    let mut by_class: std::collections::BTreeMap<(u8, u32), Vec<f64>> = Default::default();
    let (mut measured, mut predicted) = (0.0, 0.0);
    for (c, s) in samples {
        let p = c.predicted_s(model);
        if p <= 0.0 {
            return Err(ToolError::Fit(format!(
                "the cost model predicts {p} s for a step ({c:?}); it cannot score steps"
            )));
        }
        measured += s;
        predicted += p;
        by_class.entry(class_key(c)).or_default().push(s / p);
    }
    let classes = by_class
        .into_iter()
        .map(|(key, mut ratios)| {
            ratios.sort_by(f64::total_cmp);
            ClassCheck {
                class: class_name(key),
                steps: ratios.len(),
                median_ratio: percentile_sorted(&ratios, 50.0),
            }
        })
        .collect();
    Ok(StepCheck {
        steps: samples.len(),
        measured_s: measured,
        predicted_s: predicted,
        ratio: measured / predicted,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(prefill: usize, decodes: usize, context: usize) -> StepCounts {
        StepCounts {
            prefill_tokens: prefill,
            decode_seqs: decodes,
            context_tokens: context,
            prefill_pairs: prefill * (prefill + 1) / 2,
        }
    }

    #[test]
    fn a_uniformly_slower_machine_shows_the_same_ratio_in_every_class() {
        let model = CostModel::cpu_smollm2_135m();
        let shapes = [
            counts(128, 0, 128),
            counts(0, 1, 300),
            counts(0, 3, 900),
            counts(0, 16, 4000),
            counts(40, 5, 1500),
        ];
        let samples: Vec<_> = shapes
            .iter()
            .map(|c| (*c, 1.25 * c.predicted_s(&model)))
            .collect();
        let r = check_steps(&samples, &model).unwrap();
        assert_eq!(r.steps, 5);
        assert!((r.ratio - 1.25).abs() < 1e-12);
        let names: Vec<&str> = r.classes.iter().map(|c| c.class.as_str()).collect();
        assert_eq!(
            names,
            [
                "prefill only",
                "mixed",
                "decode 1",
                "decode 2-3",
                "decode 16-31"
            ]
        );
        assert!(r
            .classes
            .iter()
            .all(|c| c.steps == 1 && (c.median_ratio - 1.25).abs() < 1e-12));
    }

    #[test]
    fn a_wrong_shape_shows_as_classes_that_disagree() {
        // Decode steps measured twice as slow as predicted, prefill steps as predicted.
        let model = CostModel::cpu_smollm2_135m();
        let p = |c: &StepCounts| c.predicted_s(&model);
        let (a, b, d) = (counts(64, 0, 64), counts(0, 4, 400), counts(0, 5, 500));
        let samples = vec![(a, p(&a)), (b, 2.0 * p(&b)), (d, 2.0 * p(&d))];
        let r = check_steps(&samples, &model).unwrap();
        assert_eq!(r.classes.len(), 2);
        assert_eq!(r.classes[0].median_ratio, 1.0);
        assert_eq!(r.classes[1].class, "decode 4-7");
        assert_eq!(r.classes[1].steps, 2);
        assert!((r.classes[1].median_ratio - 2.0).abs() < 1e-12);
        let want = (p(&a) + 2.0 * (p(&b) + p(&d))) / (p(&a) + p(&b) + p(&d));
        assert!((r.ratio - want).abs() < 1e-12);
    }

    #[test]
    fn an_empty_log_or_a_model_that_predicts_nothing_is_an_error() {
        let model = CostModel::cpu_smollm2_135m();
        assert!(check_steps(&[], &model).is_err());
        let zero = CostModel::constant(0.0);
        let err = check_steps(&[(counts(0, 1, 10), 0.02)], &zero)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot score"), "{err}");
    }
}
