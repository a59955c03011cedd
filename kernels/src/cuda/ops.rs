//! Launching the cache and layer kernels: shape checks on the host, then one launch each.
//! Every function queues work on the GPU's stream and returns; errors from the launch itself
//! come back at once, faults inside a kernel at the next synchronisation.

use cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};

use super::device::{driver_err, Gpu};
use super::elem::GpuElem;
use super::source::{CACHE_OPS, LAYER_OPS, SAMPLING};
use super::CudaError;
use crate::layout::KvLayout;

/// Threads per block for the row kernels: enough for a row, at most 1024.
fn row_threads(n: usize) -> u32 {
    (n.div_ceil(32) * 32).clamp(32, 1024) as u32
}

fn rows_cfg(rows: usize, threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (rows as u32, 1, 1),
        block_dim: (threads, 1, 1),
        shared_mem_bytes: 0,
    }
}

pub(crate) fn check(
    kernel: &str,
    ok: bool,
    problem: impl FnOnce() -> String,
) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Unsupported {
            kernel: kernel.to_string(),
            problem: problem(),
        })
    }
}

/// Scatters `k`/`v` rows (token `t` at `t * stride`) into their slots.
#[allow(clippy::too_many_arguments)]
pub fn write_kv<E: GpuElem>(
    gpu: &Gpu,
    k_cache: &mut CudaSlice<E>,
    v_cache: &mut CudaSlice<E>,
    layout: &KvLayout,
    k: &CudaSlice<E>,
    v: &CudaSlice<E>,
    k_stride: usize,
    v_stride: usize,
    slot_mapping: &CudaSlice<i64>,
) -> Result<(), CudaError> {
    let n = slot_mapping.len();
    let row = layout.num_kv_heads * layout.head_dim;
    check(
        "write_kv",
        k_cache.len() == layout.elems() && v_cache.len() == layout.elems(),
        || "cache size does not match the layout".into(),
    )?;
    check(
        "write_kv",
        n == 0 || (k.len() >= (n - 1) * k_stride + row && v.len() >= (n - 1) * v_stride + row),
        || "k or v shorter than the slot mapping".into(),
    )?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CACHE_OPS, &format!("write_kv_{}", E::SUFFIX))?;
    let (kvh, hd, bs) = (
        layout.num_kv_heads as i32,
        layout.head_dim as i32,
        layout.block_size as i32,
    );
    let (ks, vs) = (k_stride as i32, v_stride as i32);
    let slots = (layout.num_blocks * layout.block_size) as i64;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(k_cache).arg(v_cache).arg(k).arg(v).arg(slot_mapping);
    b.arg(&kvh).arg(&hd).arg(&bs).arg(&ks).arg(&vs).arg(&slots);
    // SAFETY: cache sizes match the layout, k/v cover every token's row, slots are bounds
    // checked in the kernel.
    unsafe { b.launch(rows_cfg(n, row_threads(row).min(256))) }.map_err(driver_err)?;
    Ok(())
}

