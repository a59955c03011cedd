//! The CUDA backend: buffers are f32 device memory, weight GEMMs go through cuBLAS (f32, no
//! TF32: the CPU backend is the reference), everything else through the NVRTC kernels of
//! `kernels::cuda`, all on one stream.
//!
//! Every operation returns the CUDA error that stopped it, with the operation's name. A
//! kernel's asynchronous fault (an illegal address) surfaces at the next synchronisation:
//! the logits' download at the end of the forward pass, so the step fails with the CUDA
//! message instead of hanging or returning garbage.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use cudarc::cublas::sys::cublasOperation_t as Op;
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut};
use kernels::cpu::{KvStore, Rope};
use kernels::cuda::attention::{
    self, AttentionBatch, AttentionMeta, AttentionShape, AttentionWorkspace, Route,
};
use kernels::cuda::libs::{locate, CudaLib};
use kernels::cuda::{ops, source, CudaError, Gpu};
use kernels::KvDtype;
use kernels::KvLayout;
use parking_lot::{MappedMutexGuard, Mutex, MutexGuard};

use super::{Backend, BackendError, Batch, BatchSeq, WeightDtype};

pub struct CudaBackend {
    gpu: Gpu,
    blas: CudaBlas,
    /// Each RoPE's cos/sin table on the device, by the table's identity.
    rope_tables: Mutex<HashMap<RopeKey, CudaSlice<f32>>>,
    attention_ws: Mutex<AttentionWorkspace<Gpu>>,
    /// The current step's batch metadata on the device (see [`DeviceBatch`]).
    batch: Mutex<Option<DeviceBatch>>,
}

/// Identifies a `Rope` without building its table: its address (the model that owns it lives
/// as long as the engine) and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RopeKey(usize, usize);

impl CudaBackend {
    /// Opens device `ordinal`; fails with what is missing (library, device) if it cannot.
    pub fn new(ordinal: usize) -> Result<Self, CudaError> {
        for lib in CudaLib::ALL {
            locate(lib)?;
        }
        let gpu = Gpu::open(ordinal)?;
        gpu.preload(&source::ALL)?;
        let blas = CudaBlas::new(gpu.stream().clone()).map_err(CudaError::Blas)?;
        Ok(CudaBackend {
            gpu,
            blas,
            rope_tables: Mutex::new(HashMap::new()),
            attention_ws: Mutex::new(AttentionWorkspace::default()),
            batch: Mutex::new(None),
        })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Refuses a KV cache dtype this backend has no kernels for.
    fn check_kv_dtype(&self, dtype: KvDtype) -> Result<(), BackendError> {
        if dtype == KvDtype::F32 {
            return Ok(());
        }
        Err(BackendError::Unsupported {
            backend: "cuda",
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

    fn upload_vec<T: cudarc::driver::DeviceRepr>(
        &self,
        v: &[T],
    ) -> Result<CudaSlice<T>, CudaError> {
        self.gpu.stream().memcpy_stod(v).map_err(CudaError::Driver)
    }

    /// `batch`'s metadata on the device, uploaded by the first layer that asks for it; the
    /// other layers of the step find it already there.
    fn device_batch(&self, batch: &Batch) -> Result<MappedMutexGuard<'_, DeviceBatch>, CudaError> {
        let mut slot = self.batch.lock();
        if !slot.as_ref().is_some_and(|d| d.is_for(batch)) {
            *slot = Some(DeviceBatch::upload(self, batch)?);
        }
        Ok(MutexGuard::map(slot, |d| {
            d.as_mut().expect("filled just above")
        }))
    }

    fn rope_table(&self, rope: &Rope) -> Result<CudaView<'_, f32>, CudaError> {
        let key = RopeKey(rope as *const Rope as usize, rope.max_pos());
        let mut tables = self.rope_tables.lock();
        let slice = match tables.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => v.insert(self.upload_vec(&rope.cos_sin_table())?),
        };
        // SAFETY: tables are only ever added, never removed or replaced, so the slice lives
        // as long as self; the lock only guards the map's structure.
        let slice: &CudaSlice<f32> = unsafe { &*(slice as *const CudaSlice<f32>) };
        Ok(slice.as_view())
    }
}

fn prefix(b: &CudaSlice<f32>, n: usize) -> CudaView<'_, f32> {
    b.slice(..n)
}

fn prefix_mut(b: &mut CudaSlice<f32>, n: usize) -> CudaViewMut<'_, f32> {
    b.slice_mut(..n)
}

fn drv(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver(e)
}

impl Backend for CudaBackend {
    type Buf = CudaSlice<f32>;
    /// f32 for now: `--dtype bf16` on CUDA is refused (see `upload_weight`).
    type Weight = CudaSlice<f32>;
    /// f32 for now: `--kv-cache-dtype f16` on CUDA is refused (see `kv_zeros`).
    type KvBuf = CudaSlice<f32>;

    fn name(&self) -> &str {
        "cuda"
    }

