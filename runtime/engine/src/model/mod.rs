//! The model seam: what the engine asks of a model (a forward pass over a flattened batch
//! into the paged KV cache, its architecture, its longest sequence), what sizes the KV cache
//! on any backend (`KvSpec`), and where weights come from (`WeightSource`, by Hugging Face
//! name). `llama` is the one architecture family implemented, written once against the
//! backend interface.

pub mod config;
pub mod kv_cache;
pub mod llama;
mod scratch;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use kv_cache::{KvCache, KvSpec, LayerCache};
pub use llama::LlamaModel;
pub use weights::{LoadError, SourceError, WeightSource};

use kernels::KvDtype;

use crate::backend::{Backend, BackendError, Batch};

/// A model the engine can run on backend `B`.
pub trait Model<B: Backend>: Send + Sync {
    /// The architecture (sizes of every layer, vocabulary, RoPE).
    fn config(&self) -> &ModelConfig;
    /// The longest sequence (prompt + output) the model has positions for.
    fn max_len(&self) -> usize;
    /// The KV cache this model needs, stored as `dtype`.
    fn kv_spec(&self, dtype: KvDtype) -> KvSpec {
        KvSpec::of(self.config(), dtype)
    }
    /// Runs every layer for every token of `batch`, writing each new token's K and V into
    /// `cache`, and returns the logits of `batch.logit_rows`, `[rows, vocab]`, on the host.
    fn forward(
        &self,
        backend: &B,
        batch: &Batch,
        cache: &mut KvCache<B>,
    ) -> Result<Vec<f32>, BackendError>;
    /// Takes back the logits `forward` returned, once sampled, so the next step's come in
    /// the same host memory. (A 64-row decode step's logits are 12.6 MB for a 49,152-token
    /// vocabulary: a new buffer each step was mapped, faulted in and zeroed by the kernel
    /// page by page, 7 % of the step in the profile.) By default they are dropped.
    fn recycle_logits(&self, _logits: Vec<f32>) {}
}
