//! The KV-cache layout contract shared by every kernel, CPU and CUDA.
//!
//! Per layer, separate K and V caches of shape `[num_blocks, num_kv_heads, block_size,
//! head_dim]` ("HND"): one (page, head) pair is one contiguous `block_size × head_dim` tile,
//! which is what a decode step reads. The token at logical position `p` of a sequence lives in
//! page `block_table[p / block_size]` at offset `p % block_size`; its *slot* is
//! `page * block_size + offset`. A slot of `-1` in a slot mapping marks padding (nothing is
//! written).
//!
//! Offsets here count elements, whatever the cache stores: f32, or f16 with
//! `--kv-cache-dtype f16` ([`KvDtype`]). The dtype is part of the contract: CPU and CUDA
//! backends size and address caches by it.

/// Shape of one layer's K (or V) cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvLayout {
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl KvLayout {
    /// Elements in one layer's K (or V) cache.
    pub fn elems(&self) -> usize {
        self.num_blocks * self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Elements of one page across all heads.
    pub fn block_elems(&self) -> usize {
        self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Bytes of K and V for one token in one layer, at `dtype_bytes` per element.
    pub fn kv_bytes_per_token(&self, dtype_bytes: usize) -> usize {
        2 * self.num_kv_heads * self.head_dim * dtype_bytes
    }

    /// Where the vector of (`slot`, `head`) starts.
    #[inline]
    pub fn offset(&self, slot: usize, head: usize) -> usize {
        let (block, off) = (slot / self.block_size, slot % self.block_size);
        ((block * self.num_kv_heads + head) * self.block_size + off) * self.head_dim
    }

    /// Where the `block_size × head_dim` tile of (`block`, `head`) starts.
    #[inline]
    pub fn tile(&self, block: usize, head: usize) -> usize {
        (block * self.num_kv_heads + head) * self.block_size * self.head_dim
    }

    /// The slot of logical position `pos` of a sequence with this block table.
    #[inline]
    pub fn slot(&self, block_table: &[u32], pos: usize) -> usize {
        block_table[pos / self.block_size] as usize * self.block_size + pos % self.block_size
    }
}

/// How K and V are stored in the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    #[default]
    F32,
    F16,
}

impl KvDtype {
    /// Bytes per stored element.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "f32",
            KvDtype::F16 => "f16",
        }
    }
}

/// A KV-cache dtype name that is none of the known ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("KV cache dtype '{0}': one of f32, f16")]
pub struct UnknownKvDtype(pub String);

impl std::str::FromStr for KvDtype {
    type Err = UnknownKvDtype;
    fn from_str(s: &str) -> Result<Self, UnknownKvDtype> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(KvDtype::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(KvDtype::F16),
            other => Err(UnknownKvDtype(other.to_string())),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_follow_the_hnd_contract() {
        let l = KvLayout {
            num_blocks: 4,
            num_kv_heads: 2,
            block_size: 8,
            head_dim: 16,
        };
        assert_eq!(l.elems(), 4 * 2 * 8 * 16);
        // Slot 11 = page 1, offset 3; head 1.
        assert_eq!(l.offset(11, 1), ((2 + 1) * 8 + 3) * 16);
        assert_eq!(l.tile(1, 1), (2 + 1) * 8 * 16);
        assert_eq!(l.slot(&[3, 0], 9), 1);
        assert_eq!(l.slot(&[3, 0], 2), 26);
    }
}