    /// Sampling runs on the host: on the CPU kernels' thread team, as with the CPU backend.
    fn host_parallel<T: Send>(&self, items: &mut [T], f: impl Fn(&mut T) + Sync) {
        kernels::cpu::team::for_each_chunk_mut(items, 1, |_, c| f(&mut c[0]));
    }

    fn zeros(&self, n: usize) -> Result<CudaSlice<f32>, BackendError> {
        self.run("alloc", || {
            self.gpu.stream().alloc_zeros::<f32>(n.max(1)).map_err(drv)
        })
    }

    fn upload(&self, data: Vec<f32>) -> Result<CudaSlice<f32>, BackendError> {
        self.run("upload", || self.upload_vec(&data))
    }

    fn kv_zeros(&self, n: usize, dtype: KvDtype) -> Result<CudaSlice<f32>, BackendError> {
        self.check_kv_dtype(dtype)?;
        self.zeros(n)
    }

    fn kv_upload(&self, data: Vec<f32>, dtype: KvDtype) -> Result<CudaSlice<f32>, BackendError> {
        self.check_kv_dtype(dtype)?;
        self.upload(data)
    }

    fn upload_weight(
        &self,
        data: Vec<f32>,
        _cols: usize,
        dtype: WeightDtype,
    ) -> Result<CudaSlice<f32>, BackendError> {
        if dtype != WeightDtype::F32 {
            return Err(BackendError::Unsupported {
                backend: "cuda",
                what: format!("{dtype:?} weights are not supported yet; use f32"),
            });
        }
        self.upload(data)
    }

    /// Synchronous: a fault of any kernel queued before it surfaces here.
    fn download(&self, buf: &CudaSlice<f32>, n: usize) -> Result<Vec<f32>, BackendError> {
        if n > buf.len() {
            return Err(BackendError::Mismatch {
                op: "download",
                problem: format!("{n} elements from a buffer of {}", buf.len()),
            });
        }
        let mut out = vec![0.0; n];
        self.run("download", || {
            self.gpu
                .stream()
                .memcpy_dtoh(&prefix(buf, n), &mut out)
                .map_err(drv)
        })?;
        Ok(out)
    }

    fn embedding(
        &self,
        out: &mut CudaSlice<f32>,
        table: &CudaSlice<f32>,
        ids: &[u32],
        dim: usize,
    ) -> Result<(), BackendError> {
        self.run("embedding", || {
            let ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            let d = self.upload_vec(&ids)?;
            ops::embedding(
                &self.gpu,
                &mut prefix_mut(out, ids.len() * dim),
                table,
                &d,
                dim,
            )
        })
    }

    fn rms_norm(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        eps: f32,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("rms_norm", || {
            ops::rms_norm(&self.gpu, &mut prefix_mut(out, n), &prefix(x, n), w, eps)
        })
    }

    fn linear(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        bias: Option<&CudaSlice<f32>>,
        m: usize,
        k: usize,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("linear", || {
            if m == 0 {
                return Ok(());
            }
            if x.len() < m * k || w.len() < n * k || out.len() < m * n {
                return Err(CudaError::Unsupported {
                    kernel: "linear".into(),
                    problem: format!("buffers too small for [{m}, {k}] x [{n}, {k}]ᵀ"),
                });
            }
            // cuBLAS runs in the calling thread's current context: make it this GPU's.
            self.gpu.context().bind_to_thread().map_err(drv)?;
            // Row-major out[m, n] = x[m, k] · w[n, k]ᵀ is column-major outᵀ = w · xᵀ:
            // A = w (stored as k x n column-major, transposed), B = xᵀ (k x m).
            let cfg = GemmConfig {
                transa: Op::CUBLAS_OP_T,
                transb: Op::CUBLAS_OP_N,
                m: n as i32,
                n: m as i32,
                k: k as i32,
                alpha: 1.0f32,
                lda: k as i32,
                ldb: k as i32,
                beta: 0.0f32,
                ldc: n as i32,
            };
            let mut o = prefix_mut(out, m * n);
            // SAFETY: sizes checked above against the GEMM's shapes and leading dimensions.
            unsafe {
                self.blas
                    .gemm(cfg, &prefix(w, n * k), &prefix(x, m * k), &mut o)
            }
            .map_err(CudaError::Blas)?;
            if let Some(b) = bias {
                ops::add_bias(&self.gpu, &mut o, b)?;
            }
            Ok(())
        })
    }

    fn qkv_rope_write_kv(
        &self,
        q: &mut CudaSlice<f32>,
        qkv: &CudaSlice<f32>,
        rope: &Rope,
        batch: &Batch,
        num_heads: usize,
        layout: &KvLayout,
        k_cache: &mut CudaSlice<f32>,
        v_cache: &mut CudaSlice<f32>,
    ) -> Result<(), BackendError> {
        self.run("qkv_rope_write_kv", || {
            let t = batch.num_tokens();
            let db = self.device_batch(batch)?;
            let table = self.rope_table(rope)?;
            let row = (num_heads + 2 * layout.num_kv_heads) * layout.head_dim;
            ops::qkv_rope_write_kv(
                &self.gpu,
                &mut prefix_mut(q, t * num_heads * layout.head_dim),
                &prefix(qkv, t * row),
                &db.positions,
                &table,
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
        out: &mut CudaSlice<f32>,
        q: &CudaSlice<f32>,
        k_cache: &CudaSlice<f32>,
        v_cache: &CudaSlice<f32>,
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
                let a = AttentionBatch::new::<f32>(&self.gpu, &db.meta, shape, Route::Split)?;
                db.attention = Some(a);
            }
            let step = db.attention.as_ref().expect("built just above");
            attention::paged_attention(
                &self.gpu,
                &mut prefix_mut(out, n),
                &prefix(q, n),
                k_cache,
                v_cache,
                step,
                &mut self.attention_ws.lock(),
            )
        })
    }

