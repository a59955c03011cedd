//! The architecture of a Llama-family model: the numbers the forward pass and the KV cache
//! are sized by. Reading them from a `config.json` is the `models` crate's job.

pub use kernels::cpu::Llama3Scaling;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// Llama 2/3, SmolLM2, TinyLlama, Mistral.
    Llama,
    /// Llama with biases on the q/k/v projections.
    Qwen2,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    pub arch: Arch,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub vocab_size: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: Option<Llama3Scaling>,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub qkv_bias: bool,
}

impl ModelConfig {
    pub fn q_dim(&self) -> usize {
        self.num_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.num_kv_heads * self.head_dim
    }
    /// GEMM FLOPs per token (2 × weight elements touched, lm_head included).
    pub fn flops_per_token(&self) -> f64 {
        let e = self.hidden_size as f64;
        let per_layer = e * (self.q_dim() + 2 * self.kv_dim()) as f64
            + self.q_dim() as f64 * e
            + 3.0 * e * self.intermediate_size as f64;
        2.0 * (per_layer * self.num_layers as f64 + e * self.vocab_size as f64)
    }

    /// Parameters (what the weights occupy, in elements).
    pub fn num_params(&self) -> usize {
        let e = self.hidden_size;
        let qkv = self.q_dim() + 2 * self.kv_dim();
        let per_layer = 2 * e
            + qkv * e
            + if self.qkv_bias { qkv } else { 0 }
            + e * self.q_dim()
            + 3 * e * self.intermediate_size;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * e
        };
        self.num_layers * per_layer + self.vocab_size * e + e + head
    }
}