/// Copy-on-write of whole pages, in every given cache (all layers' K and V) in one launch.
pub fn copy_blocks<E: GpuElem>(
    gpu: &Gpu,
    caches: &mut [&mut CudaSlice<E>],
    layout: &KvLayout,
    pairs: &[(u32, u32)],
) -> Result<(), CudaError> {
    if pairs.is_empty() || caches.is_empty() {
        return Ok(());
    }
    check(
        "copy_blocks",
        caches.iter().all(|c| c.len() == layout.elems()),
        || "cache size does not match the layout".into(),
    )?;
    check(
        "copy_blocks",
        pairs
            .iter()
            .all(|&(s, d)| (s as usize) < layout.num_blocks && (d as usize) < layout.num_blocks),
        || "block number out of range".into(),
    )?;
    let stream = gpu.stream();
    let ptrs: Vec<u64> = caches
        .iter()
        .map(|c| {
            let (p, _sync) = c.device_ptr(stream);
            p
        })
        .collect();
    let ptrs = stream.memcpy_stod(&ptrs).map_err(driver_err)?;
    let flat: Vec<i32> = pairs
        .iter()
        .flat_map(|&(s, d)| [s as i32, d as i32])
        .collect();
    let flat = stream.memcpy_stod(&flat).map_err(driver_err)?;
    let f = gpu.function(&CACHE_OPS, &format!("copy_blocks_{}", E::SUFFIX))?;
    let block_elems = layout.block_elems() as i64;
    let mut b = stream.launch_builder(&f);
    b.arg(&ptrs).arg(&flat).arg(&block_elems);
    let cfg = LaunchConfig {
        grid_dim: (pairs.len() as u32, caches.len() as u32, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: every pointer is a live cache of `layout.elems()` elements (checked above) and
    // borrowed mutably for the duration; block numbers are in range.
    unsafe { b.launch(cfg) }.map_err(driver_err)?;
    Ok(())
}

/// `out = rms_norm(x) * w` per row of `w.len()`.
pub fn rms_norm<E: GpuElem>(
    gpu: &Gpu,
    out: &mut CudaSlice<E>,
    x: &CudaSlice<E>,
    w: &CudaSlice<E>,
    eps: f32,
) -> Result<(), CudaError> {
    let dim = w.len();
    check(
        "rms_norm",
        dim > 0 && x.len().is_multiple_of(dim) && out.len() == x.len(),
        || "x and out must be whole rows of the weight's length".into(),
    )?;
    let rows = x.len() / dim;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("rms_norm_{}", E::SUFFIX))?;
    let d = dim as i32;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(x).arg(w).arg(&d).arg(&eps);
    // SAFETY: shapes checked above.
    unsafe { b.launch(rows_cfg(rows, row_threads(dim))) }.map_err(driver_err)?;
    Ok(())
}

/// `residual += x; x = rms_norm(residual) * w`.
pub fn fused_add_rms_norm<E: GpuElem>(
    gpu: &Gpu,
    x: &mut CudaSlice<E>,
    residual: &mut CudaSlice<E>,
    w: &CudaSlice<E>,
    eps: f32,
) -> Result<(), CudaError> {
    let dim = w.len();
    check(
        "fused_add_rms_norm",
        dim > 0 && x.len().is_multiple_of(dim) && residual.len() == x.len(),
        || "x and residual must be whole rows of the weight's length".into(),
    )?;
    let rows = x.len() / dim;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("fused_add_rms_norm_{}", E::SUFFIX))?;
    let d = dim as i32;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(x).arg(residual).arg(w).arg(&d).arg(&eps);
    // SAFETY: shapes checked above.
    unsafe { b.launch(rows_cfg(rows, row_threads(dim))) }.map_err(driver_err)?;
    Ok(())
}

/// Shapes of q and k for [`rope`].
#[derive(Debug, Clone, Copy)]
pub struct RopeShape {
    pub num_tokens: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// Elements between tokens' rows of q and of k.
    pub q_stride: usize,
    pub k_stride: usize,
}

/// Rotary embedding in place on q and k; `cos_sin` is `Rope::cos_sin_table()`.
pub fn rope<E: GpuElem>(
    gpu: &Gpu,
    q: &mut CudaSlice<E>,
    k: &mut CudaSlice<E>,
    positions: &CudaSlice<i32>,
    cos_sin: &CudaSlice<f32>,
    s: RopeShape,
) -> Result<(), CudaError> {
    let n = s.num_tokens;
    check(
        "rope",
        positions.len() == n
            && s.head_dim.is_multiple_of(2)
            && cos_sin.len().is_multiple_of(s.head_dim)
            && (n == 0
                || (q.len() >= (n - 1) * s.q_stride + s.num_heads * s.head_dim
                    && k.len() >= (n - 1) * s.k_stride + s.num_kv_heads * s.head_dim)),
        || "q, k, positions or the cos/sin table have the wrong shape".into(),
    )?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("rope_{}", E::SUFFIX))?;
    let (nh, nkv, hd) = (s.num_heads as i32, s.num_kv_heads as i32, s.head_dim as i32);
    let (qs, ks) = (s.q_stride as i32, s.k_stride as i32);
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(q).arg(k).arg(positions).arg(cos_sin);
    b.arg(&nh).arg(&nkv).arg(&hd).arg(&qs).arg(&ks);
    let threads = row_threads((s.num_heads + s.num_kv_heads) * s.head_dim / 2).min(256);
    // SAFETY: shapes checked above; positions must be below the table's max position (the
    // engine never schedules past max_model_len, which sizes the table).
    unsafe { b.launch(rows_cfg(n, threads)) }.map_err(driver_err)?;
    Ok(())
}

/// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`.
pub fn silu_and_mul<E: GpuElem>(
    gpu: &Gpu,
    out: &mut CudaSlice<E>,
    gate_up: &CudaSlice<E>,
    inter: usize,
) -> Result<(), CudaError> {
    check(
        "silu_and_mul",
        inter > 0 && out.len().is_multiple_of(inter) && gate_up.len() == 2 * out.len(),
        || "gate_up must be [rows, 2 * inter] and out [rows, inter]".into(),
    )?;
    let rows = out.len() / inter;
    if rows == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("silu_and_mul_{}", E::SUFFIX))?;
    let i = inter as i32;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(gate_up).arg(&i);
    // SAFETY: shapes checked above.
    unsafe { b.launch(rows_cfg(rows, row_threads(inter).min(512))) }.map_err(driver_err)?;
    Ok(())
}

/// `out[t] = table[ids[t]]` for a `[vocab, dim]` table.
pub fn embedding<E: GpuElem>(
    gpu: &Gpu,
    out: &mut CudaSlice<E>,
    table: &CudaSlice<E>,
    ids: &CudaSlice<i32>,
    dim: usize,
) -> Result<(), CudaError> {
    check(
        "embedding",
        dim > 0 && table.len().is_multiple_of(dim) && out.len() == ids.len() * dim,
        || "out must be [ids, dim] and the table [vocab, dim]".into(),
    )?;
    if ids.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("embedding_{}", E::SUFFIX))?;
    let (d, vocab) = (dim as i32, (table.len() / dim) as i32);
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(table).arg(ids).arg(&d).arg(&vocab);
    // SAFETY: shapes checked above; ids are bounds-checked in the kernel.
    unsafe { b.launch(rows_cfg(ids.len(), row_threads(dim).min(256))) }.map_err(driver_err)?;
    Ok(())
}

/// `x += y`.
pub fn add_inplace<E: GpuElem>(
    gpu: &Gpu,
    x: &mut CudaSlice<E>,
    y: &CudaSlice<E>,
) -> Result<(), CudaError> {
    check("add_inplace", x.len() == y.len(), || {
        "x and y differ in length".into()
    })?;
    if x.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("add_inplace_{}", E::SUFFIX))?;
    let n = x.len() as i64;
    let blocks = x.len().div_ceil(256).min(65535) as u32;
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(x).arg(y).arg(&n);
    // SAFETY: equal lengths; the kernel is grid-stride over n.
    unsafe { b.launch(rows_cfg(blocks as usize, 256)) }.map_err(driver_err)?;
    Ok(())
}

/// The index of each row's largest logit (lowest index among equals).
pub fn argmax<E: GpuElem>(
    gpu: &Gpu,
    out: &mut CudaSlice<i32>,
    logits: &CudaSlice<E>,
    vocab: usize,
) -> Result<(), CudaError> {
    check(
        "argmax",
        vocab > 0 && logits.len() == out.len() * vocab,
        || "logits must be [rows, vocab] and out [rows]".into(),
    )?;
    if out.is_empty() {
        return Ok(());
    }
    let f = gpu.function(&SAMPLING, &format!("argmax_{}", E::SUFFIX))?;
    let v = vocab as i32;
    let rows = out.len();
    let mut b = gpu.stream().launch_builder(&f);
    b.arg(out).arg(logits).arg(&v);
    // SAFETY: shapes checked above; 1024 threads, a power of two as the kernel requires.
    unsafe { b.launch(rows_cfg(rows, 1024)) }.map_err(driver_err)?;
    Ok(())
}
