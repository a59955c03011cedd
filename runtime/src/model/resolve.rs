//! What `--model` names: a model directory, a model `pagedrt pull` knows (pulled on first
//! use), or nothing (the default model).

use std::path::{Path, PathBuf};

use super::error::ModelError;
use super::pull::{pull, DEFAULT_MODEL, KNOWN_MODELS};

pub fn resolve_model(spec: Option<&str>, say: &mut dyn FnMut(&str)) -> Result<PathBuf, ModelError> {
    let spec = spec.unwrap_or(DEFAULT_MODEL);
    let path = Path::new(spec);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if KNOWN_MODELS.iter().any(|m| m.name == spec) {
        return pull(spec, say);
    }
    if spec.starts_with("dummy:") {
        return Err(ModelError::Other(format!(
            "--model {spec}: dummy weights are not implemented yet"
        )));
    }
    let known: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
    Err(ModelError::Other(format!(
        "--model {spec}: not a model directory and not a known model ({})",
        known.join(", ")
    )))
}
