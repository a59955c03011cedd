//! GGUF import on a small synthetic Llama (built here, so every expected value is known),
//! and the errors a corrupt GGUF, safetensors file or config gives.

use engine::backend::cpu::CpuBackend;
use engine::model::LlamaModel;
use half::f16;
use models::convert::{convert_gguf, OutDtype};
use models::gguf::writer::{write_gguf, RawTensor};
use models::gguf::{GgmlType, GgufFile, Value};
use models::tokenizer::Tokenizer;
use models::weights::WeightFiles;
use std::path::Path;

/// Loads a model directory through the same code as every command.
fn load_dir(dir: &Path) -> Result<LlamaModel<CpuBackend>, models::ModelError> {
    let source = models::resolve::ModelSource::Dir(dir.to_path_buf());
    models::load_model(&CpuBackend, &source, 0, engine::backend::WeightDtype::F32).map(|(m, _)| m)
}

const HIDDEN: usize = 32;
const HEADS: usize = 2;
const HEAD_DIM: usize = 16;
const INTER: usize = 32;
const VOCAB: usize = 5;

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// llama.cpp's permutation of Q/K rows (HF rotate_half order → interleaved).
fn permute(rows: &[f32], n_heads: usize, row_len: usize) -> Vec<f32> {
    let n = rows.len() / row_len;
    let hd = n / n_heads;
    let mut out = vec![0.0; rows.len()];
    for h in 0..n_heads {
        for i in 0..hd / 2 {
            for j in 0..2 {
                let src = h * hd + j * (hd / 2) + i;
                let dst = h * hd + i * 2 + j;
                out[dst * row_len..(dst + 1) * row_len]
                    .copy_from_slice(&rows[src * row_len..(src + 1) * row_len]);
            }
        }
    }
    out
}

/// Q4_1 blocks with d = 1, m = 0 for values in 0..16 (exact).
fn q4_1(values: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for blk in values.chunks(32) {
        out.extend(f16::from_f32(1.0).to_le_bytes());
        out.extend(f16::from_f32(0.0).to_le_bytes());
        for j in 0..16 {
            out.push(blk[j] as u8 | ((blk[j + 16] as u8) << 4));
        }
    }
    out
}

/// Q8_0 blocks with d = 0.5 for values in -64..64 (exact).
fn q8_0(values: &[f32]) -> Vec<u8> {
    let mut out = vec![];
    for blk in values.chunks(32) {
        out.extend(f16::from_f32(0.5).to_le_bytes());
        out.extend(blk.iter().map(|v| (v / 0.5) as i8 as u8));
    }
    out
}

struct Tiny {
    wq: Vec<f32>,
    wk: Vec<f32>,
    embed: Vec<f32>,
    bytes: Vec<u8>,
}

fn tiny() -> Tiny {
    tiny_with(|_| {})
}

/// [`tiny`] with its tensor list edited by `edit` before the file is written.
fn tiny_with(edit: impl Fn(&mut Vec<RawTensor>)) -> Tiny {
    let wq: Vec<f32> = (0..HIDDEN * HIDDEN)
        .map(|i| ((i * 7) % 16) as f32)
        .collect();
    let wk: Vec<f32> = (0..HEAD_DIM * HIDDEN)
        .map(|i| (i % 11) as f32 * 0.25)
        .collect();
    let embed: Vec<f32> = (0..VOCAB * HIDDEN)
        .map(|i| ((i % 50) as f32 - 25.0) * 0.5)
        .collect();
    let t = |name: &str, dims: Vec<u64>, ty, data| RawTensor {
        name: name.into(),
        dims,
        ty,
        data,
    };
    let h = HIDDEN as u64;
    let mut tensors = vec![
        t(
            "token_embd.weight",
            vec![h, VOCAB as u64],
            GgmlType::Q8_0,
            q8_0(&embed),
        ),
        t(
            "output_norm.weight",
            vec![h],
            GgmlType::F32,
            f32_bytes(&[1.0; HIDDEN]),
        ),
        t(
            "blk.0.attn_norm.weight",
            vec![h],
            GgmlType::F32,
            f32_bytes(&[1.0; HIDDEN]),
        ),
        t(
            "blk.0.ffn_norm.weight",
            vec![h],
            GgmlType::F32,
            f32_bytes(&[1.0; HIDDEN]),
        ),
        t(
            "blk.0.attn_q.weight",
            vec![h, h],
            GgmlType::Q4_1,
            q4_1(&permute(&wq, HEADS, HIDDEN)),
        ),
        t(
            "blk.0.attn_k.weight",
            vec![h, HEAD_DIM as u64],
            GgmlType::F32,
            f32_bytes(&permute(&wk, 1, HIDDEN)),
        ),
        t(
            "blk.0.attn_v.weight",
            vec![h, HEAD_DIM as u64],
            GgmlType::F32,
            f32_bytes(&[0.01; HEAD_DIM * HIDDEN]),
        ),
        t(
            "blk.0.attn_output.weight",
            vec![h, h],
            GgmlType::F32,
            f32_bytes(&[0.01; HIDDEN * HIDDEN]),
        ),
        t(
            "blk.0.ffn_gate.weight",
            vec![h, INTER as u64],
            GgmlType::F32,
            f32_bytes(&[0.01; HIDDEN * INTER]),
        ),
        t(
            "blk.0.ffn_up.weight",
            vec![h, INTER as u64],
            GgmlType::F32,
            f32_bytes(&[0.01; HIDDEN * INTER]),
        ),
        t(
            "blk.0.ffn_down.weight",
            vec![INTER as u64, h],
            GgmlType::F32,
            f32_bytes(&[0.01; HIDDEN * INTER]),
        ),
    ];
    edit(&mut tensors);
    let s = |x: &str| Value::String(x.into());
    let tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ"];
    let meta = vec![
        ("general.architecture", s("llama")),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(HIDDEN as u32)),
        ("llama.block_count", Value::U32(1)),
        ("llama.feed_forward_length", Value::U32(INTER as u32)),
        ("llama.attention.head_count", Value::U32(HEADS as u32)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("tokenizer.ggml.model", s("gpt2")),
        ("tokenizer.ggml.pre", s("smollm")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens.iter().map(|x| s(x)).collect()),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(vec![
                Value::I32(3),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
                Value::I32(1),
            ]),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![s("a b")])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    Tiny {
        wq,
        wk,
        embed,
        bytes: write_gguf(&meta, &tensors),
    }
}

