//! The small interface the model's forward pass is written against (DESIGN.md, Backends).
//! `cpu` implements it with the CPU kernels; a CUDA backend implements the same operations with
//! NVRTC kernels and cuBLAS, so the model code does not change.

pub mod cpu;
pub mod cuda;
mod error;

pub use error::BackendError;

use kernels::cpu::{KvStore, Rope};
use kernels::KvDtype;
use kernels::KvLayout;

/// One flattened step: every token of every scheduled sequence, in plan order.
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    pub positions: Vec<usize>,
    /// Where each token's K/V goes (`-1`: padding).
    pub slot_mapping: Vec<i64>,
    pub seqs: Vec<BatchSeq>,
    /// All block tables, flat.
    pub block_tables: Vec<u32>,
    /// Token rows whose logits are wanted (the last token of each sampling sequence).
    pub logit_rows: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSeq {
    pub query_start: usize,
    pub query_len: usize,
    pub context_len: usize,
    pub table_offset: usize,
    pub table_len: usize,
}

impl Batch {
    pub fn num_tokens(&self) -> usize {
        self.input_ids.len()
    }

    /// The sequences as both backends' attention kernels take them.
    pub fn chunks(&self) -> Vec<kernels::cpu::SeqChunk<'_>> {
        self.seqs
            .iter()
            .map(|s| kernels::cpu::SeqChunk {
                query_start: s.query_start,
                query_len: s.query_len,
                context_len: s.context_len,
                block_table: &self.block_tables[s.table_offset..s.table_offset + s.table_len],
            })
            .collect()
    }
}

/// How the weight matrices are stored (`--dtype`); activations and norms are f32 either way
/// (the KV cache has its own `--kv-cache-dtype`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightDtype {
    #[default]
    F32,
    Bf16,
}

/// A device and its kernels. Shared with the threads of a host pool (`run_forward`).
pub trait Backend: Sync {
    /// A buffer of f32 on the device.
    type Buf: Send + Sync;
    /// A weight matrix (`[rows, cols]`, row-major) in the backend's chosen storage.
    type Weight: Send + Sync;
    /// One layer's K or V cache, in the dtype it was allocated with (`kv_zeros`).
    type KvBuf: Send + Sync;

