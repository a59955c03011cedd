//! How long a step takes, as a function of its plan.
//!
//! `time = step_overhead + prefill_tokens × per_prefill_token + decode_seqs × per_decode_seq
//!        + context_tokens × per_context_token + prefill_pairs × per_prefill_attention_pair
//!        + swap_bytes × per_swap_byte`
//!
//! `prefill_pairs` counts (query, key) pairs of prefill chunks: a chunk of n tokens after s
//! cached ones attends n·s + n(n+1)/2 pairs, which dominates long prompts on a CPU.
//!
//! Small batches can follow a different law: a CPU engine multiplies up to a few rows by
//! streaming the weights once (matrix-vector style), so below `small_batch_rows` rows
//! (prefill tokens + decoding sequences) a step costs `step_overhead + rows ×
//! small_batch_per_row_s` (plus attention), and above it pays `gemm_switch_s` on top of the
//! per-token and per-sequence terms. `small_batch_rows = 0` (the presets) means one law.
//!
//! The presets are derived from rooflines (weights read once per step from memory, GEMM
//! FLOPs at the measured tensor rate, K/V bytes read per attended token, swap over PCIe);
//! `pagedrt bench calibrate` fits the same form to real engine runs.

use serde::{Deserialize, Serialize};

use super::error::SimError;
use crate::plan::StepPlan;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostModel {
    pub name: String,
    /// Fixed cost per step: reading every weight once, launches, host work.
    pub step_overhead_s: f64,
    /// GEMM time per prefill token.
    pub per_prefill_token_s: f64,
    /// GEMM + sampling time per decoding sequence.
    pub per_decode_seq_s: f64,
    /// Attention time per context token read (K and V of every layer).
    pub per_context_token_s: f64,
    /// Attention time per (query, key) pair of a prefill chunk (0 in the roofline presets,
    /// where prefill attention hides under the GEMMs).
    #[serde(default)]
    pub per_prefill_attention_pair_s: f64,
    /// Steps of at most this many rows (prefill tokens + decoding sequences) use the
    /// small-batch law; 0: none do.
    #[serde(default)]
    pub small_batch_rows: usize,
    /// Cost per row of a small-batch step (replacing the per-token and per-sequence terms).
    #[serde(default)]
    pub small_batch_per_row_s: f64,
    /// Extra fixed cost of a step above `small_batch_rows` (the switch to blocked GEMMs).
    #[serde(default)]
    pub gemm_switch_s: f64,
    /// Swap transfer time per byte.
    pub per_swap_byte_s: f64,
    /// K/V bytes per token (all layers), to turn swapped pages into bytes.
    pub kv_bytes_per_token: f64,
    /// KV-cache capacity in tokens on this hardware, when the preset knows it.
    #[serde(default)]
    pub kv_capacity_tokens: Option<usize>,
}

impl CostModel {
    /// Seconds for one step of `plan`, with pages of `block_size` tokens.
    pub fn step_time(&self, plan: &StepPlan, block_size: usize) -> f64 {
        let swapped_pages = plan.swap_in.len() + plan.swap_out.len();
        let swap_bytes = swapped_pages as f64 * block_size as f64 * self.kv_bytes_per_token;
        self.compute_time(
            plan.num_prefill_tokens(),
            plan.num_decode_seqs(),
            plan.num_context_tokens(),
            plan.num_prefill_attention_pairs(),
        ) + swap_bytes * self.per_swap_byte_s
    }

    /// Seconds for a step's forward pass from its counts (what a step log records):
    /// `prefill` tokens, `decodes` decoding sequences, `context_tokens` attended and
    /// `prefill_pairs` (query, key) pairs within prefill chunks; no swapping.
    pub fn compute_time(
        &self,
        prefill: usize,
        decodes: usize,
        context_tokens: usize,
        prefill_pairs: usize,
    ) -> f64 {
        let rows = if prefill + decodes <= self.small_batch_rows {
            (prefill + decodes) as f64 * self.small_batch_per_row_s
        } else {
            self.gemm_switch_s
                + prefill as f64 * self.per_prefill_token_s
                + decodes as f64 * self.per_decode_seq_s
        };
        self.step_overhead_s
            + rows
            + context_tokens as f64 * self.per_context_token_s
            + prefill_pairs as f64 * self.per_prefill_attention_pair_s
    }