#[test]
fn a_synthetic_gguf_converts_exactly() {
    let t = tiny();
    let dir = crate::common::tmp("ok");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, &t.bytes).unwrap();
    let out = dir.join("model");
    convert_gguf(&gguf, &out, OutDtype::F32, &mut |_, _| {}).unwrap();
    let cfg = models::config::from_file(&out.join("config.json")).unwrap();
    assert_eq!(
        (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim),
        (HEADS, 1, HEAD_DIM)
    );
    assert!(cfg.tie_word_embeddings);
    assert_eq!(cfg.rms_norm_eps, 1e-5);
    let w = WeightFiles::open(&out).unwrap();
    // Q4_1 dequantized and un-permuted back to Hugging Face order, exactly.
    assert_eq!(
        w.f32("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN])
            .unwrap(),
        t.wq
    );
    assert_eq!(
        w.f32(
            "model.layers.0.self_attn.k_proj.weight",
            &[HEAD_DIM, HIDDEN]
        )
        .unwrap(),
        t.wk
    );
    assert_eq!(
        w.f32("model.embed_tokens.weight", &[VOCAB, HIDDEN])
            .unwrap(),
        t.embed
    );
    let tok = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(tok.encode("ab").unwrap(), vec![3]);
    assert_eq!(tok.encode("<|endoftext|>a").unwrap(), vec![0, 1]);
    load_dir(&out).unwrap();
    // bf16 output and a second convert into the same place.
    let e = convert_gguf(&gguf, &out, OutDtype::Bf16, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
    convert_gguf(&gguf, &dir.join("bf16"), OutDtype::Bf16, &mut |_, _| {}).unwrap();
    let wb = WeightFiles::open(&dir.join("bf16")).unwrap();
    assert_eq!(
        wb.f32("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN])
            .unwrap(),
        t.wq
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn parse_err(bytes: &[u8]) -> String {
    match GgufFile::parse(Path::new("bad.gguf"), bytes) {
        Ok(_) => panic!("corrupt GGUF parsed"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn corrupt_gguf_files_give_errors_naming_file_and_problem() {
    let t = tiny();
    let mut bad = t.bytes.clone();
    bad[0] = b'X';
    assert!(parse_err(&bad).contains("bad.gguf: bad magic"));
    for cut in [3, 10, 40, 300, t.bytes.len() - 1] {
        let e = parse_err(&t.bytes[..cut]);
        assert!(
            e.contains("bad.gguf") && e.contains("truncated"),
            "cut {cut}: {e}"
        );
    }
    // The last tensor's data runs past the end: the error names the tensor.
    let e = parse_err(&t.bytes[..t.bytes.len() - 40]);
    assert!(e.contains("blk.0.ffn_down.weight"), "{e}");
    let mut v1 = t.bytes.clone();
    v1[4] = 1;
    assert!(parse_err(&v1).contains("version 1"));
    // One tensor of an unknown type 99.
    let mut raw = b"GGUF".to_vec();
    raw.extend(3u32.to_le_bytes());
    raw.extend(1u64.to_le_bytes());
    raw.extend(0u64.to_le_bytes());
    raw.extend(3u64.to_le_bytes());
    raw.extend(b"odd");
    raw.extend(1u32.to_le_bytes());
    raw.extend(32u64.to_le_bytes());
    raw.extend(99u32.to_le_bytes());
    raw.extend(0u64.to_le_bytes());
    let e = parse_err(&raw);
    assert!(
        e.contains("`odd`") && e.contains("unknown tensor type 99"),
        "{e}"
    );
}

/// Found by the `convert_gguf` fuzz target: a Q/K tensor with a zero dimension divided by
/// zero while un-permuting its rows.
#[test]
fn a_zero_dimension_is_an_error_naming_the_tensor() {
    let t = tiny_with(|ts| {
        let q = ts
            .iter_mut()
            .find(|t| t.name == "blk.0.attn_q.weight")
            .unwrap();
        q.dims = vec![0, HIDDEN as u64];
        q.data.clear();
    });
    let dir = crate::common::tmp("gguf-zero-dim");
    let gguf = dir.join("zero.gguf");
    std::fs::write(&gguf, &t.bytes).unwrap();
    let out = dir.join("out");
    let e = convert_gguf(&gguf, &out, OutDtype::F32, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("blk.0.attn_q.weight") && e.contains("zero.gguf"),
        "{e}"
    );
    assert!(!out.exists());
}

#[test]
fn random_mutations_of_a_gguf_never_panic_the_parser() {
    // A stable-toolchain stand-in for the cargo-fuzz target (runtime/fuzz): flipped bytes,
    // truncations and garbage lengths must give errors, not panics or huge allocations.
    let t = tiny();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..20_000 {
        let mut b = t.bytes.clone();
        for _ in 0..1 + next() % 4 {
            let i = (next() % b.len() as u64) as usize;
            b[i] = next() as u8;
        }
        let cut = if next() % 4 == 0 {
            (next() % b.len() as u64) as usize
        } else {
            b.len()
        };
        if let Ok(g) = GgufFile::parse(Path::new("m.gguf"), &b[..cut]) {
            for ti in &g.tensors {
                let _ = g.tensor_bytes(ti);
            }
        }
    }
}

#[test]
fn a_corrupt_safetensors_file_or_config_is_named() {
    let t = tiny();
    let dir = crate::common::tmp("corrupt");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, &t.bytes).unwrap();
    let out = dir.join("model");
    convert_gguf(&gguf, &out, OutDtype::F32, &mut |_, _| {}).unwrap();
    let cfg_path = out.join("config.json");
    let good_cfg = std::fs::read_to_string(&cfg_path).unwrap();
    // Config with a missing field.
    let mut v: serde_json::Value = serde_json::from_str(&good_cfg).unwrap();
    v.as_object_mut().unwrap().remove("hidden_size");
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    let e = models::config::from_file(&cfg_path)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("config.json") && e.contains("`hidden_size`") && e.contains("missing"),
        "{e}"
    );
    // A config whose shapes disagree with the weights: the tensor is named.
    let mut v: serde_json::Value = serde_json::from_str(&good_cfg).unwrap();
    v["intermediate_size"] = 48.into();
    std::fs::write(&cfg_path, v.to_string()).unwrap();
    models::config::from_file(&cfg_path).unwrap();
    let e = load_dir(&out).err().unwrap().to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("shape"),
        "{e}"
    );
    // A safetensors file with a garbage header.
    std::fs::write(&cfg_path, good_cfg).unwrap();
    let st = out.join("model.safetensors");
    std::fs::write(&st, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    models::config::from_file(&cfg_path).unwrap();
    let e = load_dir(&out).err().unwrap().to_string();
    assert!(
        e.contains("model.safetensors") && e.contains("header"),
        "{e}"
    );
    // An unsupported model type names the field.
    let e = models::config::from_json(
        &serde_json::json!({"model_type": "gpt2"}),
        Path::new("config.json"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("`model_type`") && e.contains("gpt2"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sharded_safetensors_load_like_one_file() {
    let t = tiny();
    let dir = crate::common::tmp("sharded");
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, &t.bytes).unwrap();
    let one = dir.join("one");
    convert_gguf(&gguf, &one, OutDtype::F32, &mut |_, _| {}).unwrap();
    // Split the single file into two shards with an index, as Hugging Face does.
    let sharded = dir.join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(one.join(f), sharded.join(f)).unwrap();
    }
    let bytes = std::fs::read(one.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut weight_map = serde_json::Map::new();
    for (i, part) in names.chunks(names.len() / 2 + 1).enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView)> = part
            .iter()
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::tensor::serialize_to_file(views, &None, &sharded.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        serde_json::json!({"metadata": {}, "weight_map": weight_map}).to_string(),
    )
    .unwrap();
    let w = WeightFiles::open(&sharded).unwrap();
    assert_eq!(
        w.f32("model.layers.0.self_attn.q_proj.weight", &[HIDDEN, HIDDEN])
            .unwrap(),
        t.wq
    );
    assert_eq!(
        w.f32("model.embed_tokens.weight", &[VOCAB, HIDDEN])
            .unwrap(),
        t.embed
    );
    models::config::from_file(&sharded.join("config.json")).unwrap();
    load_dir(&sharded).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
