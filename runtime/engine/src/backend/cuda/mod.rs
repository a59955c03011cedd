//! The CUDA backend, written once against the device layer (`kernels::cuda::Device`) and run
//! on either of its implementations: a GPU through cudarc and cuBLAS (`--device cuda`), or the
//! CUDA-on-CPU emulator with host memory as device memory (`--device cuda-emu`, a testing
//! device: the very same backend code, kernels, launch shapes and copies run end to end on a
//! machine without a GPU, slowly).
//!
//! Buffers are f32 device memory; weight GEMMs go through the device's GEMM (f32 without
//! TF32 on a GPU: the CPU backend is the reference); everything else through the kernels of
//! `kernels::cuda`, all on the device's one created stream.
//!
//! Every operation returns the CUDA error that stopped it, with the operation's name. A
//! kernel's asynchronous fault (an illegal address) surfaces at the next synchronisation:
//! the logits' download at the end of the forward pass, so the step fails with the CUDA
//! message instead of hanging or returning garbage.

mod device_batch;
pub mod memory_plan;

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use kernels::cpu::{KvStore, Rope};
use kernels::cuda::attention::{self, AttentionBatch, AttentionShape, AttentionWorkspace, Route};
use kernels::cuda::launch::DeviceBuf;
use kernels::cuda::libs::{locate, CudaLib};
use kernels::cuda::{
    ops, region, region_mut, source, CudaError, Device, Emu, GemmShape, Gpu, Region, RegionMut,
};
use kernels::KvDtype;
use kernels::KvLayout;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use super::{Backend, BackendError, Batch, WeightDtype};
use device_batch::DeviceBatch;

/// A device the CUDA backend runs on.
pub trait CudaDevice: Device + Send + Sync + 'static {
    /// The backend's name on this device (`--device`).
    const BACKEND_NAME: &'static str;
}

impl CudaDevice for Gpu {
    const BACKEND_NAME: &'static str = "cuda";
}

impl CudaDevice for Emu {
    const BACKEND_NAME: &'static str = "cuda-emu";
}

pub struct CudaBackend<D: CudaDevice = Gpu> {
    dev: D,
    /// Each RoPE's cos/sin table on the device, by the table's identity.
    rope_tables: Mutex<HashMap<RopeKey, D::Buf<f32>>>,
    attention_ws: Mutex<AttentionWorkspace<D>>,
    /// The current step's batch metadata on the device (see [`DeviceBatch`]).
    batch: Mutex<Option<DeviceBatch<D>>>,
}

/// The CUDA backend on the emulated device.
pub type EmulatedCudaBackend = CudaBackend<Emu>;

/// Identifies a `Rope` without building its table: its address (the model that owns it lives
/// as long as the engine) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RopeKey(usize, usize);

impl CudaBackend<Gpu> {
    /// Opens GPU `ordinal`; fails with what is missing (library, device) if it cannot.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        for lib in CudaLib::ALL {
            locate(lib)?;
        }
        let gpu = Gpu::open(ordinal)?;
        gpu.preload(&source::ALL)?;
        Ok(Self::on(gpu))
    }

    pub fn gpu(&self) -> &Gpu {
        &self.dev
    }
}

impl CudaBackend<Emu> {
    /// The backend on a fresh emulated device (the kernels built into this binary).
    pub fn emulated() -> Self {
        Self::on(Emu::new())
    }
}

