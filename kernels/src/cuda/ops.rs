//! Launching the cache and layer kernels: shape checks on the host, then one launch each.
//! Every function queues work on the GPU's stream and returns; errors from the launch itself
//! come back at once, faults inside a kernel at the next synchronisation.

use cudarc::driver::{CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg};

use super::device::{driver_err, Gpu};
use super::elem::GpuElem;
use super::source::{CACHE_OPS, LAYER_OPS, SAMPLING};
use super::CudaError;
use crate::layout::KvLayout;

/// The device address of a buffer, passed to a kernel as a plain u64. cudarc's guard
/// (`SyncOnDrop`) records events only with event tracking on, which `Gpu::open` turns off
/// (one stream), so dropping it at once is correct.
pub(crate) fn addr<E>(x: &impl DevicePtr<E>, s: &CudaStream) -> u64 {
    x.device_ptr(s).0
}

pub(crate) fn addr_mut<E>(x: &mut impl DevicePtrMut<E>, s: &CudaStream) -> u64 {
    x.device_ptr_mut(s).0
}

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
    k_cache: &mut impl DevicePtrMut<E>,
    v_cache: &mut impl DevicePtrMut<E>,
    layout: &KvLayout,
    k: &impl DevicePtr<E>,
    v: &impl DevicePtr<E>,
    k_stride: usize,
    v_stride: usize,
    slot_mapping: &impl DevicePtr<i64>,
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
    let s = gpu.stream();
    let (kc, vc) = (addr_mut(k_cache, s), addr_mut(v_cache, s));
    let (kp, vp, sp) = (addr(k, s), addr(v, s), addr(slot_mapping, s));
    b.arg(&kc).arg(&vc).arg(&kp).arg(&vp).arg(&sp);
    b.arg(&kvh).arg(&hd).arg(&bs).arg(&ks).arg(&vs).arg(&slots);
    // SAFETY: cache sizes match the layout, k/v cover every token's row, slots are bounds
    // checked in the kernel.
    unsafe { b.launch(rows_cfg(n, row_threads(row).min(256))) }.map_err(driver_err)?;
    Ok(())
}

/// Copy-on-write of whole pages, in every given cache (all layers' K and V) in one launch.
pub fn copy_blocks<E: GpuElem>(
    gpu: &Gpu,
    caches: &mut [&mut impl DevicePtrMut<E>],
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
        .iter_mut()
        .map(|c| addr_mut(&mut **c, stream))
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
    out: &mut impl DevicePtrMut<E>,
    x: &impl DevicePtr<E>,
    w: &impl DevicePtr<E>,
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
    let s = gpu.stream();
    let (o, xp, wp) = (addr_mut(out, s), addr(x, s), addr(w, s));
    b.arg(&o).arg(&xp).arg(&wp).arg(&d).arg(&eps);
    // SAFETY: shapes checked above.
    unsafe { b.launch(rows_cfg(rows, row_threads(dim))) }.map_err(driver_err)?;
    Ok(())
}

/// `residual += x; x = rms_norm(residual) * w`.
pub fn fused_add_rms_norm<E: GpuElem>(
    gpu: &Gpu,
    x: &mut impl DevicePtrMut<E>,
    residual: &mut impl DevicePtrMut<E>,
    w: &impl DevicePtr<E>,
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
    let s = gpu.stream();
    let (xp, rp, wp) = (addr_mut(x, s), addr_mut(residual, s), addr(w, s));
    b.arg(&xp).arg(&rp).arg(&wp).arg(&d).arg(&eps);
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
    q: &mut impl DevicePtrMut<E>,
    k: &mut impl DevicePtrMut<E>,
    positions: &impl DevicePtr<i32>,
    cos_sin: &impl DevicePtr<f32>,
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
    let st = gpu.stream();
    let (qp, kp) = (addr_mut(q, st), addr_mut(k, st));
    let (pp, cp) = (addr(positions, st), addr(cos_sin, st));
    b.arg(&qp).arg(&kp).arg(&pp).arg(&cp);
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
    out: &mut impl DevicePtrMut<E>,
    gate_up: &impl DevicePtr<E>,
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
    let s = gpu.stream();
    let (o, g) = (addr_mut(out, s), addr(gate_up, s));
    b.arg(&o).arg(&g).arg(&i);
    // SAFETY: shapes checked above.
    unsafe { b.launch(rows_cfg(rows, row_threads(inter).min(512))) }.map_err(driver_err)?;
    Ok(())
}

/// `out[t] = table[ids[t]]` for a `[vocab, dim]` table.
pub fn embedding<E: GpuElem>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<E>,
    table: &impl DevicePtr<E>,
    ids: &impl DevicePtr<i32>,
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
    let s = gpu.stream();
    let (o, t, ip) = (addr_mut(out, s), addr(table, s), addr(ids, s));
    b.arg(&o).arg(&t).arg(&ip).arg(&d).arg(&vocab);
    // SAFETY: shapes checked above; ids are bounds-checked in the kernel.
    unsafe { b.launch(rows_cfg(ids.len(), row_threads(dim).min(256))) }.map_err(driver_err)?;
    Ok(())
}