    fn name(&self) -> &str;
    /// Runs one forward pass. A backend whose host thread pool needs the pass on a
    /// particular thread runs it there (the CPU backend's team takes the caller in).
    fn run_forward<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R {
        forward()
    }
    /// Runs `f` on every item, in parallel on the host threads this backend keeps (the
    /// CPU backend's thread team), else one after another. The engine samples through it,
    /// so its host work shares the backend's threads instead of starting a pool of its own.
    fn host_parallel<T: Send>(&self, items: &mut [T], f: impl Fn(&mut T) + Sync) {
        items.iter_mut().for_each(f)
    }
    fn zeros(&self, n: usize) -> Result<Self::Buf, BackendError>;
    /// Whether a forward pass may reuse an earlier step's buffer of the same length without
    /// zeroing it: true where every kernel writes all of its output (the model's
    /// `ScratchPool`).
    fn reuse_scratch(&self) -> bool {
        false
    }
    /// One layer's K or V cache of `n` elements of `dtype`, allocated once when the engine
    /// starts (the CPU backend asks for huge pages here, so the steps that first write each
    /// page fault less). A backend without `dtype` kernels refuses it.
    fn kv_zeros(&self, n: usize, dtype: KvDtype) -> Result<Self::KvBuf, BackendError>;
    /// Makes the operating system back all of a K or V cache now (`--kv-prefault`); a
    /// device backend's memory is backed when allocated, so by default nothing to do.
    fn kv_prefault(&self, _buf: &mut Self::KvBuf) -> Result<(), BackendError> {
        Ok(())
    }
    /// A K or V cache holding `data` rounded to `dtype` (the benchmarks' synthetic caches).
    fn kv_upload(&self, data: Vec<f32>, dtype: KvDtype) -> Result<Self::KvBuf, BackendError>;
    fn upload(&self, data: Vec<f32>) -> Result<Self::Buf, BackendError>;
    fn download(&self, buf: &Self::Buf, n: usize) -> Result<Vec<f32>, BackendError>;
    /// The first `n` elements of `buf` into `host` (resized to `n`), reusing `host`'s
    /// memory: the logits of a step, whose host buffer the engine hands back for the next
    /// one. `buf` may be left holding anything of its length (it is scratch): the CPU
    /// backend trades the two buffers instead of copying.
    fn download_into(
        &self,
        buf: &mut Self::Buf,
        n: usize,
        host: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        *host = self.download(buf, n)?;
        Ok(())
    }
    /// A weight matrix `[data.len() / cols, cols]` stored as `dtype` (values rounded to
    /// it), in whatever layout the backend's GEMM wants.
    fn upload_weight(
        &self,
        data: Vec<f32>,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<Self::Weight, BackendError>;

    fn embedding(
        &self,
        out: &mut Self::Buf,
        table: &Self::Weight,
        ids: &[u32],
        dim: usize,
    ) -> Result<(), BackendError>;
    fn rms_norm(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Buf,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError>;
    /// `out[m, n] = x[m, k] · w[n, k]ᵀ (+ bias)`.
    #[allow(clippy::too_many_arguments)]
    fn linear(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        bias: Option<&Self::Buf>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), BackendError>;
    /// Splits fused `[q | k | v]` rows, applies RoPE to q and k, writes k and v into the
    /// layer's cache by the batch's slot mapping, and returns q in `q`.
    #[allow(clippy::too_many_arguments)]
    fn qkv_rope_write_kv(
        &self,
        q: &mut Self::Buf,
        qkv: &Self::Buf,
        rope: &Rope,
        batch: &Batch,
        num_heads: usize,
        layout: &KvLayout,
        k_cache: &mut Self::KvBuf,
        v_cache: &mut Self::KvBuf,
    ) -> Result<(), BackendError>;
    #[allow(clippy::too_many_arguments)]
    fn paged_attention(
        &self,
        out: &mut Self::Buf,
        q: &Self::Buf,
        k_cache: &Self::KvBuf,
        v_cache: &Self::KvBuf,
        layout: &KvLayout,
        num_heads: usize,
        batch: &Batch,
    ) -> Result<(), BackendError>;
    fn silu_and_mul(
        &self,
        out: &mut Self::Buf,
        gate_up: &Self::Buf,
        inter: usize,
        tokens: usize,
    ) -> Result<(), BackendError>;
    fn add_inplace(&self, x: &mut Self::Buf, y: &Self::Buf, n: usize) -> Result<(), BackendError>;
    /// `act[m, inter] = silu(x · gateᵀ) * (x · upᵀ)` with `w` the fused `[gate; up]`
    /// weight (`2 * inter` rows): the first half of the MLP. The default is `linear` into
    /// `gate_up` then `silu_and_mul`; a backend that fuses the two (the CPU's, so the
    /// gate/up output never goes to memory) may leave `gate_up` untouched.
    #[allow(clippy::too_many_arguments)]
    fn gate_up_silu(
        &self,
        act: &mut Self::Buf,
        gate_up: &mut Self::Buf,
        x: &Self::Buf,
        w: &Self::Weight,
        m: usize,
        k: usize,
        inter: usize,
    ) -> Result<(), BackendError> {
        self.linear(gate_up, x, w, None, m, k, 2 * inter)?;
        self.silu_and_mul(act, gate_up, inter, m)
    }
    /// `residual += delta; delta = rms_norm(residual) * w` over the first `n` elements: the
    /// residual add that ends a block and the norm that starts the next, which a device
    /// backend runs as one kernel (one read of each row instead of three). The default is
    /// the two operations, in that order, so results do not change.
    fn add_rms_norm(
        &self,
        residual: &mut Self::Buf,
        delta: &mut Self::Buf,
        w: &Self::Buf,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        self.add_inplace(residual, delta, n)?;
        self.rms_norm(delta, residual, w, eps, n)
    }
    /// `out[i] = x[rows[i]]` for rows of `dim`.
    fn gather_rows(
        &self,
        out: &mut Self::Buf,
        x: &Self::Buf,
        rows: &[usize],
        dim: usize,
    ) -> Result<(), BackendError>;
    /// Copies whole pages inside one cache (copy-on-write).
    fn copy_blocks(
        &self,
        cache: &mut Self::KvBuf,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError>;
    /// Swap out: device pages `src` to host pages `dst` (the host store has the cache's
    /// dtype).
    fn copy_to_host(
        &self,
        host: &mut KvStore,
        dev: &Self::KvBuf,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError>;
    /// Swap in: host pages `src` to device pages `dst`.
    fn copy_from_host(
        &self,
        dev: &mut Self::KvBuf,
        host: &KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError>;
}