impl<D: CudaDevice> CudaBackend<D> {
    /// The backend on `dev`.
    pub fn on(dev: D) -> Self {
        CudaBackend {
            dev,
            rope_tables: Mutex::new(HashMap::new()),
            attention_ws: Mutex::new(AttentionWorkspace::default()),
            batch: Mutex::new(None),
        }
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Refuses a KV cache dtype this backend has no kernels for.
    fn check_kv_dtype(&self, dtype: KvDtype) -> Result<(), BackendError> {
        if dtype == KvDtype::F32 {
            return Ok(());
        }
        Err(BackendError::Unsupported {
            backend: D::BACKEND_NAME,
            what: format!("a {dtype} KV cache is not supported yet; use f32"),
        })
    }

    /// A swap whose host store is not f32 (the engine allocates swap space in the cache's
    /// dtype, and this backend's cache is f32, so this is a bug upstream, not user input).
    fn swap_dtype_error(dtype: KvDtype) -> BackendError {
        BackendError::Mismatch {
            op: "swap",
            problem: format!("{dtype} host swap space for an f32 CUDA KV cache"),
        }
    }

    /// Runs `f`, naming the operation in its error.
    fn run<T>(
        &self,
        op: &'static str,
        f: impl FnOnce() -> Result<T, CudaError>,
    ) -> Result<T, BackendError> {
        f().map_err(|source| BackendError::Cuda { op, source })
    }

    /// The first `n` elements of `b`.
    fn prefix<'a>(&self, b: &'a D::Buf<f32>, n: usize) -> Result<Region<'a, f32>, CudaError> {
        region(&self.dev, "prefix", b, 0..n)
    }

    fn prefix_mut<'a>(
        &self,
        b: &'a mut D::Buf<f32>,
        n: usize,
    ) -> Result<RegionMut<'a, f32>, CudaError> {
        region_mut(&self.dev, "prefix", b, 0..n)
    }

    /// `batch`'s metadata on the device, uploaded by the first layer that asks for it; the
    /// other layers of the step find it already there.
    fn device_batch(
        &self,
        batch: &Batch,
    ) -> Result<MappedMutexGuard<'_, DeviceBatch<D>>, CudaError> {
        let mut slot = self.batch.lock();
        if !slot.as_ref().is_some_and(|d| d.is_for(batch)) {
            *slot = Some(DeviceBatch::upload(&self.dev, batch)?);
        }
        Ok(MutexGuard::map(slot, |d| {
            d.as_mut().expect("filled just above")
        }))
    }

    fn rope_table(&self, rope: &Rope) -> Result<&D::Buf<f32>, CudaError> {
        let key = RopeKey(rope as *const Rope as usize, rope.max_pos());
        let mut tables = self.rope_tables.lock();
        let buf = match tables.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.dev.upload(&rope.cos_sin_table())?),
        };
        // SAFETY: tables are only ever added, never removed or replaced, so the buffer lives
        // as long as self; the lock only guards the map's structure.
        Ok(unsafe { &*(buf as *const D::Buf<f32>) })
    }

    /// The swap pairs as element ranges (source, destination), runs of consecutive pages on
    /// both sides merged into one range: one copy per run instead of one per page (on a GPU
    /// each device-to-host copy is a driver call and a wait).
    fn page_runs(
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> {
        let n = layout.block_elems();
        let mut runs: Vec<(u32, u32, u32)> = Vec::new();
        for &(s, d) in pairs {
            match runs.last_mut() {
                Some((rs, rd, len)) if *rs + *len == s && *rd + *len == d => *len += 1,
                _ => runs.push((s, d, 1)),
            }
        }
        runs.into_iter()
            .map(|(s, d, len)| {
                let (s, d, len) = (s as usize * n, d as usize * n, len as usize * n);
                (s..s + len, d..d + len)
            })
            .collect()
    }
}

impl<D: CudaDevice> Backend for CudaBackend<D> {
    type Buf = D::Buf<f32>;
    /// f32 for now: `--dtype bf16` on CUDA is refused (see `upload_weight`).
    type Weight = D::Buf<f32>;
    /// f32 for now: `--kv-cache-dtype f16` on CUDA is refused (see `kv_zeros`).
    type KvBuf = D::Buf<f32>;

    fn name(&self) -> &str {
        D::BACKEND_NAME
    }

    /// Sampling runs on the host: on the CPU kernels' thread team, as with the CPU backend.
    fn host_parallel<T: Send>(&self, items: &mut [T], f: impl Fn(&mut T) + Sync) {
        kernels::cpu::team::for_each_chunk_mut(items, 1, |_, c| f(&mut c[0]));
    }

    /// Every kernel and the GEMM write all of their output, so a step's activation buffers
    /// are the previous step's, not new allocations.
    fn reuse_scratch(&self) -> bool {
        true
    }

    fn zeros(&self, n: usize) -> Result<D::Buf<f32>, BackendError> {
        self.run("alloc", || self.dev.alloc_zeros::<f32>(n.max(1)))
    }

    fn upload(&self, data: Vec<f32>) -> Result<D::Buf<f32>, BackendError> {
        self.run("upload", || self.dev.upload(&data))
    }

    fn kv_zeros(&self, n: usize, dtype: KvDtype) -> Result<D::Buf<f32>, BackendError> {
        self.check_kv_dtype(dtype)?;
        self.zeros(n)
    }

