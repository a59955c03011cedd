//! Driving an engine core to the end of its work, outside the engine thread (offline
//! benchmarks, tests, batch generation).

use std::collections::BTreeMap;

use crate::backend::Backend;
use crate::{EngineCore, EngineError};

/// What one sample of a request produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Option<scheduler::FinishReason>,
    pub cached_prompt_tokens: usize,
}

/// Steps until every request has finished; returns each (request, sample index)'s output.
pub fn run_to_completion<B: Backend>(
    engine: &mut EngineCore<B>,
) -> Result<BTreeMap<(u64, usize), Completion>, EngineError> {
    let mut out: BTreeMap<(u64, usize), Completion> = BTreeMap::new();
    while engine.has_unfinished() {
        for t in engine.step()?.outputs {
            let c = out.entry((t.request, t.index)).or_default();
            c.tokens.push(t.token);
            c.text.push_str(&t.text);
            c.finish = t.finish;
            c.cached_prompt_tokens = c.cached_prompt_tokens.max(t.cached_prompt_tokens);
        }
    }
    Ok(out)
}
