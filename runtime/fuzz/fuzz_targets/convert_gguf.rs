//! `pagedrt convert` on GGUF files a fuzzer builds: a Llama-shaped file whose sizes,
//! head counts, tensor dims and types come from the input (zero and inconsistent ones
//! included), then optionally a few bytes overwritten. Converting returns an error naming
//! the file or succeeds; it never panics, and a failed convert leaves no output directory.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use models::convert::{convert_gguf, OutDtype};
use models::gguf::writer::{write_gguf, RawTensor};
use models::gguf::{GgmlType, Value};

#[derive(Debug, Arbitrary)]
struct Spec {
    hidden: u8,
    heads: u8,
    kv_heads: u8,
    inter: u8,
    vocab: u8,
    layers: u8,
    /// Per tensor: a dims override (`None`: the consistent shape) and a storage type.
    tensors: Vec<(Option<(u8, u8)>, u8)>,
    drop_metadata: u16,
    bf16: bool,
    /// Bytes written over the encoded file: (position, value).
    corrupt: Vec<(u16, u8)>,
}

const TYPES: [GgmlType; 5] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_1,
];

fn file_of(s: &Spec) -> Vec<u8> {
    let (h, heads, kv) = (
        s.hidden as u64 % 40,
        s.heads as u64 % 5,
        s.kv_heads as u64 % 5,
    );
    let (inter, vocab, layers) = (s.inter as u64 % 48, s.vocab as u64 % 6, s.layers % 3);
    let head_dim = if heads == 0 { 0 } else { h / heads };
    let mut names: Vec<(String, Vec<u64>)> = vec![
        ("token_embd.weight".into(), vec![h, vocab]),
        ("output_norm.weight".into(), vec![h]),
    ];
    for l in 0..layers {
        let p = |n: &str| format!("blk.{l}.{n}.weight");
        names.extend([
            (p("attn_norm"), vec![h]),
            (p("ffn_norm"), vec![h]),
            (p("attn_q"), vec![h, h]),
            (p("attn_k"), vec![h, head_dim * kv]),
            (p("attn_v"), vec![h, head_dim * kv]),
            (p("attn_output"), vec![h, h]),
            (p("ffn_gate"), vec![h, inter]),
            (p("ffn_up"), vec![h, inter]),
            (p("ffn_down"), vec![inter, h]),
        ]);
    }
    let tensors: Vec<RawTensor> = names
        .into_iter()
        .enumerate()
        .map(|(i, (name, dims))| {
            let (over, ty) = s.tensors.get(i).copied().unwrap_or((None, 0));
            let dims = match over {
                Some((a, b)) if dims.len() == 2 => vec![a as u64 % 40, b as u64 % 40],
                _ => dims,
            };
            let ty = TYPES[ty as usize % TYPES.len()];
            let elems: u64 = dims.iter().product();
            let blocks = elems.div_ceil(ty.block_elems() as u64);
            let data = (0..blocks as usize * ty.block_bytes())
                .map(|j| (j * 31 + i) as u8)
                .collect();
            RawTensor {
                name,
                dims,
                ty,
                data,
            }
        })
        .collect();
    let st = |x: &str| Value::String(x.into());
    let tokens = ["<|endoftext|>", "a", "b", "ab", "Ġ", "c"];
    let mut meta = vec![
        ("general.architecture", st("llama")),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(h as u32)),
        ("llama.block_count", Value::U32(layers as u32)),
        ("llama.feed_forward_length", Value::U32(inter as u32)),
        ("llama.attention.head_count", Value::U32(heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(kv as u32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("tokenizer.ggml.model", st("gpt2")),
        ("tokenizer.ggml.pre", st("smollm")),
        (
            "tokenizer.ggml.tokens",
            Value::Array(tokens[..vocab as usize].iter().map(|x| st(x)).collect()),
        ),
        ("tokenizer.ggml.merges", Value::Array(vec![st("a b")])),
        ("tokenizer.ggml.bos_token_id", Value::U32(0)),
        ("tokenizer.ggml.eos_token_id", Value::U32(0)),
    ];
    // Each set bit drops one metadata entry: missing keys must be errors too.
    let mut i = 0;
    meta.retain(|_| {
        i += 1;
        s.drop_metadata & (1 << (i - 1)) == 0
    });
    let mut bytes = write_gguf(&meta, &tensors);
    for &(pos, v) in &s.corrupt {
        if let Some(b) = bytes.get_mut(pos as usize) {
            *b = v;
        }
    }
    bytes
}

fuzz_target!(|s: Spec| {
    let dir = std::env::temp_dir().join(format!("pagedrt-fuzz-convert-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    let gguf = dir.join("in.gguf");
    let out = dir.join("out");
    if std::fs::write(&gguf, file_of(&s)).is_err() {
        return;
    }
    let dtype = if s.bf16 {
        OutDtype::Bf16
    } else {
        OutDtype::F32
    };
    match convert_gguf(&gguf, &out, dtype, &mut |_, _| {}) {
        Ok(()) => assert!(out.join("config.json").is_file()),
        Err(e) => {
            let msg = e.to_string();
            assert!(!msg.is_empty());
            assert!(
                !out.exists(),
                "a failed convert left {}: {msg}",
                out.display()
            );
        }
    }
});