    fn kv_upload(&self, data: Vec<f32>, dtype: KvDtype) -> Result<D::Buf<f32>, BackendError> {
        self.check_kv_dtype(dtype)?;
        self.upload(data)
    }

    fn upload_weight(
        &self,
        data: Vec<f32>,
        _cols: usize,
        dtype: WeightDtype,
    ) -> Result<D::Buf<f32>, BackendError> {
        if dtype != WeightDtype::F32 {
            return Err(BackendError::Unsupported {
                backend: D::BACKEND_NAME,
                what: format!("{dtype:?} weights are not supported yet; use f32"),
            });
        }
        self.upload(data)
    }

    /// Synchronous: a fault of any kernel queued before it surfaces here.
    fn download(&self, buf: &D::Buf<f32>, n: usize) -> Result<Vec<f32>, BackendError> {
        let mut out = vec![0.0; n];
        self.run("download", || self.dev.copy_dtoh(buf, &mut out))?;
        Ok(out)
    }

    fn embedding(
        &self,
        out: &mut D::Buf<f32>,
        table: &D::Buf<f32>,
        ids: &[u32],
        dim: usize,
    ) -> Result<(), BackendError> {
        self.run("embedding", || {
            let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            let d = self.dev.upload(&ids)?;
            let mut o = self.prefix_mut(out, ids.len() * dim)?;
            ops::embedding(&self.dev, &mut o, table, &d, dim)
        })
    }

    fn rms_norm(
        &self,
        out: &mut D::Buf<f32>,
        x: &D::Buf<f32>,
        w: &D::Buf<f32>,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("rms_norm", || {
            let x = self.prefix(x, n)?;
            ops::rms_norm(&self.dev, &mut self.prefix_mut(out, n)?, &x, w, eps)
        })
    }

    fn linear(
        &self,
        out: &mut D::Buf<f32>,
        x: &D::Buf<f32>,
        w: &D::Buf<f32>,
        bias: Option<&D::Buf<f32>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("linear", || {
            if m == 0 {
                return Ok(());
            }
            let mut o = self.prefix_mut(out, m * n)?;
            let shape = GemmShape { m, k, n };
            self.dev.gemm_nt(
                &mut o,
                &self.prefix(x, m * k)?,
                &self.prefix(w, n * k)?,
                shape,
            )?;
            if let Some(b) = bias {
                ops::add_bias(&self.dev, &mut o, b)?;
            }
            Ok(())
        })
    }

    fn qkv_rope_write_kv(
        &self,
        q: &mut D::Buf<f32>,
        qkv: &D::Buf<f32>,
        rope: &Rope,
        batch: &Batch,
        num_heads: usize,
        layout: &KvLayout,
        k_cache: &mut D::Buf<f32>,
        v_cache: &mut D::Buf<f32>,
    ) -> Result<(), BackendError> {
        self.run("qkv_rope_write_kv", || {
            let t = batch.num_tokens();
            let db = self.device_batch(batch)?;
            let table = self.rope_table(rope)?;
            let row = (num_heads + 2 * layout.num_kv_heads) * layout.head_dim;
            ops::qkv_rope_write_kv(
                &self.dev,
                &mut self.prefix_mut(q, t * num_heads * layout.head_dim)?,
                &self.prefix(qkv, t * row)?,
                &db.positions,
                table,
                k_cache,
                v_cache,
                layout,
                &db.slots,
                ops::QkvShape {
                    num_tokens: t,
                    num_heads,
                },
            )
        })
    }

    fn paged_attention(
        &self,
        out: &mut D::Buf<f32>,
        q: &D::Buf<f32>,
        k_cache: &D::Buf<f32>,
        v_cache: &D::Buf<f32>,
        layout: &KvLayout,
        num_heads: usize,
        batch: &Batch,
    ) -> Result<(), BackendError> {
        self.run("paged_attention", || {
            let mut db = self.device_batch(batch)?;
            let hd = layout.head_dim;
            let n = batch.num_tokens() * num_heads * hd;
            let shape = AttentionShape {
                layout: *layout,
                num_heads,
                q_stride: num_heads * hd,
                scale: 1.0 / (hd as f32).sqrt(),
            };
            // Every layer of a step has the same shape: the device metadata is built once.
            if db.attention.as_ref().is_none_or(|a| *a.shape() != shape) {
                let a = AttentionBatch::new::<f32>(&self.dev, &db.meta, shape, Route::Split)?;
                db.attention = Some(a);
            }
            let step = db.attention.as_ref().expect("built just above");
            attention::paged_attention(
                &self.dev,
                &mut self.prefix_mut(out, n)?,
                &self.prefix(q, n)?,
                k_cache,
                v_cache,
                step,
                &mut self.attention_ws.lock(),
            )
        })
    }

