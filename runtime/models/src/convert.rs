//! `pagedrt convert`: a GGUF file into a Hugging Face model directory.
//!
//! Every tensor is dequantized exactly to f32, Q/K projection rows of Llama-family models are
//! un-permuted (llama.cpp's converter interleaves the two rotary halves of each head; Hugging
//! Face's `rotate_half` wants them apart), names are mapped to Hugging Face names, and the
//! result is written as `model.safetensors` (f32 or bf16), `config.json`,
//! `generation_config.json`, `tokenizer.json` and `tokenizer_config.json`. The directory is
//! written under a temporary name and renamed at the end, so a crash leaves no half model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use half::bf16;
use serde_json::json;

use crate::error::ModelError;
use crate::gguf::{dequant, GgufFile, TensorInfo, Value};
use crate::gguf_tokenizer::{special_tokens, tokenizer_config_json, tokenizer_json};

/// Precision of the written weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutDtype {
    F32,
    Bf16,
}

impl std::str::FromStr for OutDtype {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        match s {
            "f32" | "float32" => Ok(OutDtype::F32),
            "bf16" | "bfloat16" => Ok(OutDtype::Bf16),
            _ => Err(ModelError::Other(format!("dtype '{s}' is not f32 or bf16"))),
        }
    }
}

/// The Hugging Face name of a GGUF tensor, for the architectures we convert.
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// Undoes llama.cpp's Q/K row permutation for `n_heads` heads. `rows` is the tensor as rows
/// of `row_len` values; within each head, GGUF row `2i + j` is Hugging Face row
/// `j * head_dim / 2 + i`.
pub fn unpermute_rows(data: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let n_rows = data.len() / row_len;
    let head_dim = n_rows / n_heads;
    let half = head_dim / 2;
    let mut out = vec![0.0; data.len()];
    for r in 0..n_rows {
        let (h, within) = (r / head_dim, r % head_dim);
        let hf_row = h * head_dim + (within % 2) * half + within / 2;
        out[hf_row * row_len..(hf_row + 1) * row_len]
            .copy_from_slice(&data[r * row_len..(r + 1) * row_len]);
    }
    out
}

struct Arch {
    name: &'static str,
    class: &'static str,
    /// Whether llama.cpp permuted Q/K rows on the way in.
    permuted_qk: bool,
}

fn arch(g: &GgufFile<impl AsRef<[u8]>>) -> Result<Arch, ModelError> {
    let a = g.require("general.architecture")?.as_str().unwrap_or("");
    match a {
        "llama" => Ok(Arch {
            name: "llama",
            class: "LlamaForCausalLM",
            permuted_qk: true,
        }),
        "qwen2" => Ok(Arch {
            name: "qwen2",
            class: "Qwen2ForCausalLM",
            permuted_qk: false,
        }),
        _ => Err(ModelError::format(
            &g.path,
            format!("general.architecture `{a}` is not supported (llama, qwen2)"),
        )),
    }
}

/// The model's shape, read from GGUF metadata.
struct Shape {
    hidden: usize,
    heads: usize,
    kv_heads: usize,
}

