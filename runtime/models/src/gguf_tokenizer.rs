//! Builds a Hugging Face `tokenizer.json` (and `tokenizer_config.json`) from a GGUF's
//! vocabulary.
//!
//! GGUF's `gpt2`-style tokenizers store the byte-level vocabulary and merges exactly as
//! Hugging Face does (`Ġ` for a space, and so on), so they carry over unchanged. What GGUF
//! keeps only as a name is the pre-tokenizer (`tokenizer.ggml.pre`): each name we know maps to
//! its Hugging Face pre-tokenizer; an unknown name is an error, never a silent guess, since a
//! wrong split gives wrong token ids everywhere.

use serde_json::{json, Map, Value as Json};

use crate::error::ModelError;
use crate::gguf::{GgufFile, Value};

/// The split regex of Llama 3's tokenizer (numbers in groups of up to 3 digits).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's: like Llama 3's but every digit alone.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Json {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Json {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

/// The Hugging Face pre-tokenizer for a `tokenizer.ggml.pre` name.
pub fn pre_tokenizer(pre: &str) -> Option<Json> {
    Some(match pre {
        // GPT-2's own regex inside ByteLevel.
        "gpt2" | "default" => byte_level(true),
        // SmolLM: every digit split off, then GPT-2's regex.
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level(true),
        ]}),
        "llama-bpe" | "llama3" | "smaug-bpe" => json!({"type": "Sequence", "pretokenizers": [
            split(LLAMA3_SPLIT),
            byte_level(false),
        ]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(QWEN2_SPLIT),
            byte_level(false),
        ]}),
        _ => return None,
    })
}

const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

fn strings<'a>(g: &'a GgufFile<impl AsRef<[u8]>>, key: &str) -> Result<Vec<&'a str>, ModelError> {
    let arr = g
        .require(key)?
        .as_array()
        .ok_or_else(|| ModelError::format(&g.path, format!("`{key}` is not an array")))?;
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| ModelError::format(&g.path, format!("`{key}` holds a non-string")))
        })
        .collect()
}

/// The special-token ids named in the GGUF metadata.
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub add_bos: bool,
}

pub fn special_tokens(g: &GgufFile<impl AsRef<[u8]>>) -> SpecialTokens {
    let id = |k: &str| g.get(k).and_then(Value::as_u64).map(|v| v as u32);
    SpecialTokens {
        bos: id("tokenizer.ggml.bos_token_id"),
        eos: id("tokenizer.ggml.eos_token_id"),
        add_bos: g
            .get("tokenizer.ggml.add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// `tokenizer.json` for a GGUF with a `gpt2` (byte-level BPE) tokenizer.
pub fn tokenizer_json(g: &GgufFile<impl AsRef<[u8]>>) -> Result<Json, ModelError> {
    let model = g
        .require("tokenizer.ggml.model")?
        .as_str()
        .unwrap_or_default();
    if model != "gpt2" {
        return Err(ModelError::format(
            &g.path,
            format!(
                "tokenizer.ggml.model `{model}` is not supported (only byte-level BPE, `gpt2`)"
            ),
        ));
    }
    let pre_name = g
        .get("tokenizer.ggml.pre")
        .and_then(Value::as_str)
        .unwrap_or("default");
    let pre = pre_tokenizer(pre_name).ok_or_else(|| {
        ModelError::format(
            &g.path,
            format!(
                "tokenizer.ggml.pre `{pre_name}` is not a known pre-tokenizer (known: gpt2, \
                 default, smollm, llama-bpe, llama3, smaug-bpe, qwen2)"
            ),
        )
    })?;
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let types: Vec<i64> = match g.get("tokenizer.ggml.token_type").and_then(Value::as_array) {
        Some(a) => a
            .iter()
            .map(|v| match *v {
                Value::I32(x) => x as i64,
                _ => v.as_u64().map_or(1, |x| x as i64),
            })
            .collect(),
        None => vec![1; tokens.len()],
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert(tok.to_string(), json!(id));
        let ty = types.get(id).copied().unwrap_or(1);
        if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL,
            }));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre,
        "post_processor": null,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab,
            "merges": merges,
        }
    }))
}

/// `tokenizer_config.json`: special tokens, `add_bos_token`, and the chat template.
pub fn tokenizer_config_json(g: &GgufFile<impl AsRef<[u8]>>) -> Result<Json, ModelError> {
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let sp = special_tokens(g);
    let name = |id: Option<u32>| id.and_then(|i| tokens.get(i as usize).map(|s| s.to_string()));
    let mut cfg = json!({
        "add_bos_token": sp.add_bos,
        "add_eos_token": false,
        "bos_token": name(sp.bos),
        "eos_token": name(sp.eos),
        "clean_up_tokenization_spaces": false,
        "model_max_length": g.get(&format!("{}.context_length",
            g.get("general.architecture").and_then(Value::as_str).unwrap_or("llama")))
            .and_then(Value::as_u64).unwrap_or(2048),
    });
    if let Some(t) = g.get("tokenizer.chat_template").and_then(Value::as_str) {
        cfg["chat_template"] = json!(t);
    }
    Ok(cfg)
}
