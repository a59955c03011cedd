//! Ready-made CPU engines over a model source, for tests, tools and benchmarks.

use std::path::Path;
use std::sync::Arc;

use engine::backend::cpu::CpuBackend;
use engine::backend::WeightDtype;
use engine::detok::TokenDecoder;
use engine::model::LlamaModel;
use engine::{EngineConfig, EngineCore};
use models::resolve::ModelSource;
use models::tokenizer::Tokenizer;
use models::ModelError;

/// Why a ready-made engine could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
}

/// A model on the CPU with f32 weights and its tokenizer (see [`models::load_model`]).
pub fn cpu_model(
    source: &ModelSource,
    seed: u64,
) -> Result<(LlamaModel<CpuBackend>, Arc<Tokenizer>), ModelError> {
    models::load_model(&CpuBackend, source, seed, WeightDtype::F32)
}

/// An engine core over `model` that decodes with `tokenizer`.
pub fn engine_over<B: engine::backend::Backend + 'static>(
    backend: B,
    model: LlamaModel<B>,
    tokenizer: &Arc<Tokenizer>,
    cfg: EngineConfig,
) -> Result<EngineCore<B>, engine::EngineError> {
    let decoder: Arc<dyn TokenDecoder> = tokenizer.clone();
    EngineCore::new(backend, Box::new(model), Some(decoder), cfg)
}

/// An engine core and the tokenizer it decodes with (callers encode prompts with it).
pub type EngineAndTokenizer<B> = (EngineCore<B>, Arc<Tokenizer>);

/// A CPU engine over a model directory, f32 weights.
pub fn cpu_engine(
    dir: &Path,
    cfg: EngineConfig,
) -> Result<EngineAndTokenizer<CpuBackend>, BuildError> {
    let (model, tok) = cpu_model(&ModelSource::Dir(dir.to_path_buf()), 0)?;
    Ok((engine_over(CpuBackend, model, &tok, cfg)?, tok))
}

/// A CPU engine with `dummy:` weights of `spec` (a preset or a config.json path).
pub fn cpu_dummy_engine(
    spec: &str,
    cfg: EngineConfig,
    seed: u64,
) -> Result<EngineAndTokenizer<CpuBackend>, BuildError> {
    let (model, tok) = cpu_model(&ModelSource::Dummy(spec.to_string()), seed)?;
    Ok((engine_over(CpuBackend, model, &tok, cfg)?, tok))
}
