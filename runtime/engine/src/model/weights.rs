//! Where a model's weights come from: any source that hands out tensors by their Hugging
//! Face names (`model.layers.0.self_attn.q_proj.weight`, ...) as f32, checked against a
//! shape. The `models` crate implements it for safetensors files and for seeded dummy
//! weights, so both go through the one loader (`LlamaModel::load`).

/// The error a weight source reports (its own type, boxed: the engine only passes it on).
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

pub trait WeightSource {
    /// Whether the source has a tensor of this name.
    fn contains(&self, name: &str) -> bool;
    /// The tensor `name`, converted to f32, refused unless its shape is `shape`.
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, SourceError>;
}

/// Why a model could not be loaded onto a backend.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The weight source failed (a missing tensor, a wrong shape, an unreadable file).
    #[error(transparent)]
    Weights(SourceError),
    /// The backend refused the weights (an unsupported dtype, out of device memory).
    #[error(transparent)]
    Backend(#[from] crate::backend::BackendError),
}
