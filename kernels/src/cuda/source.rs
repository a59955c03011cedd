//! The CUDA sources, embedded in the binary, and the entry points each one defines.
//!
//! Every `.cu` file is compiled on its own with `common.cuh` prepended (NVRTC is given no
//! include path, see `common.cuh` for why). A `#line` directive keeps compiler messages
//! pointing at the right file and line.

pub use super::entries::{DECODE_HEAD_DIMS, DTYPES, HEAD_DIMS, PREFILL_SHAPES, TC_DTYPES};

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
pub const PAGED_ATTENTION_TC: KernelSource = KernelSource {
    name: "paged_attention_tc",
    text: include_str!("../../cuda/paged_attention_tc.cu"),
};

/// Every source file, in the order `pagedrt doctor` reports them.
pub const ALL: [KernelSource; 6] = [
    CACHE_OPS,
    LAYER_OPS,
    SAMPLING,
    PAGED_ATTENTION_DECODE,
    PAGED_ATTENTION_PREFILL,
    PAGED_ATTENTION_TC,
];

impl KernelSource {
    /// A source that is not one of pagedrt's (for testing the compiler path).
    pub const fn for_test(name: &'static str, text: &'static str) -> Self {
        KernelSource { name, text }
    }

    /// The file's own text (without `common.cuh`).
    pub fn text(&self) -> &'static str {
        self.text
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
        super::entries::entry_points(self.name)
    }
}
