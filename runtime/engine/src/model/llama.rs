//! The Llama-family model (Llama 2/3, SmolLM2, TinyLlama, Mistral, Qwen2), written once
//! against [`Backend`].
//!
//! Per layer: RMSNorm → fused QKV GEMM (+ bias for Qwen2) → RoPE, K/V written into the pages →
//! paged attention → output GEMM + residual → RMSNorm → fused gate/up GEMM → SiLU·up → down
//! GEMM + residual. All tokens of all sequences in a step go through each GEMM together.

use kernels::cpu::Rope;
use parking_lot::Mutex;

use super::config::ModelConfig;
use super::kv_cache::KvCache;
use super::scratch::ScratchPool;
use super::weights::{LoadError, WeightSource};
use super::Model;
use crate::backend::{Backend, BackendError, Batch, WeightDtype};

struct Layer<B: Backend> {
    input_norm: B::Buf,
    /// `[q | k | v]` rows: `[(heads + 2 kv_heads) × head_dim, hidden]`.
    qkv: B::Weight,
    qkv_bias: Option<B::Buf>,
    o: B::Weight,
    post_norm: B::Buf,
    /// `[gate | up]` rows: `[2 × intermediate, hidden]`.
    gate_up: B::Weight,
    down: B::Weight,
}

/// Buffers one forward pass takes from its `ScratchPool`: eight for the layers, three for
/// the logits.
const SCRATCH_BUFFERS: usize = 11;

pub struct LlamaModel<B: Backend> {
    pub config: ModelConfig,
    embed: B::Weight,
    layers: Vec<Layer<B>>,
    norm: B::Buf,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Weight>,
    rope: Rope,
    /// The last forward pass's buffers, for the next one.
    scratch: ScratchPool<B>,
    /// Host buffers for the logits, handed back by the engine (`Model::recycle_logits`).
    host_logits: Mutex<Vec<Vec<f32>>>,
}

fn concat(parts: Vec<Vec<f32>>) -> Vec<f32> {
    parts.concat()
}