    fn silu_and_mul(
        &self,
        out: &mut CudaSlice<f32>,
        gate_up: &CudaSlice<f32>,
        inter: usize,
        tokens: usize,
    ) -> Result<(), BackendError> {
        self.run("silu_and_mul", || {
            ops::silu_and_mul(
                &self.gpu,
                &mut prefix_mut(out, tokens * inter),
                &prefix(gate_up, tokens * 2 * inter),
                inter,
            )
        })
    }

    fn add_inplace(
        &self,
        x: &mut CudaSlice<f32>,
        y: &CudaSlice<f32>,
        n: usize,
    ) -> Result<(), BackendError> {
        self.run("add_inplace", || {
            ops::add_inplace(&self.gpu, &mut prefix_mut(x, n), &prefix(y, n))
        })
    }

    fn gather_rows(
        &self,
        out: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        rows: &[usize],
        dim: usize,
    ) -> Result<(), BackendError> {
        // A gather of rows is an embedding lookup with `x` as the table.
        self.run("gather_rows", || {
            let ids: Vec<i32> = rows.iter().map(|&r| r as i32).collect();
            let d = self.upload_vec(&ids)?;
            let table = prefix(x, x.len() / dim * dim);
            ops::embedding(
                &self.gpu,
                &mut prefix_mut(out, rows.len() * dim),
                &table,
                &d,
                dim,
            )
        })
    }

    fn copy_blocks(
        &self,
        cache: &mut CudaSlice<f32>,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        self.run("copy_blocks", || {
            ops::copy_blocks(&self.gpu, &mut [cache], layout, pairs)
        })
    }

    fn copy_to_host(
        &self,
        host: &mut KvStore,
        dev: &CudaSlice<f32>,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        let n = layout.block_elems();
        let KvStore::F32(host) = host else {
            return Err(Self::swap_dtype_error(host.dtype()));
        };
        self.run("swap out", || {
            for &(s, d) in pairs {
                let (s, d) = (s as usize * n, d as usize * n);
                self.gpu
                    .stream()
                    .memcpy_dtoh(&dev.slice(s..s + n), &mut host[d..d + n])
                    .map_err(drv)?;
            }
            Ok(())
        })
    }

    fn copy_from_host(
        &self,
        dev: &mut CudaSlice<f32>,
        host: &KvStore,
        layout: &KvLayout,
        pairs: &[(u32, u32)],
    ) -> Result<(), BackendError> {
        let n = layout.block_elems();
        let KvStore::F32(host) = host else {
            return Err(Self::swap_dtype_error(host.dtype()));
        };
        self.run("swap in", || {
            for &(s, d) in pairs {
                let (s, d) = (s as usize * n, d as usize * n);
                self.gpu
                    .stream()
                    .memcpy_htod(&host[s..s + n], &mut dev.slice_mut(d..d + n))
                    .map_err(drv)?;
            }
            Ok(())
        })
    }
}

/// One step's batch metadata on the device. Every layer of a step sees the same batch, so it
/// is uploaded once per step instead of four times per layer (each upload from pageable
/// memory also waits for the stream). `host` is what it was built from, to recognise the
/// batch again.
struct DeviceBatch {
    host: (Vec<usize>, Vec<i64>, Vec<u32>, Vec<BatchSeq>),
    positions: CudaSlice<i32>,
    slots: CudaSlice<i64>,
    meta: AttentionMeta,
    /// The attention kernels' view of the batch, built by the step's first attention call.
    attention: Option<AttentionBatch<Gpu>>,
}

impl DeviceBatch {
    fn is_for(&self, b: &Batch) -> bool {
        let (p, s, t, q) = &self.host;
        *p == b.positions && *s == b.slot_mapping && *t == b.block_tables && *q == b.seqs
    }

    fn upload(be: &CudaBackend, b: &Batch) -> Result<Self, CudaError> {
        let positions: Vec<i32> = b.positions.iter().map(|&p| p as i32).collect();
        Ok(DeviceBatch {
            positions: be.upload_vec(&positions)?,
            slots: be.upload_vec(&b.slot_mapping)?,
            meta: AttentionMeta::new(&b.chunks())?,
            attention: None,
            host: (
                b.positions.clone(),
                b.slot_mapping.clone(),
                b.block_tables.clone(),
                b.seqs.clone(),
            ),
        })
    }
}
