//! One sample of a request through a step: its state (generator, text, stop strings,
//! constraint), its draw from the step's logits and what its new token emits. Split from
//! `core` (which owns the step's order of work) so each file holds one concept.

use std::collections::HashMap;
use std::sync::Arc;

use block_manager::SeqId;
use rand::rngs::StdRng;
use scheduler::FinishReason;

use super::stop::StopText;
use super::EngineError;
use crate::backend::Backend;
use crate::constraint::{Constraint, ConstraintError, TokenMask};
use crate::core::TokenOutput;
use crate::detok::{IncrementalDecoder, TokenDecoder};
use crate::masks::StepMasks;
use crate::sampler::{sample, sample_rng, Sampled, SamplingParams};

/// A sample's state from its first token to its last.
pub(crate) struct SampleState {
    pub(crate) request: u64,
    pub(crate) index: usize,
    pub(crate) params: Arc<SamplingParams>,
    pub(crate) prompt: Arc<Vec<u32>>,
    pub(crate) output: Vec<u32>,
    pub(crate) rng: StdRng,
    pub(crate) detok: IncrementalDecoder,
    pub(crate) text: StopText,
    /// What restricts this sample's tokens (a structured output).
    pub(crate) constraint: Option<Constraint>,
    /// The constraint as it was before any token, for the siblings of an `n > 1` request's
    /// first sample (they start from its first logits).
    pub(crate) sibling_constraint: Option<Constraint>,
}

impl SampleState {
    /// Sample `index` of `request`, with its own generator ([`sample_rng`]).
    pub(crate) fn new(
        request: u64,
        index: usize,
        params: Arc<SamplingParams>,
        prompt: Arc<Vec<u32>>,
        constraint: Option<Constraint>,
    ) -> Self {
        let rng = sample_rng(&params, request, index);
        let sibling_constraint = if index == 0 && params.n > 1 {
            constraint.clone()
        } else {
            None
        };
        SampleState {
            request,
            index,
            params,
            prompt,
            output: vec![],
            rng,
            detok: IncrementalDecoder::new(),
            text: StopText::default(),
            constraint,
            sibling_constraint,
        }
    }
}

/// The constraints of the step's sampling rows, whose masks the helper computes while the
/// forward runs.
pub(crate) fn mask_jobs<'a>(
    plan: &scheduler::StepPlan,
    samples: &'a mut HashMap<SeqId, SampleState>,
) -> Vec<(SeqId, &'a mut Constraint)> {
    let sampling: std::collections::HashSet<SeqId> = plan
        .seqs
        .iter()
        .filter(|s| s.samples)
        .map(|s| s.seq)
        .collect();
    samples
        .iter_mut()
        .filter(|(seq, _)| sampling.contains(seq))
        .filter_map(|(seq, st)| st.constraint.as_mut().map(|c| (*seq, c)))
        .collect()
}

/// One row's draw: the token, the raw logits for the siblings of an `n > 1` request's first
/// token, and why the row's constraint could not give a mask (the sample then ends).
pub(crate) type Drawn = (Sampled, Option<Vec<f32>>, Option<ConstraintError>);

