//! `--model dummy:<preset>`: random weights in the exact shape of a real model, for load tests
//! and benchmarks without a download, with a byte-level tokenizer so any text works.
//!
//! Weights are seeded and drawn uniformly with standard deviation 1/sqrt(fan-in) (LeCun
//! initialisation), norms are 1, biases 0: every layer then moves the residual stream about
//! as much as the embedding does, so the tokens depend on every layer. (With the 0.02 of
//! training-time initialisations, a tied-embedding dummy model just repeated its last token
//! whatever its layers computed, and a parity check between backends could not see a broken
//! attention kernel.)

use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value as Json};

use engine::model::{ModelConfig, SourceError, WeightSource};

use crate::error::ModelError;

/// The presets `dummy:` knows, as Hugging Face config fields.
pub fn preset(name: &str) -> Option<Json> {
    let llama = |hidden: usize,
                 inter: usize,
                 layers: usize,
                 heads: usize,
                 kv: usize,
                 vocab: usize,
                 theta: f64,
                 tie: bool| {
        json!({
            "model_type": "llama", "hidden_size": hidden, "intermediate_size": inter,
            "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv, "vocab_size": vocab, "rms_norm_eps": 1e-5,
            "rope_theta": theta, "max_position_embeddings": 8192,
            "tie_word_embeddings": tie, "hidden_act": "silu",
        })
    };
    Some(match name {
        "llama-3-8b" => llama(4096, 14336, 32, 32, 8, 128_256, 500_000.0, false),
        "llama-3.2-1b" => {
            let mut c = llama(2048, 8192, 16, 32, 8, 128_256, 500_000.0, true);
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 32.0,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192});
            c
        }
        "smollm2-135m" => llama(576, 1536, 30, 9, 3, 49_152, 100_000.0, true),
        // Two layers, 64 wide, over the byte-level vocabulary itself: a whole generation
        // takes milliseconds (Schemathesis, the request fuzzer, quick experiments).
        "tiny" => llama(64, 128, 2, 4, 2, 259, 10_000.0, true),
        "qwen2-0.5b" => json!({
            "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
            "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2,
            "vocab_size": 151_936, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
            "max_position_embeddings": 32768, "tie_word_embeddings": true, "hidden_act": "silu",
        }),
        _ => return None,
    })
}

pub const PRESETS: [&str; 5] = [
    "llama-3-8b",
    "llama-3.2-1b",
    "qwen2-0.5b",
    "smollm2-135m",
    "tiny",
];

/// The config of `dummy:<spec>`: a preset name or a path to a config.json.
pub fn dummy_config(spec: &str) -> Result<ModelConfig, ModelError> {
    match preset(spec) {
        Some(j) => crate::config::from_json(&j, Path::new(&format!("dummy:{spec}"))),
        None if Path::new(spec).is_file() => crate::config::from_file(Path::new(spec)),
        None => Err(ModelError::Other(format!(
            "dummy:{spec}: not a preset ({}) and not a config.json file",
            PRESETS.join(", ")
        ))),
    }
}

/// Seeded random weights for every tensor of a config, under the Hugging Face names a real
/// checkpoint uses, so dummy models load through the same code as real ones.
#[derive(Debug, Clone)]
pub struct DummyWeights {
    config: ModelConfig,
    seed: u64,
}

impl DummyWeights {
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        DummyWeights { config, seed }
    }
}

impl WeightSource for DummyWeights {
    /// Every tensor a checkpoint of this config has: biases only where the config has them,
    /// the LM head only when it is not tied to the embedding.
    fn contains(&self, name: &str) -> bool {
        if name == "lm_head.weight" {
            return !self.config.tie_word_embeddings;
        }
        !name.ends_with(".bias") || self.config.qkv_bias
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>, SourceError> {
        if !self.contains(name) {
            return Err(format!("dummy weights have no tensor `{name}`").into());
        }
        Ok(dummy_tensor(name, shape, self.seed))
    }
}

/// Deterministic weights for tensor `name` of `shape` (`[out, in]` for a matrix, whose fan-in
/// is its last dimension).
pub fn dummy_tensor(name: &str, shape: &[usize], seed: u64) -> Vec<f32> {
    let n: usize = shape.iter().product();
    if name.ends_with("norm.weight") {
        return vec![1.0; n];
    }
    if name.ends_with(".bias") {
        return vec![0.0; n];
    }
    let mut h = seed ^ 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    let mut rng = StdRng::seed_from_u64(h);
    // Uniform in ±a has standard deviation a / sqrt(3).
    let fan_in = shape.last().copied().unwrap_or(1).max(1) as f32;
    let a = (3.0 / fan_in).sqrt();
    (0..n).map(|_| rng.random_range(-a..a)).collect()
}

/// A byte-level BPE tokenizer with no merges (every byte one token) and ChatML specials,
/// as `tokenizer.json` text.
pub fn byte_level_tokenizer_json() -> String {
    // GPT-2's byte-to-unicode table: printable bytes map to themselves, the rest above 255.
    let mut vocab = serde_json::Map::new();
    let mut extra = 0u32;
    for b in 0u32..256 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let ch = if printable {
            char::from_u32(b)
        } else {
            extra += 1;
            char::from_u32(255 + extra)
        };
        vocab.insert(ch.unwrap_or('?').to_string(), json!(b));
    }
    let specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let added: Vec<Json> = specials
        .iter()
        .enumerate()
        .map(|(i, s)| {
            vocab.insert(s.to_string(), json!(256 + i));
            json!({"id": 256 + i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}
