//! Errors of model loading, conversion and pulling. Each names the file and, where there is
//! one, the tensor or key at fault, so a user knows what to fix.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not what its format says it must be.
    #[error("{path}: {problem}")]
    Format { path: PathBuf, problem: String },
    /// A config this runtime cannot run (unknown architecture, missing or bad field).
    #[error("{path}: field `{field}`: {problem}")]
    Config {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("tensor `{tensor}` in {path}: {problem}")]
    Tensor {
        path: PathBuf,
        tensor: String,
        problem: String,
    },
    #[error("tokenizer {path}: {problem}")]
    Tokenizer { path: PathBuf, problem: String },
    /// Fetching the default model failed; the message says what to do.
    #[error("pull {name}: {problem}")]
    Pull { name: String, problem: String },
    /// The weights loaded but the backend refused them.
    #[error(transparent)]
    Load(#[from] engine::model::LoadError),
    /// The machine cannot hold the model.
    #[error("{0}")]
    TooBig(String),
    #[error("{0}")]
    Other(String),
}

impl ModelError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io {
            path: path.into(),
            source,
        }
    }
    pub fn format(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        ModelError::Format {
            path: path.into(),
            problem: problem.into(),
        }
    }
    pub fn tensor(
        path: impl Into<PathBuf>,
        tensor: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        ModelError::Tensor {
            path: path.into(),
            tensor: tensor.into(),
            problem: problem.into(),
        }
    }
}