fn config_json(
    g: &GgufFile<impl AsRef<[u8]>>,
    a: &Arch,
    dtype: OutDtype,
) -> Result<(serde_json::Value, Shape), ModelError> {
    let key = |k: &str| format!("{}.{k}", a.name);
    let int = |k: &str| g.require_u64(&key(k)).map(|v| v as usize);
    let float = |k: &str, default: f64| g.get(&key(k)).and_then(Value::as_f64).unwrap_or(default);
    let hidden = int("embedding_length")?;
    let heads = int("attention.head_count")?;
    let kv_heads = g
        .get(&key("attention.head_count_kv"))
        .and_then(Value::as_u64)
        .map_or(heads, |v| v as usize);
    if heads == 0 || kv_heads == 0 || hidden % heads != 0 || heads % kv_heads != 0 {
        return Err(ModelError::format(
            &g.path,
            format!("inconsistent heads: hidden {hidden}, heads {heads}, kv heads {kv_heads}"),
        ));
    }
    let head_dim = g
        .get(&key("attention.key_length"))
        .and_then(Value::as_u64)
        .map_or(hidden / heads, |v| v as usize);
    let vocab = g
        .require("tokenizer.ggml.tokens")?
        .as_array()
        .map_or(0, |a| a.len());
    if g.tensor("rope_freqs.weight").is_some() {
        return Err(ModelError::format(
            &g.path,
            "rope_freqs.weight (Llama 3.1 rope scaling baked into a tensor) is not supported yet",
        ));
    }
    let sp = special_tokens(g);
    let cfg = json!({
        "architectures": [a.class],
        "model_type": a.name,
        "hidden_size": hidden,
        "intermediate_size": int("feed_forward_length")?,
        "num_hidden_layers": int("block_count")?,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": float("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": float("rope.freq_base", 10000.0),
        "max_position_embeddings": int("context_length")?,
        "vocab_size": vocab,
        "tie_word_embeddings": g.tensor("output.weight").is_none(),
        "bos_token_id": sp.bos,
        "eos_token_id": sp.eos,
        "torch_dtype": match dtype { OutDtype::F32 => "float32", OutDtype::Bf16 => "bfloat16" },
    });
    Ok((
        cfg,
        Shape {
            hidden,
            heads,
            kv_heads,
        },
    ))
}

fn convert_tensor(
    g: &GgufFile<impl AsRef<[u8]>>,
    t: &TensorInfo,
    a: &Arch,
    shape: &Shape,
) -> Result<Vec<f32>, ModelError> {
    let bytes = g.tensor_bytes(t)?;
    let mut data = dequant::dequantize(t.ty, bytes, t.num_elements() as usize).map_err(|u| {
        ModelError::tensor(
            &g.path,
            &t.name,
            format!(
                "tensor type {:?} is not supported (F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                u.0
            ),
        )
    })?;
    let heads = if t.name.ends_with("attn_q.weight") {
        Some(shape.heads)
    } else if t.name.ends_with("attn_k.weight") {
        Some(shape.kv_heads)
    } else {
        None
    };
    if let (true, Some(h)) = (a.permuted_qk, heads) {
        let row_len = t.dims[0] as usize;
        let rows = (t.num_elements() as usize)
            .checked_div(row_len)
            .unwrap_or(0);
        if row_len == 0
            || rows == 0
            || !rows.is_multiple_of(h)
            || !(rows / h).is_multiple_of(2)
            || row_len != shape.hidden
        {
            return Err(ModelError::tensor(
                &g.path,
                &t.name,
                format!(
                    "shape {:?} does not fit {h} heads of hidden {}",
                    t.shape(),
                    shape.hidden
                ),
            ));
        }
        data = unpermute_rows(&data, h, row_len);
    }
    Ok(data)
}