    /// Llama-3-8B in bf16 on one H100 SXM: 16.1 GB of weights at the ~3.0 TB/s measured
    /// copy bandwidth; 2 × 8.03 GFLOP per token at ~790 TFLOP/s; 128 KiB of K/V per token
    /// (32 layers × 8 KV heads × 128 × 2 × 2 bytes); PCIe 5 at ~25 GB/s; (80 GB × 0.9 −
    /// 16.1 GB) of KV cache.
    pub fn h100_llama3_8b() -> Self {
        let kv = 32.0 * 8.0 * 128.0 * 2.0 * 2.0;
        let per_token = 2.0 * 8.03e9 / 790e12;
        CostModel {
            name: "h100-llama3-8b".into(),
            step_overhead_s: 16.06e9 / 3.0e12,
            per_prefill_token_s: per_token,
            per_decode_seq_s: per_token,
            per_context_token_s: kv / 3.0e12,
            per_prefill_attention_pair_s: 0.0,
            small_batch_rows: 0,
            small_batch_per_row_s: 0.0,
            gemm_switch_s: 0.0,
            per_swap_byte_s: 1.0 / 25e9,
            kv_bytes_per_token: kv,
            kv_capacity_tokens: Some(((80e9 * 0.9 - 16.06e9) / kv) as usize),
        }
    }

    /// SmolLM2-135M in f32 on this project's 2-core CPU: 0.54 GB of weights at ~27 GB/s;
    /// 270 MFLOP per token at ~140 GFLOP/s; 45 KiB of K/V per token (30 layers × 3 KV heads ×
    /// 64 × 2 × 4 bytes); 2 GiB of KV cache.
    pub fn cpu_smollm2_135m() -> Self {
        let kv = 30.0 * 3.0 * 64.0 * 2.0 * 4.0;
        let per_token = 270e6 / 140e9;
        CostModel {
            name: "cpu-smollm2-135m".into(),
            step_overhead_s: 0.54e9 / 27e9,
            per_prefill_token_s: per_token,
            per_decode_seq_s: per_token,
            per_context_token_s: kv / 27e9,
            per_prefill_attention_pair_s: 0.0,
            small_batch_rows: 0,
            small_batch_per_row_s: 0.0,
            gemm_switch_s: 0.0,
            per_swap_byte_s: 1.0 / 10e9,
            kv_bytes_per_token: kv,
            kv_capacity_tokens: Some((2.0 * 1024f64.powi(3) / kv) as usize),
        }
    }

    /// The same cost for every step (for checks with closed-form answers).
    pub fn constant(step_s: f64) -> Self {
        CostModel {
            name: format!("constant-{step_s}"),
            step_overhead_s: step_s,
            per_prefill_token_s: 0.0,
            per_decode_seq_s: 0.0,
            per_context_token_s: 0.0,
            per_prefill_attention_pair_s: 0.0,
            small_batch_rows: 0,
            small_batch_per_row_s: 0.0,
            gemm_switch_s: 0.0,
            per_swap_byte_s: 0.0,
            kv_bytes_per_token: 0.0,
            kv_capacity_tokens: None,
        }
    }

    /// The same model on a machine `factor` times slower (every time coefficient scaled;
    /// the KV geometry unchanged). What `pagedrt simulate --cost-scale` runs, to ask what a
    /// measured drift in the machine's speed does to latency without refitting.
    pub fn scaled(&self, factor: f64) -> Self {
        CostModel {
            name: format!("{} x{factor}", self.name),
            step_overhead_s: self.step_overhead_s * factor,
            per_prefill_token_s: self.per_prefill_token_s * factor,
            per_decode_seq_s: self.per_decode_seq_s * factor,
            per_context_token_s: self.per_context_token_s * factor,
            per_prefill_attention_pair_s: self.per_prefill_attention_pair_s * factor,
            small_batch_per_row_s: self.small_batch_per_row_s * factor,
            gemm_switch_s: self.gemm_switch_s * factor,
            per_swap_byte_s: self.per_swap_byte_s * factor,
            ..self.clone()
        }
    }

    /// The names [`Self::preset`] knows.
    pub const PRESETS: [&'static str; 2] = ["h100-llama3-8b", "cpu-smollm2-135m"];

    /// A built-in cost model by name (see [`Self::PRESETS`]).
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "h100-llama3-8b" => Some(Self::h100_llama3_8b()),
            "cpu-smollm2-135m" => Some(Self::cpu_smollm2_135m()),
            _ => None,
        }
    }

    /// A cost model from its JSON document (as `pagedrt bench calibrate` writes it); `name`
    /// (where the text came from) goes into the error.
    pub fn from_json(name: &str, text: &str) -> Result<Self, SimError> {
        serde_json::from_str(text).map_err(|e| SimError::BadCostModel {
            name: name.to_string(),
            problem: e.to_string(),
        })
    }
}
