//! What `--model` names: a model directory, a model `pagedrt pull` knows (pulled on first
//! use), a Hugging Face Hub id `ORG/NAME[@REVISION]` (fetched into the Hub cache on first
//! use), or nothing (the default model).

use std::path::{Path, PathBuf};

use crate::error::ModelError;
use crate::hub::{pull_hub, HubModel, HubOptions};
use crate::pull::{pull, DEFAULT_MODEL, KNOWN_MODELS};

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Dir(PathBuf),
    /// `dummy:<preset or config.json>`.
    Dummy(String),
}

pub fn resolve_source(
    spec: Option<&str>,
    say: &mut dyn FnMut(&str),
) -> Result<ModelSource, ModelError> {
    match spec.and_then(|s| s.strip_prefix("dummy:")) {
        Some(d) => Ok(ModelSource::Dummy(d.to_string())),
        None => resolve_model(spec, say).map(ModelSource::Dir),
    }
}

/// A model directory (pulling a known model on first use).
pub fn resolve_model(spec: Option<&str>, say: &mut dyn FnMut(&str)) -> Result<PathBuf, ModelError> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if KNOWN_MODELS.iter().any(|m| m.name == spec) {
        return pull(spec, say);
    }
    if let Some(hub) = HubModel::parse(spec) {
        return pull_hub(&hub, &HubOptions::from_env(), say);
    }
    let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
    Err(ModelError::Other(format!(
        "--model {spec}: not a model directory, not a known model ({}) and not a Hub id \
         (ORG/NAME[@REVISION])",
        known.join(", ")
    )))
}
