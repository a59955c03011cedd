//! The engine: `core` (one step at a time, single-threaded), `handle` (the core on its own OS
//! thread, driven through channels), `executor` (plan → batch and page copies), `stop`
//! (stop strings over streamed text).

pub mod core;
pub mod executor;
pub mod stop;

pub use self::core::{EngineConfig, EngineCore, GenerateRequest, TokenOutput};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("engine configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error(transparent)]
    Block(#[from] block_manager::BlockError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
}

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaModel;
use crate::model::tokenizer::Tokenizer;

/// A CPU engine over a model directory.
pub fn cpu_engine(dir: &Path, cfg: EngineConfig) -> Result<EngineCore<CpuBackend>, EngineError> {
    let mc = ModelConfig::from_file(&dir.join("config.json"))?;
    let model = LlamaModel::load(&CpuBackend, dir, mc)?;
    let tok = Arc::new(Tokenizer::from_dir(dir)?);
    EngineCore::new(CpuBackend, model, Some(tok), cfg)
}

/// What one sample of a request produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Completion {
    pub tokens: Vec<u32>,
    pub text: String,
    pub finish: Option<scheduler::FinishReason>,
    pub cached_prompt_tokens: usize,
}

/// Steps until every request has finished; returns each (request, sample index)'s output.
pub fn run_to_completion<B: crate::backend::Backend>(
    engine: &mut EngineCore<B>,
) -> Result<BTreeMap<(u64, usize), Completion>, EngineError> {
    let mut out: BTreeMap<(u64, usize), Completion> = BTreeMap::new();
    while engine.has_unfinished() {
        for t in engine.step()? {
            let c = out.entry((t.request, t.index)).or_default();
            c.tokens.push(t.token);
            c.text.push_str(&t.text);
            c.finish = t.finish;
            c.cached_prompt_tokens = c.cached_prompt_tokens.max(t.cached_prompt_tokens);
        }
    }
    Ok(out)
}
