//! Structured-output masks off the step's critical path: while the forward pass runs, a
//! helper thread asks each constrained sequence of the step which tokens it allows next.
//!
//! Why this works: a sequence's next mask depends only on the tokens it has already
//! committed, all known before the forward starts, so the two are independent. On a GPU the
//! forward is the device's work and the helper has a host core to itself; on the CPU backend
//! it competes with the kernels for cores, and the step report says how long the masks took
//! and how long sampling waited for them after the forward (`mask_wait_seconds`).

use std::collections::HashMap;
use std::time::Instant;

use block_manager::SeqId;

use crate::constraint::{Constraint, ConstraintError, TokenMask};

/// The masks of one step, by sequence, and what they cost.
#[derive(Debug, Default)]
pub struct StepMasks {
    pub masks: HashMap<SeqId, Result<TokenMask, ConstraintError>>,
    /// Time the helper spent computing masks.
    pub compute_seconds: f64,
    /// Time the step waited for the helper after the forward had finished.
    pub wait_seconds: f64,
}

/// Runs `forward` while the masks of `jobs` are computed on a helper thread; returns the
/// forward's result and the masks. Without jobs nothing is spawned.
pub fn with_masks<R: Send>(
    jobs: Vec<(SeqId, &mut Constraint)>,
    forward: impl FnOnce() -> R + Send,
) -> (R, StepMasks) {
    if jobs.is_empty() {
        return (forward(), StepMasks::default());
    }
    std::thread::scope(|s| {
        // (`Scope::spawn` panics if no thread can be had: the engine thread reports it.)
        let helper = s.spawn(move || compute(jobs));
        let out = forward();
        let waited = Instant::now();
        let masks = match helper.join() {
            Ok(m) => m,
            // A panic in a grammar is the engine thread's to report.
            Err(p) => std::panic::resume_unwind(p),
        };
        let wait_seconds = waited.elapsed().as_secs_f64();
        (
            out,
            StepMasks {
                wait_seconds,
                ..masks
            },
        )
    })
}

fn compute(jobs: Vec<(SeqId, &mut Constraint)>) -> StepMasks {
    let t0 = Instant::now();
    let masks = jobs
        .into_iter()
        .map(|(seq, c)| (seq, c.0.compute_mask()))
        .collect();
    StepMasks {
        masks,
        compute_seconds: t0.elapsed().as_secs_f64(),
        wait_seconds: 0.0,
    }
}