/// `x += y`.
pub fn add_inplace<E: GpuElem>(
    gpu: &Gpu,
    x: &mut impl DevicePtrMut<E>,
    y: &impl DevicePtr<E>,
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
    let s = gpu.stream();
    let (xp, yp) = (addr_mut(x, s), addr(y, s));
    b.arg(&xp).arg(&yp).arg(&n);
    // SAFETY: equal lengths; the kernel is grid-stride over n.
    unsafe { b.launch(rows_cfg(blocks as usize, 256)) }.map_err(driver_err)?;
    Ok(())
}

/// The index of each row's largest logit (lowest index among equals).
pub fn argmax<E: GpuElem>(
    gpu: &Gpu,
    out: &mut impl DevicePtrMut<i32>,
    logits: &impl DevicePtr<E>,
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
    let s = gpu.stream();
    let (o, l) = (addr_mut(out, s), addr(logits, s));
    b.arg(&o).arg(&l).arg(&v);
    // SAFETY: shapes checked above; 1024 threads, a power of two as the kernel requires.
    unsafe { b.launch(rows_cfg(rows, 1024)) }.map_err(driver_err)?;
    Ok(())
}

/// The shapes of [`qkv_rope_write_kv`].
#[derive(Debug, Clone, Copy)]
pub struct QkvShape {
    pub num_tokens: usize,
    pub num_heads: usize,
}

/// Splits fused `[q | k | v]` rows, rotates q into `q_out` and k on the way into the cache,
/// and writes k and v into each token's slot (`-1`: q only).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_write_kv<E: GpuElem>(
    gpu: &Gpu,
    q_out: &mut impl DevicePtrMut<E>,
    qkv: &impl DevicePtr<E>,
    positions: &impl DevicePtr<i32>,
    cos_sin: &impl DevicePtr<f32>,
    k_cache: &mut impl DevicePtrMut<E>,
    v_cache: &mut impl DevicePtrMut<E>,
    layout: &KvLayout,
    slot_mapping: &impl DevicePtr<i64>,
    shape: QkvShape,
) -> Result<(), CudaError> {
    let (n, nh, hd) = (shape.num_tokens, shape.num_heads, layout.head_dim);
    let kvd = layout.num_kv_heads * hd;
    check(
        "qkv_rope_write_kv",
        positions.len() == n
            && slot_mapping.len() == n
            && hd % 2 == 0
            && cos_sin.len() % hd == 0
            && q_out.len() >= n * nh * hd
            && qkv.len() >= n * (nh * hd + 2 * kvd)
            && k_cache.len() == layout.elems()
            && v_cache.len() == layout.elems(),
        || "q, qkv, positions, slots, the cos/sin table or a cache has the wrong shape".into(),
    )?;
    if n == 0 {
        return Ok(());
    }
    let f = gpu.function(&CACHE_OPS, &format!("qkv_rope_write_kv_{}", E::SUFFIX))?;
    let s = gpu.stream();
    let (q, x, p, c) = (
        addr_mut(q_out, s),
        addr(qkv, s),
        addr(positions, s),
        addr(cos_sin, s),
    );
    let (kc, vc, sl) = (
        addr_mut(k_cache, s),
        addr_mut(v_cache, s),
        addr(slot_mapping, s),
    );
    let (nh32, nkv, hd32, bs) = (
        nh as i32,
        layout.num_kv_heads as i32,
        hd as i32,
        layout.block_size as i32,
    );
    let slots = (layout.num_blocks * layout.block_size) as i64;
    let mut b = s.launch_builder(&f);
    b.arg(&q).arg(&x).arg(&p).arg(&c).arg(&kc).arg(&vc).arg(&sl);
    b.arg(&nh32).arg(&nkv).arg(&hd32).arg(&bs).arg(&slots);
    let threads = row_threads(nh * hd / 2).min(256);
    // SAFETY: shapes checked above; slots are bounds-checked in the kernel; positions must be
    // below the table's max position (max_model_len sizes the table).
    unsafe { b.launch(rows_cfg(n, threads)) }.map_err(driver_err)?;
    Ok(())
}

/// `x[r] += bias` for every row of `bias.len()`.
pub fn add_bias<E: GpuElem>(
    gpu: &Gpu,
    x: &mut impl DevicePtrMut<E>,
    bias: &impl DevicePtr<E>,
) -> Result<(), CudaError> {
    let n = bias.len();
    check("add_bias", n > 0 && x.len().is_multiple_of(n), || {
        "x must be whole rows of the bias's length".into()
    })?;
    if x.len() == 0 {
        return Ok(());
    }
    let f = gpu.function(&LAYER_OPS, &format!("add_bias_{}", E::SUFFIX))?;
    let (total, n32) = (x.len() as i64, n as i32);
    let blocks = x.len().div_ceil(256).min(65535);
    let s = gpu.stream();
    let (xp, bp) = (addr_mut(x, s), addr(bias, s));
    let mut b = s.launch_builder(&f);
    b.arg(&xp).arg(&bp).arg(&total).arg(&n32);
    // SAFETY: whole rows checked above; the kernel is grid-stride over total.
    unsafe { b.launch(rows_cfg(blocks, 256)) }.map_err(driver_err)?;
    Ok(())
}