impl<B: Backend> LlamaModel<B> {
    /// Loads the weights of `cfg` from `source` (Hugging Face names) onto `backend`, the
    /// matrices stored as `dtype`. Real and dummy weights both come this way, so the name
    /// mapping and the fusing of q/k/v and gate/up are the same for both.
    pub fn load(
        backend: &B,
        source: &dyn WeightSource,
        cfg: ModelConfig,
        dtype: WeightDtype,
    ) -> Result<Self, LoadError> {
        let t =
            |name: &str, shape: &[usize]| source.tensor(name, shape).map_err(LoadError::Weights);
        let mat = |v: Vec<f32>, cols: usize| backend.upload_weight(v, cols, dtype);
        let (e, i) = (cfg.hidden_size, cfg.intermediate_size);
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for l in 0..cfg.num_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            let qkv_bias = if cfg.qkv_bias {
                Some(backend.upload(concat(vec![
                    t(&p("self_attn.q_proj.bias"), &[qd])?,
                    t(&p("self_attn.k_proj.bias"), &[kvd])?,
                    t(&p("self_attn.v_proj.bias"), &[kvd])?,
                ]))?)
            } else {
                None
            };
            layers.push(Layer {
                input_norm: backend.upload(t(&p("input_layernorm.weight"), &[e])?)?,
                qkv: mat(
                    concat(vec![
                        t(&p("self_attn.q_proj.weight"), &[qd, e])?,
                        t(&p("self_attn.k_proj.weight"), &[kvd, e])?,
                        t(&p("self_attn.v_proj.weight"), &[kvd, e])?,
                    ]),
                    e,
                )?,
                qkv_bias,
                o: mat(t(&p("self_attn.o_proj.weight"), &[e, qd])?, qd)?,
                post_norm: backend.upload(t(&p("post_attention_layernorm.weight"), &[e])?)?,
                gate_up: mat(
                    concat(vec![
                        t(&p("mlp.gate_proj.weight"), &[i, e])?,
                        t(&p("mlp.up_proj.weight"), &[i, e])?,
                    ]),
                    e,
                )?,
                down: mat(t(&p("mlp.down_proj.weight"), &[e, i])?, i)?,
            });
        }
        let lm_head = if cfg.tie_word_embeddings && !source.contains("lm_head.weight") {
            None
        } else {
            Some(mat(t("lm_head.weight", &[cfg.vocab_size, e])?, e)?)
        };
        Ok(LlamaModel {
            embed: mat(t("model.embed_tokens.weight", &[cfg.vocab_size, e])?, e)?,
            norm: backend.upload(t("model.norm.weight", &[e])?)?,
            lm_head,
            layers,
            rope: Self::rope(&cfg),
            config: cfg,
            scratch: ScratchPool::new(SCRATCH_BUFFERS),
            host_logits: Mutex::new(Vec::new()),
        })
    }

    fn rope(cfg: &ModelConfig) -> Rope {
        Rope::new(
            cfg.head_dim,
            cfg.rope_theta,
            cfg.max_position_embeddings,
            cfg.rope_scaling,
        )
    }

    /// Runs every layer for every token of the batch and returns the logits of
    /// `batch.logit_rows`, `[rows, vocab]`, on the host.
    fn forward_pass(
        &self,
        b: &B,
        batch: &Batch,
        cache: &mut KvCache<B>,
    ) -> Result<Vec<f32>, BackendError> {
        let c = &self.config;
        let t = batch.num_tokens();
        let (e, inter) = (c.hidden_size, c.intermediate_size);
        let (qd, kvd) = (c.q_dim(), c.kv_dim());
        let sizes = [
            t * e,
            t * e,
            t * (qd + 2 * kvd),
            t * qd,
            t * qd,
            t * e,
            t * 2 * inter,
            t * inter,
        ];
        let take = |i: usize| self.scratch.take(b, sizes[i]);
        let [mut x, mut h, mut qkv, mut q, mut attn, mut proj, mut gu, mut act] = [
            take(0)?,
            take(1)?,
            take(2)?,
            take(3)?,
            take(4)?,
            take(5)?,
            take(6)?,
            take(7)?,
        ];
        b.embedding(&mut x, &self.embed, &batch.input_ids, e)?;
        let layout = cache.layout;
        let eps = c.rms_norm_eps;
        // `h` holds the normed input of the next matrix. Each block's closing residual add
        // and the next norm are one `add_rms_norm`, which leaves the normed rows in `proj`;
        // `h` and `proj` (both `t * e`) then trade places.
        if let Some(first) = self.layers.first() {
            b.rms_norm(&mut h, &x, &first.input_norm, eps, t * e)?;
        }
        for (i, (layer, lc)) in self.layers.iter().zip(cache.layers.iter_mut()).enumerate() {
            b.linear(
                &mut qkv,
                &h,
                &layer.qkv,
                layer.qkv_bias.as_ref(),
                t,
                e,
                qd + 2 * kvd,
            )?;
            b.qkv_rope_write_kv(
                &mut q,
                &qkv,
                &self.rope,
                batch,
                c.num_heads,
                &layout,
                &mut lc.k,
                &mut lc.v,
            )?;
            b.paged_attention(&mut attn, &q, &lc.k, &lc.v, &layout, c.num_heads, batch)?;
            b.linear(&mut proj, &attn, &layer.o, None, t, qd, e)?;
            b.add_rms_norm(&mut x, &mut proj, &layer.post_norm, eps, t * e)?;
            std::mem::swap(&mut h, &mut proj);
            b.gate_up_silu(&mut act, &mut gu, &h, &layer.gate_up, t, e, inter)?;
            b.linear(&mut proj, &act, &layer.down, None, t, inter, e)?;
            match self.layers.get(i + 1) {
                Some(next) => {
                    b.add_rms_norm(&mut x, &mut proj, &next.input_norm, eps, t * e)?;
                    std::mem::swap(&mut h, &mut proj);
                }
                None => b.add_inplace(&mut x, &proj, t * e)?,
            }
        }
        let rows = batch.logit_rows.len();
        let mut logits = Vec::new();
        if rows > 0 {
            let mut last = self.scratch.take(b, rows * e)?;
            b.gather_rows(&mut last, &x, &batch.logit_rows, e)?;
            let mut normed = self.scratch.take(b, rows * e)?;
            b.rms_norm(&mut normed, &last, &self.norm, eps, rows * e)?;
            let head = self.lm_head.as_ref().unwrap_or(&self.embed);
            let mut out = self.scratch.take(b, rows * c.vocab_size)?;
            b.linear(&mut out, &normed, head, None, rows, e, c.vocab_size)?;
            logits = self.host_logits.lock().pop().unwrap_or_default();
            b.download_into(&mut out, rows * c.vocab_size, &mut logits)?;
            for (n, buf) in [
                (rows * e, last),
                (rows * e, normed),
                (rows * c.vocab_size, out),
            ] {
                self.scratch.give(b, n, buf);
            }
        }
        for (n, buf) in sizes.into_iter().zip([x, h, qkv, q, attn, proj, gu, act]) {
            self.scratch.give(b, n, buf);
        }
        Ok(logits)
    }
}

impl<B: Backend> Model<B> for LlamaModel<B> {
    fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Positions with a RoPE angle.
    fn max_len(&self) -> usize {
        self.rope.max_pos()
    }

    fn forward(
        &self,
        backend: &B,
        batch: &Batch,
        cache: &mut KvCache<B>,
    ) -> Result<Vec<f32>, BackendError> {
        self.forward_pass(backend, batch, cache)
    }

    fn recycle_logits(&self, logits: Vec<f32>) {
        let mut pool = self.host_logits.lock();
        // One step's logits are in flight at a time; a second buffer covers a caller that
        // runs a pass before handing the last one back.
        if pool.len() < 2 {
            pool.push(logits);
        }
    }
}