/// Samples every sampling row of a step, in parallel over sequences (each sample has its
/// own seeded generator, so the draws do not depend on the order or the thread). Returns,
/// per row, the token and, for the first token of an `n > 1` request, the (masked) logits
/// its siblings will sample from. A constrained row samples under its mask from `masks`.
pub(crate) fn draw_samples<B: Backend>(
    backend: &B,
    plan: &scheduler::StepPlan,
    samples: &mut HashMap<SeqId, SampleState>,
    logits: &mut [f32],
    vocab: usize,
    masks: &mut StepMasks,
) -> Vec<Option<Drawn>> {
    let rows_of: HashMap<SeqId, usize> = plan
        .seqs
        .iter()
        .filter(|s| s.samples)
        .enumerate()
        .map(|(row, sc)| (sc.seq, row))
        .collect();
    let mut rows: Vec<&mut [f32]> = logits.chunks_mut(vocab).collect();
    type Job<'a> = (usize, &'a mut SampleState, &'a mut [f32], Option<TokenMask>);
    let mut failed: HashMap<usize, ConstraintError> = HashMap::new();
    let mut jobs: Vec<Job> = samples
        .iter_mut()
        .filter_map(|(seq, st)| {
            let row = *rows_of.get(seq)?;
            let mask = match (st.constraint.is_some(), masks.masks.remove(seq)) {
                (false, _) => None,
                (true, Some(Ok(m))) if m.count() > 0 => Some(m),
                (true, Some(Ok(_))) => {
                    failed.insert(row, ConstraintError("no token is allowed".into()));
                    None
                }
                (true, Some(Err(e))) => {
                    failed.insert(row, e);
                    None
                }
                (true, None) => {
                    failed.insert(row, ConstraintError("no mask was computed".into()));
                    None
                }
            };
            Some((row, st, std::mem::take(rows.get_mut(row)?), mask))
        })
        .collect();
    // Each job fills its own result slot, on the backend's host threads.
    let mut work: Vec<_> = jobs.iter_mut().map(|j| (j, None)).collect();
    backend.host_parallel(&mut work, |w| {
        let ((row, st, l, mask), result) = w;
        if let Some(m) = mask {
            m.apply(l);
        }
        let wants_fork = st.index == 0 && st.output.is_empty() && st.params.n > 1;
        let raw = wants_fork.then(|| l.to_vec());
        let s = sample(l, &st.params, &st.prompt, &st.output, None, &mut st.rng);
        *result = Some((*row, s, raw));
    });
    let mut drawn: Vec<Option<Drawn>> = Vec::new();
    drawn.resize_with(rows_of.len(), || None);
    for (row, s, raw) in work.into_iter().filter_map(|(_, r)| r) {
        drawn[row] = Some((s, raw, failed.remove(&row)));
    }
    drawn
}

/// Appends a sampled token to a sample's state: stop checks, the constraint, text, the
/// output record. A sample whose constraint failed (`failed`) ends here with `abort`.
pub(crate) fn emit(
    st: &mut SampleState,
    s: &Sampled,
    tok: Option<&dyn TokenDecoder>,
    eos_ids: &[u32],
    cached: usize,
    failed: Option<ConstraintError>,
) -> Result<TokenOutput, EngineError> {
    st.output.push(s.token);
    let p = &st.params;
    let mut finish = None;
    let stop_token =
        (!p.ignore_eos && eos_ids.contains(&s.token)) || p.stop_token_ids.contains(&s.token);
    let mut text = String::new();
    let mut complete = false;
    if let Some(e) = failed {
        tracing::warn!("request {}: {e}; ending the sample", st.request);
        finish = Some(FinishReason::Abort);
    } else if let (Some(c), false) = (st.constraint.as_mut(), stop_token) {
        match c.0.commit(s.token) {
            Ok(()) => complete = c.0.is_finished(),
            Err(e) => {
                tracing::warn!("request {}: {e}; ending the sample", st.request);
                finish = Some(FinishReason::Abort);
            }
        }
    }
    if finish.is_some() {
    } else if stop_token {
        finish = Some(FinishReason::Stop);
    } else if let Some(t) = tok {
        let delta = st.detok.push(t, s.token)?;
        let (released, hit) = st.text.push(&delta, &p.stop);
        text = released;
        if hit {
            finish = Some(FinishReason::Stop);
            // The stop string ended it, not the grammar: what it held back stays back.
            complete = false;
        }
    }
    if finish.is_none() && complete {
        finish = Some(FinishReason::Stop);
    }
    if finish.is_none() && st.output.len() >= p.max_tokens {
        finish = Some(FinishReason::Length);
    }
    if finish == Some(FinishReason::Length) || (finish.is_some() && (stop_token || complete)) {
        if let Some(t) = tok {
            let rest = st.detok.finish(t)?;
            let (released, _) = st.text.push(&rest, &p.stop);
            text.push_str(&released);
            text.push_str(&st.text.flush());
        }
    }
    Ok(TokenOutput {
        request: st.request,
        index: st.index,
        token: s.token,
        text,
        logprob: s.logprob,
        top_logprobs: s.top.clone(),
        finish,
        cached_prompt_tokens: cached,
    })
}
