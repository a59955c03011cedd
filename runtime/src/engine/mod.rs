//! The engine: `core` (one step at a time, single-threaded), `handle` (the core on its own OS
//! thread, driven through channels), `executor` (plan → batch and page copies), `stop`
//! (stop strings over streamed text).

pub mod core;
pub mod executor;
pub mod handle;
pub mod no_cache;
pub mod parity;
pub mod stop;
pub mod synthetic;

pub use self::core::{EngineConfig, EngineCore, GenerateRequest, TokenOutput};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("engine configuration: {0}")]
    Config(String),
    #[error("the queue is full ({waiting} requests waiting, --max-queue {max})")]
    QueueFull { waiting: usize, max: usize },
    #[error(transparent)]
    Scheduler(#[from] scheduler::SchedulerError),
    #[error(transparent)]
    Block(#[from] block_manager::BlockError),
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// The device failed (a CUDA error); the step's requests end with this message.
    #[error("device error: {0}")]
    Backend(String),
}

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::model::config::ModelConfig;
use crate::model::llama::LlamaModel;
use crate::model::resolve::ModelSource;
use crate::model::tokenizer::Tokenizer;

/// A CPU engine over a model directory.
pub fn cpu_engine(dir: &Path, cfg: EngineConfig) -> Result<EngineCore<CpuBackend>, EngineError> {
    let (model, tok) = cpu_model(&ModelSource::Dir(dir.to_path_buf()), 0)?;
    EngineCore::new(CpuBackend, model, Some(tok), cfg)
}

/// A CPU engine with `dummy:` weights of `spec` (a preset or a config.json path).
pub fn cpu_dummy_engine(
    spec: &str,
    cfg: EngineConfig,
    seed: u64,
) -> Result<EngineCore<CpuBackend>, EngineError> {
    let (model, tok) = cpu_model(&ModelSource::Dummy(spec.to_string()), seed)?;
    EngineCore::new(CpuBackend, model, Some(tok), cfg)
}

/// A model on the CPU and its tokenizer: loaded from a directory, or `dummy:` weights
/// drawn from `seed` with the byte-level tokenizer.
pub fn cpu_model(
    source: &ModelSource,
    seed: u64,
) -> Result<(LlamaModel<CpuBackend>, Arc<Tokenizer>), EngineError> {
    load_model(&CpuBackend, source, seed)
}

/// A model on `backend` and its tokenizer (see [`cpu_model`]), with f32 weights.
pub fn load_model<B: crate::backend::Backend>(
    backend: &B,
    source: &ModelSource,
    seed: u64,
) -> Result<(LlamaModel<B>, Arc<Tokenizer>), EngineError> {
    load_model_as(backend, source, seed, crate::backend::WeightDtype::F32)
}

/// [`load_model`] with the weight matrices stored as `dtype`.
pub fn load_model_as<B: crate::backend::Backend>(
    backend: &B,
    source: &ModelSource,
    seed: u64,
    dtype: crate::backend::WeightDtype,
) -> Result<(LlamaModel<B>, Arc<Tokenizer>), EngineError> {
    match source {
        ModelSource::Dir(dir) => {
            let mc = ModelConfig::from_file(&dir.join("config.json"))?;
            let model = LlamaModel::load_as(backend, dir, mc, dtype)?;
            Ok((model, Arc::new(Tokenizer::from_dir(dir)?)))
        }
        ModelSource::Dummy(spec) => {
            use crate::model::dummy;
            let mc = dummy::dummy_config(spec)?;
            let bytes = dummy::num_params(&mc) * 4;
            if let Some(avail) = available_memory() {
                if bytes > avail / 4 * 3 {
                    return Err(EngineError::Config(format!(
                        "dummy:{spec} needs {:.1} GiB of f32 weights but only {:.1} GiB of memory is available",
                        bytes as f64 / (1u64 << 30) as f64,
                        avail as f64 / (1u64 << 30) as f64
                    )));
                }
            }
            let model = LlamaModel::from_parts_as(backend, mc, dtype, |name, n| {
                dummy::dummy_tensor(name, n, seed)
            });
            Ok((model, Arc::new(Tokenizer::byte_level()?)))
        }
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux only).
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
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
