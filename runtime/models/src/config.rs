//! `config.json` of a Hugging Face model, validated: a config this runtime cannot run is
//! refused with an error naming the field.

use std::path::{Path, PathBuf};

use engine::model::config::Llama3Scaling;
use engine::model::{Arch, ModelConfig};
use serde_json::Value as Json;

use crate::error::ModelError;

struct Fields<'a> {
    v: &'a Json,
    path: &'a Path,
}

impl Fields<'_> {
    fn err(&self, field: &str, problem: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_path_buf(),
            field: field.to_string(),
            problem: problem.into(),
        }
    }
    fn usize(&self, field: &str) -> Result<usize, ModelError> {
        match self.v.get(field) {
            None | Some(Json::Null) => Err(self.err(field, "missing")),
            Some(x) => x
                .as_u64()
                .filter(|&n| n > 0)
                .map(|n| n as usize)
                .ok_or_else(|| self.err(field, format!("expected a positive integer, got {x}"))),
        }
    }
    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.v.get(field) {
            None | Some(Json::Null) => Ok(None),
            Some(_) => self.usize(field).map(Some),
        }
    }
    fn f64_or(&self, field: &str, default: f64) -> Result<f64, ModelError> {
        match self.v.get(field) {
            None | Some(Json::Null) => Ok(default),
            Some(x) => x
                .as_f64()
                .ok_or_else(|| self.err(field, format!("expected a number, got {x}"))),
        }
    }
}

/// Reads and validates the `config.json` at `path`.
pub fn from_file(path: &Path) -> Result<ModelConfig, ModelError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
    let v: Json = serde_json::from_str(&text)
        .map_err(|e| ModelError::format(path, format!("invalid JSON: {e}")))?;
    from_json(&v, path)
}

/// Validates a parsed `config.json` (`path` names it in errors).
pub fn from_json(v: &Json, path: &Path) -> Result<ModelConfig, ModelError> {
    let f = Fields { v, path };
    let model_type = v
        .get("model_type")
        .and_then(Json::as_str)
        .ok_or_else(|| f.err("model_type", "missing"))?;
    let arch = match model_type {
        "llama" | "mistral" => Arch::Llama,
        "qwen2" => Arch::Qwen2,
        other => {
            return Err(f.err(
                "model_type",
                format!("`{other}` is not supported (llama, mistral, qwen2)"),
            ))
        }
    };
    let hidden_size = f.usize("hidden_size")?;
    let num_heads = f.usize("num_attention_heads")?;
    let num_kv_heads = f.opt_usize("num_key_value_heads")?.unwrap_or(num_heads);
    if num_heads % num_kv_heads != 0 {
        return Err(f.err(
            "num_key_value_heads",
            format!("{num_kv_heads} does not divide num_attention_heads {num_heads}"),
        ));
    }
    let head_dim = match f.opt_usize("head_dim")? {
        Some(h) => h,
        None if hidden_size % num_heads == 0 => hidden_size / num_heads,
        None => return Err(f.err("head_dim", "missing and hidden_size / heads is not whole")),
    };
    if head_dim % 2 != 0 {
        return Err(f.err("head_dim", format!("{head_dim} is odd: RoPE needs pairs")));
    }
    if let Some(act) = v.get("hidden_act").and_then(Json::as_str) {
        if act != "silu" {
            return Err(f.err("hidden_act", format!("`{act}` is not supported (silu)")));
        }
    }
    let max_pos = f.opt_usize("max_position_embeddings")?.unwrap_or(4096);
    if let Some(w) = v.get("sliding_window").and_then(Json::as_u64) {
        let used = v
            .get("use_sliding_window")
            .and_then(Json::as_bool)
            .unwrap_or(true);
        if used && arch == Arch::Llama && (w as usize) < max_pos {
            return Err(f.err(
                "sliding_window",
                format!("sliding-window attention ({w} < {max_pos}) is not supported"),
            ));
        }
    }
    let rope_scaling = match v.get("rope_scaling") {
        None | Some(Json::Null) => None,
        Some(s) => {
            let kind = s
                .get("rope_type")
                .or_else(|| s.get("type"))
                .and_then(Json::as_str)
                .unwrap_or("");
            if kind != "llama3" {
                return Err(f.err(
                    "rope_scaling",
                    format!("rope type `{kind}` is not supported (llama3)"),
                ));
            }
            let g = Fields { v: s, path };
            Some(Llama3Scaling {
                factor: g.f64_or("factor", 8.0)?,
                low_freq_factor: g.f64_or("low_freq_factor", 1.0)?,
                high_freq_factor: g.f64_or("high_freq_factor", 4.0)?,
                original_max_position: g.f64_or("original_max_position_embeddings", 8192.0)?,
            })
        }
    };
    Ok(ModelConfig {
        arch,
        hidden_size,
        intermediate_size: f.usize("intermediate_size")?,
        num_layers: f.usize("num_hidden_layers")?,
        num_heads,
        num_kv_heads,
        head_dim,
        vocab_size: f.usize("vocab_size")?,
        rms_norm_eps: f.f64_or("rms_norm_eps", 1e-6)? as f32,
        rope_theta: f.f64_or("rope_theta", 10000.0)?,
        rope_scaling,
        max_position_embeddings: max_pos,
        tie_word_embeddings: v
            .get("tie_word_embeddings")
            .and_then(Json::as_bool)
            .unwrap_or(false),
        qkv_bias: arch == Arch::Qwen2
            || v.get("attention_bias")
                .and_then(Json::as_bool)
                .unwrap_or(false),
    })
}

/// The config file of a model directory.
pub fn config_path(dir: &Path) -> PathBuf {
    dir.join("config.json")
}
