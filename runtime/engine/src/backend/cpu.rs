//! The CPU backend: buffers are `Vec<f32>`, the KV cache a `KvStore` (f32 or f16), compute
//! is `kernels::cpu`.

use kernels::cpu::huge_pages::advise_huge_pages;
use kernels::cpu::packed::PackedMatrix;
use kernels::cpu::{self as k, KvStore, Rope};
use kernels::KvDtype;
use kernels::KvLayout;

use super::{Backend, BackendError, Batch, WeightDtype};

/// A weight matrix packed once for the GEMM's micro-kernel, in f32 or in bf16 (half the
/// memory, widened in registers as it is used).
#[derive(Debug, Clone)]
pub enum CpuWeight {
    F32(PackedMatrix<f32>),
    Bf16(PackedMatrix<half::bf16>),
}

impl CpuWeight {
    /// `(rows, cols)`: output features by input features.
    fn shape(&self) -> (usize, usize) {
        match self {
            CpuWeight::F32(w) => (w.rows(), w.cols()),
            CpuWeight::Bf16(w) => (w.rows(), w.cols()),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct CpuBackend;

/// K and V caches of one layer in different dtypes: the engine allocates both from one
/// `KvSpec`, so this is a caller's bug.
fn mixed_dtypes() -> BackendError {
    BackendError::Mismatch {
        op: "kv cache",
        problem: "K and V caches of different dtypes".into(),
    }
}

impl Backend for CpuBackend {
    type Buf = Vec<f32>;
    type Weight = CpuWeight;
    type KvBuf = KvStore;

    fn name(&self) -> &str {
        "cpu"
    }
    fn run_forward<R: Send>(&self, forward: impl FnOnce() -> R + Send) -> R {
        // The pass's parallel kernels run on `kernels::cpu::team`, whose workers spin
        // between kernels; the calling thread takes part in each, so it runs here.
        forward()
    }
    fn host_parallel<T: Send>(&self, items: &mut [T], f: impl Fn(&mut T) + Sync) {
        // On the team, not rayon: rayon's workers, spinning after a step, competed with the
        // team's for both cores.
        k::team::for_each_chunk_mut(items, 1, |_, c| f(&mut c[0]));
    }
    fn zeros(&self, n: usize) -> Result<Vec<f32>, BackendError> {
        Ok(vec![0.0; n])
    }
    fn reuse_scratch(&self) -> bool {
        // Every CPU kernel writes all of its output; `runtime/cli/tests/integration/engine_golden.rs`
        // runs batches of changing shapes through the same model, alone and mixed.
        true
    }
    fn kv_zeros(&self, n: usize, dtype: KvDtype) -> Result<KvStore, BackendError> {
        let v = KvStore::zeros(n, dtype);
        // A large zeroed `Vec` is mapped lazily, and with 4 KiB pages the prefill steps of a
        // 64 x (128 + 128) run took about 2,000 page faults per layer as their K/V landed on
        // fresh pages (`qkv_rope_write_kv`: 2.9-3.7 s of 57 s). Huge pages make that 512
        // times fewer faults, and attention, which jumps between scattered pages, misses the
        // TLB less. (Touching every page at start-up instead cost 5 s for 2 GiB.)
        advise_huge_pages(v.as_bytes());
        Ok(v)
    }
    fn kv_prefault(&self, buf: &mut KvStore) -> Result<(), BackendError> {
        buf.prefault();
        Ok(())
    }
    fn kv_upload(&self, data: Vec<f32>, dtype: KvDtype) -> Result<KvStore, BackendError> {
        Ok(match dtype {
            KvDtype::F32 => KvStore::F32(data),
            KvDtype::F16 => KvStore::F16(data.into_iter().map(half::f16::from_f32).collect()),
        })
    }
    fn upload(&self, data: Vec<f32>) -> Result<Vec<f32>, BackendError> {
        Ok(data)
    }
    fn download(&self, buf: &Vec<f32>, n: usize) -> Result<Vec<f32>, BackendError> {
        download_prefix(buf, n).map(<[f32]>::to_vec)
    }
    fn download_into(
        &self,
        buf: &mut Vec<f32>,
        n: usize,
        host: &mut Vec<f32>,
    ) -> Result<(), BackendError> {
        if buf.len() == n && host.len() == n {
            // The step's logits stay where the GEMM wrote them; the scratch pool gets the
            // last step's host buffer, of the same length.
            std::mem::swap(buf, host);
            return Ok(());
        }
        let src = download_prefix(buf, n)?;
        host.clear();
        host.extend_from_slice(src);
        Ok(())
    }
    fn upload_weight(
        &self,
        data: Vec<f32>,
        cols: usize,
        dtype: WeightDtype,
    ) -> Result<CpuWeight, BackendError> {
        let rows = data.len().checked_div(cols).unwrap_or(0);
        Ok(match dtype {
            WeightDtype::F32 => CpuWeight::F32(PackedMatrix::pack(&data, rows, cols)),
            WeightDtype::Bf16 => CpuWeight::Bf16(PackedMatrix::pack(&data, rows, cols)),
        })
    }
    fn embedding(
        &self,
        out: &mut Vec<f32>,
        table: &CpuWeight,
        ids: &[u32],
        dim: usize,
    ) -> Result<(), BackendError> {
        let out = &mut out[..ids.len() * dim];
        for (o, &id) in out.chunks_mut(dim).zip(ids) {
            match table {
                CpuWeight::F32(t) => t.row_into(id as usize, o),
                CpuWeight::Bf16(t) => t.row_into(id as usize, o),
            }
        }
        Ok(())
    }
    fn rms_norm(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &Vec<f32>,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        k::rms_norm(&mut out[..n], &x[..n], w, eps);
        Ok(())
    }
    fn linear(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        bias: Option<&Vec<f32>>,
        m: usize,
        kk: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        debug_assert_eq!(w.shape(), (n, kk));
        match w {
            CpuWeight::F32(w) => w.linear(out, x, m),
            CpuWeight::Bf16(w) => w.linear(out, x, m),
        }
        if let Some(b) = bias {
            for row in out[..m * n].chunks_mut(n) {
                k::add_inplace(row, b);
            }
        }
        Ok(())
    }
    fn qkv_rope_write_kv(
        &self,
        q: &mut Vec<f32>,
        qkv: &Vec<f32>,
        rope: &Rope,
        batch: &Batch,
        num_heads: usize,
        layout: &KvLayout,
        k_cache: &mut KvStore,
        v_cache: &mut KvStore,
    ) -> Result<(), BackendError> {
        let t = batch.num_tokens();
        let (pos, slots) = (&batch.positions[..t], &batch.slot_mapping);
        match (k_cache, v_cache) {
            (KvStore::F32(kc), KvStore::F32(vc)) => {
                k::qkv_rope_write_kv(q, qkv, rope, pos, num_heads, layout, kc, vc, slots)
            }
            (KvStore::F16(kc), KvStore::F16(vc)) => {
                k::qkv_rope_write_kv(q, qkv, rope, pos, num_heads, layout, kc, vc, slots)
            }
            _ => return Err(mixed_dtypes()),
        }
        Ok(())
    }
    fn paged_attention(
        &self,
        out: &mut Vec<f32>,
        q: &Vec<f32>,
        k_cache: &KvStore,
        v_cache: &KvStore,
        layout: &KvLayout,
        num_heads: usize,
        batch: &Batch,
    ) -> Result<(), BackendError> {
        let seqs = batch.chunks();
        let n = batch.num_tokens() * num_heads * layout.head_dim;
        let scale = 1.0 / (layout.head_dim as f32).sqrt();
        let (out, q) = (&mut out[..n], &q[..n]);
        match (k_cache, v_cache) {
            (KvStore::F32(kc), KvStore::F32(vc)) => {
                k::paged_attention(out, q, kc, vc, layout, num_heads, &seqs, scale)
            }
            (KvStore::F16(kc), KvStore::F16(vc)) => {
                k::paged_attention(out, q, kc, vc, layout, num_heads, &seqs, scale)
            }
            _ => return Err(mixed_dtypes()),
        }
        Ok(())
    }
    fn silu_and_mul(
        &self,
        out: &mut Vec<f32>,
        gate_up: &Vec<f32>,
        inter: usize,
        tokens: usize,
    ) -> Result<(), BackendError> {
        k::silu_and_mul(
            &mut out[..tokens * inter],
            &gate_up[..tokens * 2 * inter],
            inter,
        );
        Ok(())
    }
    fn gate_up_silu(
        &self,
        act: &mut Vec<f32>,
        _gate_up: &mut Vec<f32>,
        x: &Vec<f32>,
        w: &CpuWeight,
        m: usize,
        kk: usize,
        inter: usize,
    ) -> Result<(), BackendError> {
        debug_assert_eq!(w.shape(), (2 * inter, kk));
        let (act, x) = (&mut act[..m * inter], &x[..m * kk]);
        match w {
            CpuWeight::F32(w) => w.linear_silu_mul(act, x, m),
            CpuWeight::Bf16(w) => w.linear_silu_mul(act, x, m),
        }
        Ok(())
    }
    fn add_inplace(&self, x: &mut Vec<f32>, y: &Vec<f32>, n: usize) -> Result<(), BackendError> {
        k::add_inplace(&mut x[..n], &y[..n]);
        Ok(())
    }
    fn gather_rows(
        &self,
        out: &mut Vec<f32>,
        x: &Vec<f32>,
        rows: &[usize],
        dim: usize,
    ) -> Result<(), BackendError> {
        for (i, &r) in rows.iter().enumerate() {
            out[i * dim..(i + 1) * dim].copy_from_slice(&x[r * dim..(r + 1) * dim]);
        }
        Ok(())
    }
    fn copy_blocks(
        &self,
        cache: &mut KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        cache.copy_blocks(layout, pairs);
        Ok(())
    }
    fn copy_to_host(
        &self,
        host: &mut KvStore,
        dev: &KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        host.swap_from(dev, layout, pairs);
        Ok(())
    }
    fn copy_from_host(
        &self,
        dev: &mut KvStore,
        host: &KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        dev.swap_from(host, layout, pairs);
        Ok(())
    }
}

/// The first `n` elements of `buf`, the part a download returns, or the error naming both
/// lengths (`download` and `download_into`).
fn download_prefix(buf: &[f32], n: usize) -> Result<&[f32], BackendError> {
    buf.get(..n).ok_or_else(|| BackendError::Mismatch {
        op: "download",
        problem: format!("{n} elements from a buffer of {}", buf.len()),
    })
}
