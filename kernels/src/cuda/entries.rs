//! The kernel files and the entry points each one defines: the one list both compilers work
//! from (NVRTC at run time through `source`, the host C++ compiler for the emulator in
//! `build.rs`, which includes this file, so it uses nothing outside itself).

/// Element types every kernel family is instantiated for, as suffixes of entry names.
pub const DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

/// Head dims of the decode kernel.
pub const DECODE_HEAD_DIMS: [usize; 3] = [64, 128, 256];

/// (dtype, head dim) pairs of the prefill kernel: f32 at head_dim 256 would not fit its
/// tiles in 48 KiB of shared memory.
pub const PREFILL_SHAPES: [(&str, usize); 8] = [
    ("f32", 64),
    ("f32", 128),
    ("bf16", 64),
    ("bf16", 128),
    ("bf16", 256),
    ("f16", 64),
    ("f16", 128),
    ("f16", 256),
];

/// Module names: the `.cu` files without the extension, in the order `pagedrt doctor`
/// reports them.
pub const MODULES: [&str; 5] = [
    "cache_ops",
    "layer_ops",
    "sampling",
    "paged_attention_decode",
    "paged_attention_prefill",
];

/// The `extern "C"` kernels module `name` defines.
pub fn entry_points(name: &str) -> Vec<String> {
    let per_dtype = |families: &[&str]| -> Vec<String> {
        families
            .iter()
            .flat_map(|f| DTYPES.iter().map(move |d| format!("{f}_{d}")))
            .collect()
    };
    match name {
        "cache_ops" => per_dtype(&["write_kv", "copy_blocks", "qkv_rope_write_kv"]),
        "layer_ops" => per_dtype(&[
            "rms_norm",
            "fused_add_rms_norm",
            "rope",
            "silu_and_mul",
            "embedding",
            "add_inplace",
            "add_bias",
        ]),
        "sampling" => per_dtype(&["argmax"]),
        "paged_attention_decode" => DTYPES
            .iter()
            .flat_map(|d| {
                DECODE_HEAD_DIMS.iter().flat_map(move |hd| {
                    [
                        format!("paged_attention_decode_{d}_hd{hd}"),
                        format!("paged_attention_reduce_{d}_hd{hd}"),
                    ]
                })
            })
            .collect(),
        "paged_attention_prefill" => PREFILL_SHAPES
            .iter()
            .map(|(d, hd)| format!("paged_attention_prefill_{d}_hd{hd}"))
            .collect(),
        _ => Vec::new(),
    }
}
