//! Backend parity: the same requests, greedy, on two engines (the CPU reference and a device
//! backend), compared token by token.
//!
//! Two correct backends differ by rounding, so greedy tokens may part where the reference's
//! top two logits were nearly tied. A divergence is accepted only there: at the first step
//! where the tokens differ, the reference's top-1/top-2 log-probability margin (the logit
//! margin) must be below `margin_tol`; after it the sequences are not compared. On every
//! matched step the chosen token's log-probability must agree within `logprob_tol`.

use std::collections::BTreeMap;

use engine::backend::{Backend, WeightDtype};
use engine::sampler::SamplingParams;
use engine::{EngineConfig, EngineCore, EngineError, GenerateRequest, TokenOutput};
use models::resolve::ModelSource;

use crate::engines::{engine_over, BuildError};

/// An engine for a parity run: `source`'s model (dummy weights drawn from `seed`) on
/// `backend`, with a 64-token step budget so long prompts take the chunked-prefill path.
pub fn parity_engine<B: Backend + 'static>(
    backend: B,
    source: &ModelSource,
    seed: u64,
) -> Result<EngineCore<B>, BuildError> {
    parity_engine_with(backend, source, seed, parity_config())
}

/// The engine configuration of [`parity_engine`]: 512 pages, a 64-token step budget.
pub fn parity_config() -> EngineConfig {
    EngineConfig {
        num_blocks: 512,
        scheduler: scheduler::SchedulerConfig {
            max_num_batched_tokens: 64,
            ..scheduler::SchedulerConfig::default()
        },
        ..EngineConfig::default()
    }
}

/// [`parity_engine`] with another configuration (few pages, to force preemption; swap).
pub fn parity_engine_with<B: Backend + 'static>(
    backend: B,
    source: &ModelSource,
    seed: u64,
    cfg: EngineConfig,
) -> Result<EngineCore<B>, BuildError> {
    let (model, tok) = models::load_model(&backend, source, seed, WeightDtype::F32)?;
    Ok(engine_over(backend, model, &tok, cfg)?)
}

/// What the comparison found.
#[derive(Debug, Clone, Default)]
pub struct ParityReport {
    pub requests: usize,
    /// Steps compared (up to and including each request's first divergence).
    pub steps_compared: usize,
    /// (request, step, the reference's top-2 margin there) of each divergence.
    pub divergences: Vec<(u64, usize, f32)>,
    /// Divergences where the reference was not near a tie: failures.
    pub bad_divergences: usize,
    /// Largest |logprob difference| of the chosen token over matched steps.
    pub max_logprob_diff: f32,
    pub logprob_tol: f32,
}

impl ParityReport {
    pub fn ok(&self) -> bool {
        self.bad_divergences == 0
            && self.max_logprob_diff <= self.logprob_tol
            && self.steps_compared > 0
    }
}

/// Per (request, sample): each step's (token, logprob, top-2 margin).
type Trace = BTreeMap<(u64, usize), Vec<(u32, f32, f32)>>;

/// Runs `prompts` (greedy, `max_tokens` each, `n` samples each, all at once) on an engine;
/// its per-step trace. With `n > 1` the samples share their prompt's pages and part by
/// copy-on-write at the first partly filled page.
pub fn greedy_trace<B: Backend>(
    engine: &mut EngineCore<B>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    n: usize,
) -> Result<Trace, EngineError> {
    let limits = engine.request_limits();
    for (i, p) in prompts.iter().enumerate() {
        let params = SamplingParams {
            temperature: 0.0,
            max_tokens,
            ignore_eos: true,
            logprobs: Some(2),
            n,
            ..SamplingParams::default()
        };
        engine.add_request(GenerateRequest {
            id: i as u64,
            request: limits.validate(p.clone(), params)?,
        })?;
    }
    let mut trace = Trace::new();
    while engine.has_unfinished() {
        for t in engine.step()?.outputs {
            trace
                .entry((t.request, t.index))
                .or_default()
                .push(step_of(&t));
        }
    }
    Ok(trace)
}

fn step_of(t: &TokenOutput) -> (u32, f32, f32) {
    let margin = match t.top_logprobs.as_slice() {
        [a, b, ..] => (a.1 - b.1).abs(),
        _ => f32::INFINITY,
    };
    (t.token, t.logprob, margin)
}

/// Compares `candidate` against `reference` on the same prompts, one sample each.
pub fn compare<A: Backend, B: Backend>(
    reference: &mut EngineCore<A>,
    candidate: &mut EngineCore<B>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    margin_tol: f32,
    logprob_tol: f32,
) -> Result<ParityReport, EngineError> {
    let tol = (margin_tol, logprob_tol);
    compare_samples(reference, candidate, prompts, max_tokens, 1, tol)
}

/// [`compare`] with `n` samples per prompt, each compared with the reference's same sample;
/// `(margin_tol, logprob_tol)` as there.
pub fn compare_samples<A: Backend, B: Backend>(
    reference: &mut EngineCore<A>,
    candidate: &mut EngineCore<B>,
    prompts: &[Vec<u32>],
    max_tokens: usize,
    n: usize,
    (margin_tol, logprob_tol): (f32, f32),
) -> Result<ParityReport, EngineError> {
    let want = greedy_trace(reference, prompts, max_tokens, n)?;
    let got = greedy_trace(candidate, prompts, max_tokens, n)?;
    let mut r = ParityReport {
        requests: prompts.len(),
        logprob_tol,
        ..ParityReport::default()
    };
    for (key, w) in &want {
        let id = &key.0;
        let g = got.get(key).map(Vec::as_slice).unwrap_or(&[]);
        for (step, &(wt, wlp, margin)) in w.iter().enumerate() {
            r.steps_compared += 1;
            match g.get(step) {
                Some(&(gt, glp, _)) if gt == wt => {
                    r.max_logprob_diff = r.max_logprob_diff.max((wlp - glp).abs());
                }
                _ => {
                    r.divergences.push((*id, step, margin));
                    if margin >= margin_tol {
                        r.bad_divergences += 1;
                    }
                    break;
                }
            }
        }
    }
    Ok(r)
}

/// Prompts that exercise the paths a backend can get wrong: a single token, short and long
/// prompts (several pages, chunked prefill under a small token budget), and two prompts that
/// share a long prefix (a prefix-cache hit). Token ids are drawn from `vocab` by `seed`.
pub fn test_prompts(vocab: u32, seed: u64) -> Vec<Vec<u32>> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        100 + (state % (vocab.max(101) as u64 - 100)) as u32
    };
    let mut prompts: Vec<Vec<u32>> = [1usize, 7, 16, 33, 100, 257]
        .iter()
        .map(|&n| (0..n).map(|_| next()).collect())
        .collect();
    let shared: Vec<u32> = (0..80).map(|_| next()).collect();
    for tail in [5, 9] {
        let mut p = shared.clone();
        p.extend((0..tail).map(|_| next()));
        prompts.push(p);
    }
    prompts
}
