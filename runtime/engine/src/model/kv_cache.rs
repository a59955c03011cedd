//! The paged KV cache of every layer, and what sizes it: a `KvSpec` (layers, KV heads, head
//! dim, dtype) is all any backend needs to know how many bytes a page takes.

use kernels::{KvDtype, KvLayout};

use super::config::ModelConfig;
use crate::backend::{Backend, BackendError};

/// The shape of a model's KV cache, independent of the backend that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvSpec {
    pub num_layers: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub dtype: KvDtype,
}

impl KvSpec {
    /// The KV cache of `cfg` stored as `dtype`.
    pub fn of(cfg: &ModelConfig, dtype: KvDtype) -> Self {
        KvSpec {
            num_layers: cfg.num_layers,
            num_kv_heads: cfg.num_kv_heads,
            head_dim: cfg.head_dim,
            dtype,
        }
    }

    /// Bytes of one page of `block_size` tokens across all layers (K and V).
    pub fn bytes_per_block(&self, block_size: usize) -> usize {
        2 * self.num_layers * self.num_kv_heads * self.head_dim * block_size * self.dtype.bytes()
    }

    /// Bytes of K and V of one token across all layers.
    pub fn bytes_per_token(&self) -> usize {
        self.bytes_per_block(1)
    }

    /// One layer's cache layout with `num_blocks` pages of `block_size` tokens.
    pub fn layout(&self, num_blocks: usize, block_size: usize) -> KvLayout {
        KvLayout {
            num_blocks,
            num_kv_heads: self.num_kv_heads,
            block_size,
            head_dim: self.head_dim,
        }
    }
}

/// One layer's K and V caches.
pub struct LayerCache<B: Backend> {
    pub k: B::KvBuf,
    pub v: B::KvBuf,
}

/// The paged KV cache of every layer.
pub struct KvCache<B: Backend> {
    pub layout: KvLayout,
    pub dtype: KvDtype,
    pub layers: Vec<LayerCache<B>>,
}

impl<B: Backend> KvCache<B> {
    /// `num_blocks` pages of `block_size` tokens per layer, as `spec` says, on `backend`.
    pub fn new(
        backend: &B,
        spec: &KvSpec,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self, BackendError> {
        let layout = spec.layout(num_blocks, block_size);
        let layers = (0..spec.num_layers)
            .map(|_| {
                Ok(LayerCache {
                    k: backend.kv_zeros(layout.elems(), spec.dtype)?,
                    v: backend.kv_zeros(layout.elems(), spec.dtype)?,
                })
            })
            .collect::<Result<_, BackendError>>()?;
        Ok(KvCache {
            layout,
            dtype: spec.dtype,
            layers,
        })
    }
}