fn to_bytes(data: &[f32], dtype: OutDtype) -> Vec<u8> {
    match dtype {
        OutDtype::F32 => data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        OutDtype::Bf16 => data
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect(),
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> Result<(), ModelError> {
    let text = serde_json::to_string_pretty(v).map_err(|e| ModelError::Other(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| ModelError::io(path, e))
}

/// Converts `gguf_path` into a model directory at `out_dir` (which must not exist yet).
/// `progress` is called with (tensors done, tensors in all).
pub fn convert_gguf(
    gguf_path: &Path,
    out_dir: &Path,
    dtype: OutDtype,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<(), ModelError> {
    if out_dir.exists() {
        return Err(ModelError::Other(format!(
            "{}: already exists; remove it or choose another directory",
            out_dir.display()
        )));
    }
    let file = std::fs::File::open(gguf_path).map_err(|e| ModelError::io(gguf_path, e))?;
    // SAFETY: the map is read-only and the file is not modified while we hold it.
    let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| ModelError::io(gguf_path, e))?;
    let g = GgufFile::parse(gguf_path, &map[..])?;
    let a = arch(&g)?;
    let (config, shape) = config_json(&g, &a, dtype)?;
    let tok = tokenizer_json(&g)?;
    let tok_cfg = tokenizer_config_json(&g)?;

    let tmp = tmp_sibling(out_dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| ModelError::io(&tmp, e))?;
    let res = (|| {
        let mut tensors: BTreeMap<String, (Vec<usize>, Vec<u8>)> = BTreeMap::new();
        let total = g.tensors.len();
        for (i, t) in g.tensors.iter().enumerate() {
            let name = hf_name(&t.name).ok_or_else(|| {
                ModelError::tensor(gguf_path, &t.name, "no Hugging Face name for this tensor")
            })?;
            let data = convert_tensor(&g, t, &a, &shape)?;
            tensors.insert(name, (t.shape(), to_bytes(&data, dtype)));
            progress(i + 1, total);
        }
        let st_dtype = match dtype {
            OutDtype::F32 => safetensors::Dtype::F32,
            OutDtype::Bf16 => safetensors::Dtype::BF16,
        };
        let views = tensors
            .iter()
            .map(|(n, (s, b))| {
                safetensors::tensor::TensorView::new(st_dtype, s.clone(), b)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| ModelError::tensor(gguf_path, n, e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let st_path = tmp.join("model.safetensors");
        let meta = Some([("format".to_string(), "pt".to_string())].into());
        safetensors::tensor::serialize_to_file(views, &meta, &st_path)
            .map_err(|e| ModelError::format(&st_path, e.to_string()))?;
        write_json(&tmp.join("config.json"), &config)?;
        write_json(
            &tmp.join("generation_config.json"),
            &json!({"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}),
        )?;
        write_json(&tmp.join("tokenizer.json"), &tok)?;
        write_json(&tmp.join("tokenizer_config.json"), &tok_cfg)?;
        std::fs::rename(&tmp, out_dir).map_err(|e| ModelError::io(out_dir, e))
    })();
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res
}

/// A temporary name next to `dir` (same filesystem, so the final rename is atomic).
pub fn tmp_sibling(dir: &Path) -> PathBuf {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    dir.with_file_name(format!(".{name}.partial-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_undoes_llama_cpp_permutation() {
        // 2 heads of head_dim 4, rows of length 1: HF rows are 0..8.
        let hf: Vec<f32> = (0..8).map(|x| x as f32).collect();
        // llama.cpp: reshape(heads, 2, hd/2) -> swap axes -> (heads, hd/2, 2).
        let mut gguf = vec![0.0; 8];
        for h in 0..2 {
            for i in 0..2 {
                for j in 0..2 {
                    gguf[h * 4 + i * 2 + j] = hf[h * 4 + j * 2 + i];
                }
            }
        }
        assert_eq!(gguf, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(unpermute_rows(&gguf, 2, 1), hf);
        // Rows of several values move whole.
        let wide: Vec<f32> = gguf.iter().flat_map(|&v| [v, v + 0.5]).collect();
        let back = unpermute_rows(&wide, 2, 2);
        assert_eq!(back[2..4], [1.0, 1.5]);
    }

    #[test]
    fn names_map_to_hugging_face() {
        assert_eq!(
            hf_name("blk.12.attn_q.weight").as_deref(),
            Some("model.layers.12.self_attn.q_proj.weight")
        );
        assert_eq!(
            hf_name("blk.0.attn_k.bias").as_deref(),
            Some("model.layers.0.self_attn.k_proj.bias")
        );
        assert_eq!(
            hf_name("token_embd.weight").as_deref(),
            Some("model.embed_tokens.weight")
        );
        assert_eq!(hf_name("blk.x.attn_q.weight"), None);
        assert_eq!(hf_name("blk.1.ssm_conv.weight"), None);
    }
}
