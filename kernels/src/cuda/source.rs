//! The CUDA sources, embedded in the binary, and the entry points each one defines.
//!
//! Every `.cu` file is compiled on its own with `common.cuh` prepended (NVRTC is given no
//! include path, see `common.cuh` for why). A `#line` directive keeps compiler messages
//! pointing at the right file and line.

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

const COMMON: &str = include_str!("../../cuda/common.cuh");

/// One `.cu` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelSource {
    /// Module name (the file name without `.cu`).
    pub name: &'static str,
    text: &'static str,
}

pub const CACHE_OPS: KernelSource = KernelSource {
    name: "cache_ops",
    text: include_str!("../../cuda/cache_ops.cu"),
};
pub const LAYER_OPS: KernelSource = KernelSource {
    name: "layer_ops",
    text: include_str!("../../cuda/layer_ops.cu"),
};
pub const SAMPLING: KernelSource = KernelSource {
    name: "sampling",
    text: include_str!("../../cuda/sampling.cu"),
};
pub const PAGED_ATTENTION_DECODE: KernelSource = KernelSource {
    name: "paged_attention_decode",
    text: include_str!("../../cuda/paged_attention_decode.cu"),
};
pub const PAGED_ATTENTION_PREFILL: KernelSource = KernelSource {
    name: "paged_attention_prefill",
    text: include_str!("../../cuda/paged_attention_prefill.cu"),
};

/// Every source file, in the order `pagedrt doctor` reports them.
pub const ALL: [KernelSource; 5] = [
    CACHE_OPS,
    LAYER_OPS,
    SAMPLING,
    PAGED_ATTENTION_DECODE,
    PAGED_ATTENTION_PREFILL,
];

impl KernelSource {
    /// A source that is not one of pagedrt's (for testing the compiler path).
    pub const fn for_test(name: &'static str, text: &'static str) -> Self {
        KernelSource { name, text }
    }

    /// The file name, as compiler messages show it.
    pub fn file_name(&self) -> String {
        format!("{}.cu", self.name)
    }

    /// What NVRTC compiles: `common.cuh`, then the file.
    pub fn full_text(&self) -> String {
        format!(
            "#line 1 \"common.cuh\"\n{COMMON}\n#line 1 \"{}\"\n{}",
            self.file_name(),
            self.text
        )
    }

    /// The `extern "C"` kernels this file defines.
    pub fn entry_points(&self) -> Vec<String> {
        let per_dtype = |families: &[&str]| -> Vec<String> {
            families
                .iter()
                .flat_map(|f| DTYPES.iter().map(move |d| format!("{f}_{d}")))
                .collect()
        };
        match self.name {
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
}
