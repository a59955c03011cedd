//! The kernel files and the entry points each one defines: the one list both compilers work
//! from (NVRTC at run time through `source`, the host C++ compiler for the emulator in
//! `build.rs`, which includes this file, so it uses nothing outside itself).

/// Element types every kernel family is instantiated for, as suffixes of entry names.
pub const DTYPES: [&str; 3] = ["f32", "bf16", "f16"];

/// Head dims of the attention kernels.
pub const HEAD_DIMS: [usize; 3] = [64, 128, 256];
/// Head dims of the decode kernels.
pub const DECODE_HEAD_DIMS: [usize; 3] = HEAD_DIMS;

/// The decode kernel on CUDA cores is instantiated per largest group it serves: f32 for every
/// group up to 8, bf16 and f16 up to 4 (larger groups take the tensor cores).
pub fn decode_groups(dtype: &str) -> &'static [usize] {
    if dtype == "f32" {
        &[1, 2, 4, 8]
    } else {
        &[1, 2, 4]
    }
}

/// The element types of the tensor-core kernels.
pub const TC_DTYPES: [&str; 2] = ["bf16", "f16"];

/// (dtype, head dim) pairs of the prefill kernels: f32 on CUDA cores (not at head_dim 256,
/// whose tiles would not fit 48 KiB of shared memory), bf16 and f16 on the tensor cores.
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
pub const MODULES: [&str; 6] = [
    "cache_ops",
    "layer_ops",
    "sampling",
    "paged_attention_decode",
    "paged_attention_prefill",
    "paged_attention_tc",
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
                    decode_groups(d)
                        .iter()
                        .map(move |g| format!("paged_attention_decode_{d}_hd{hd}_g{g}"))
                        .chain([format!("paged_attention_reduce_{d}_hd{hd}")])
                })
            })
            .collect(),
        "paged_attention_prefill" => PREFILL_SHAPES
            .iter()
            .filter(|(d, _)| *d == "f32")
            .map(|(d, hd)| format!("paged_attention_prefill_{d}_hd{hd}"))
            .collect(),
        "paged_attention_tc" => TC_DTYPES
            .iter()
            .flat_map(|d| {
                HEAD_DIMS.iter().flat_map(move |hd| {
                    [
                        format!("paged_attention_prefill_tc_{d}_hd{hd}"),
                        format!("paged_attention_decode_tc_{d}_hd{hd}"),
                    ]
                })
            })
            .collect(),
        _ => Vec::new(),
    }
}
