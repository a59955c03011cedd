//! The tools' one error type. Each variant keeps the message that says what to fix.

use std::path::PathBuf;

use scheduler::sim::SimError;

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A dataset, trace, step log or option value that does not parse or is out of range.
    #[error("{0}")]
    Input(String),
    /// A fit that cannot be made from the data (too few or degenerate samples).
    #[error("{0}")]
    Fit(String),
    /// An SVG that could not be drawn or written.
    #[error("{0}")]
    Plot(String),
    /// The load generator could not talk to the server (connection, HTTP, protocol).
    #[error("{0}")]
    Http(String),
    #[error(transparent)]
    Sim(#[from] SimError),
}

impl ToolError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ToolError::Io {
            path: path.into(),
            source,
        }
    }
}