    fn silu_and_mul(
        &self,
        out: &mut D::Buf<f32>,
        gate_up: &D::Buf<f32>,
        inter: usize,
        tokens: usize,
    ) -> Result<(), BackendError> {
        self.run("silu_and_mul", || {
            let gu = self.prefix(gate_up, tokens * 2 * inter)?;
            ops::silu_and_mul(
                &self.dev,
                &mut self.prefix_mut(out, tokens * inter)?,
                &gu,
                inter,
            )
        })
    }

    fn add_inplace(
        &self,
        x: &mut D::Buf<f32>,
        y: &D::Buf<f32>,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("add_inplace", || {
            let y = self.prefix(y, n)?;
            ops::add_inplace(&self.dev, &mut self.prefix_mut(x, n)?, &y)
        })
    }

    fn add_rms_norm(
        &self,
        residual: &mut D::Buf<f32>,
        delta: &mut D::Buf<f32>,
        w: &D::Buf<f32>,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("add_rms_norm", || {
            let mut r = self.prefix_mut(residual, n)?;
            ops::fused_add_rms_norm(&self.dev, &mut self.prefix_mut(delta, n)?, &mut r, w, eps)
        })
    }

    fn gather_rows(
        &self,
        out: &mut D::Buf<f32>,
        x: &D::Buf<f32>,
        rows: &[usize],
        dim: usize,
    ) -> Result<(), BackendError> {
        // A gather of rows is an embedding lookup with `x` as the table.
        self.run("gather_rows", || {
            let ids: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let d = self.dev.upload(&ids)?;
            let table = self.prefix(x, x.len() / dim * dim)?;
            let mut o = self.prefix_mut(out, rows.len() * dim)?;
            ops::embedding(&self.dev, &mut o, &table, &d, dim)
        })
    }

    fn copy_blocks(
        &self,
        cache: &mut D::Buf<f32>,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        self.run("copy_blocks", || {
            ops::copy_blocks(&self.dev, &mut [cache], layout, pairs)
        })
    }

    fn copy_to_host(
        &self,
        host: &mut KvStore,
        dev: &D::Buf<f32>,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        let KvStore::F32(host) = host else {
            return Err(Self::swap_dtype_error(host.dtype()));
        };
        self.run("swap out", || {
            for (s, d) in Self::page_runs(layout, pairs) {
                let page = region(&self.dev, "swap out", dev, s)?;
                let dst = host
                    .get_mut(d)
                    .ok_or_else(|| out_of_host_store("swap out"))?;
                self.dev.copy_dtoh(&page, dst)?;
            }
            Ok(())
        })
    }

    fn copy_from_host(
        &self,
        dev: &mut D::Buf<f32>,
        host: &KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        let KvStore::F32(host) = host else {
            return Err(Self::swap_dtype_error(host.dtype()));
        };
        self.run("swap in", || {
            for (s, d) in Self::page_runs(layout, pairs) {
                let src = host.get(s).ok_or_else(|| out_of_host_store("swap in"))?;
                let mut page = region_mut(&self.dev, "swap in", dev, d)?;
                self.dev.copy_htod(src, &mut page)?;
            }
            Ok(())
        })
    }
}

/// A swap pair naming a host page the swap space does not have (a bug upstream).
fn out_of_host_store(op: &str) -> CudaError {
    CudaError::Unsupported {
        kernel: op.to_string(),
        problem: "a host page beyond the swap space".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_swap_pages_are_copied_as_one_run() {
        let layout = KvLayout {
            num_blocks: 64,
            num_kv_heads: 1,
            block_size: 2,
            head_dim: 2,
        };
        let n = layout.block_elems();
        let runs =
            CudaBackend::<Emu>::page_runs(&layout, &[(3, 10), (4, 11), (5, 12), (9, 13), (2, 20)]);
        assert_eq!(
            runs,
            vec![
                (3 * n..6 * n, 10 * n..13 * n),
                (9 * n..10 * n, 13 * n..14 * n),
                (2 * n..3 * n, 20 * n..21 * n),
            ]
        );
    }
}
