//! From a model source (a directory or `dummy:` weights) to an engine model on a backend and
//! its tokenizer.

use std::sync::Arc;

use engine::backend::{Backend, WeightDtype};
use engine::model::{LlamaModel, LoadError, SourceError};

use crate::error::ModelError;
use crate::resolve::ModelSource;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFiles;
use crate::{config, dummy};

/// The model of `source` on `backend` with its matrices stored as `dtype`, and its
/// tokenizer: a model directory's safetensors and tokenizer files, or `dummy:` weights
/// drawn from `seed` with the byte-level tokenizer. Both go through the same loader.
pub fn load_model<B: Backend>(
    backend: &B,
    source: &ModelSource,
    seed: u64,
    dtype: WeightDtype,
) -> Result<(LlamaModel<B>, Arc<Tokenizer>), ModelError> {
    match source {
        ModelSource::Dir(dir) => {
            let mc = config::from_file(&config::config_path(dir))?;
            let weights = WeightFiles::open(dir)?;
            let model = LlamaModel::load(backend, &weights, mc, dtype).map_err(unbox)?;
            Ok((model, Arc::new(Tokenizer::from_dir(dir)?)))
        }
        ModelSource::Dummy(spec) => {
            let mc = dummy::dummy_config(spec)?;
            let bytes = mc.num_params() * 4;
            if let Some(avail) = available_memory() {
                if bytes > avail / 4 * 3 {
                    return Err(ModelError::TooBig(format!(
                        "dummy:{spec} needs {:.1} GiB of f32 weights but only {:.1} GiB of memory is available",
                        bytes as f64 / (1u64 << 30) as f64,
                        avail as f64 / (1u64 << 30) as f64
                    )));
                }
            }
            let weights = dummy::DummyWeights::new(mc.clone(), seed);
            let model = LlamaModel::load(backend, &weights, mc, dtype).map_err(unbox)?;
            Ok((model, Arc::new(Tokenizer::byte_level()?)))
        }
    }
}

/// A weight source's own error back as a `ModelError` (it names the file and tensor), any
/// other load error as is.
fn unbox(e: LoadError) -> ModelError {
    match e {
        LoadError::Weights(inner) => match inner.downcast::<ModelError>() {
            Ok(m) => *m,
            Err(other) => ModelError::Load(LoadError::Weights(other as SourceError)),
        },
        other => ModelError::Load(other),
    }
}

/// `MemAvailable` from /proc/meminfo, in bytes (Linux only).
fn available_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
