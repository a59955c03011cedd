//! Launching the cache and layer kernels: shape checks on the host, then one launch each.
//! Every function queues work on the device's stream and returns; errors from the launch
//! itself come back at once, faults inside a kernel at the next synchronisation (on the
//! emulator, which runs a launch to completion, at once too).

use super::elem::GpuElem;
use super::launch::{arg, arg_mut, check, Device, DeviceBuf, DeviceBufMut, KernelArg, LaunchCfg};
use super::source::{CACHE_OPS, LAYER_OPS, SAMPLING};
use super::CudaError;
use crate::layout::KvLayout;

/// Threads per block for the row kernels: enough for a row, at most 1024.
fn row_threads(n: usize) -> u32 {
    (n.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// Scatters `k`/`v` rows (token `t` at `t * stride`) into their slots.
#[allow(clippy::too_many_arguments)]
pub fn write_kv<D: Device, E: GpuElem>(
    dev: &D,
    k_cache: &mut impl DeviceBufMut<D, E>,
    v_cache: &mut impl DeviceBufMut<D, E>,
    layout: &KvLayout,
    k: &impl DeviceBuf<D, E>,
    v: &impl DeviceBuf<D, E>,
    k_stride: usize,
    v_stride: usize,
    slot_mapping: &impl DeviceBuf<D, i64>,
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
    let args = [
        arg_mut(dev, k_cache),
        arg_mut(dev, v_cache),
        arg(dev, k),
        arg(dev, v),
        arg(dev, slot_mapping),
        KernelArg::I32(layout.num_kv_heads as i32),
        KernelArg::I32(layout.head_dim as i32),
        KernelArg::I32(layout.block_size as i32),
        KernelArg::I32(k_stride as i32),
        KernelArg::I32(v_stride as i32),
        KernelArg::I64((layout.num_blocks * layout.block_size) as i64),
    ];
    let entry = format!("write_kv_{}", E::SUFFIX);
    let cfg = LaunchCfg::rows(n, row_threads(row).min(256));
    // SAFETY: cache sizes match the layout, k/v cover every token's row, slots are bounds
    // checked in the kernel.
    unsafe { dev.launch(&CACHE_OPS, &entry, cfg, &args) }
}

/// Copy-on-write of whole pages, in every given cache (all layers' K and V) in one launch.
/// The pairs run in parallel, so a list where one pair's destination is another's source (the
/// result would depend on their order), or two pairs share a destination, is refused.
pub fn copy_blocks<D: Device, E: GpuElem, B: DeviceBufMut<D, E>>(
    dev: &D,
    caches: &mut [&mut B],
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
    let mut dsts: Vec<u32> = pairs.iter().map(|p| p.1).collect();
    dsts.sort_unstable();
    let srcs: std::collections::HashSet<u32> = pairs.iter().map(|p| p.0).collect();
    if let Some(&d) = dsts.iter().find(|d| srcs.contains(d)) {
        return check("copy_blocks", false, || {
            format!("block {d} is both a destination and a source: the result would depend on the order of the copies")
        });
    }
    if let Some(w) = dsts.windows(2).find(|w| w[0] == w[1]) {
        return check("copy_blocks", false, || {
            format!("block {} is the destination of two copies", w[0])
        });
    }
    let ptrs: Vec<u64> = caches.iter_mut().map(|c| c.device_addr_mut(dev)).collect();
    let ptrs = dev.upload(&ptrs)?;
    let flat: Vec<i32> = pairs
        .iter()
        .flat_map(|&(s, d)| [s as i32, d as i32])
        .collect();
    let flat = dev.upload(&flat)?;
    let args = [
        arg(dev, &ptrs),
        arg(dev, &flat),
        KernelArg::I64(layout.block_elems() as i64),
    ];
    let cfg = LaunchCfg {
        grid: (pairs.len() as u32, caches.len() as u32, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let entry = format!("copy_blocks_{}", E::SUFFIX);
    // SAFETY: every pointer is a live cache of `layout.elems()` elements (checked above) and
    // borrowed mutably for the duration; block numbers are in range; no copy reads what
    // another writes. The uploaded lists are freed on the device's one stream, after the
    // launch has read them.
    unsafe { dev.launch(&CACHE_OPS, &entry, cfg, &args) }
}

/// The two norms: `first` (the output, or x) and `second` (x, or the residual) are whole
/// rows of `w`'s length, one block per row.
fn launch_norm<D: Device, E: GpuElem>(
    dev: &D,
    kernel: &str,
    [first, second]: [KernelArg; 2],
    second_len: usize,
    first_len: usize,
    w: &impl DeviceBuf<D, E>,
    eps: f32,
) -> Result<(), CudaError> {
    let dim = w.len();
    check(
        kernel,
        dim > 0 && second_len.is_multiple_of(dim) && first_len == second_len,
        || "the rows must be whole rows of the weight's length, as many in each".into(),
    )?;
    let rows = second_len / dim;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        first,
        second,
        arg(dev, w),
        KernelArg::I32(dim as i32),
        KernelArg::F32(eps),
    ];
    let entry = format!("{kernel}_{}", E::SUFFIX);
    let cfg = LaunchCfg::rows(rows, row_threads(dim));
    // SAFETY: both buffers are `rows` rows of the weight's length (checked above).
    unsafe { dev.launch(&LAYER_OPS, &entry, cfg, &args) }
}

/// `out = rms_norm(x) * w` per row of `w.len()`.
pub fn rms_norm<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    x: &impl DeviceBuf<D, E>,
    w: &impl DeviceBuf<D, E>,
    eps: f32,
) -> Result<(), CudaError> {
    let (n_out, n_x) = (out.len(), x.len());
    let bufs = [arg_mut(dev, out), arg(dev, x)];
    launch_norm(dev, "rms_norm", bufs, n_x, n_out, w, eps)
}

/// `residual += x; x = rms_norm(residual) * w`.
pub fn fused_add_rms_norm<D: Device, E: GpuElem>(
    dev: &D,
    x: &mut impl DeviceBufMut<D, E>,
    residual: &mut impl DeviceBufMut<D, E>,
    w: &impl DeviceBuf<D, E>,
    eps: f32,
) -> Result<(), CudaError> {
    let (n_x, n_res) = (x.len(), residual.len());
    let bufs = [arg_mut(dev, x), arg_mut(dev, residual)];
    launch_norm(dev, "fused_add_rms_norm", bufs, n_x, n_res, w, eps)
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
pub fn rope<D: Device, E: GpuElem>(
    dev: &D,
    q: &mut impl DeviceBufMut<D, E>,
    k: &mut impl DeviceBufMut<D, E>,
    positions: &impl DeviceBuf<D, i32>,
    cos_sin: &impl DeviceBuf<D, f32>,
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
    let args = [
        arg_mut(dev, q),
        arg_mut(dev, k),
        arg(dev, positions),
        arg(dev, cos_sin),
        KernelArg::I32(s.num_heads as i32),
        KernelArg::I32(s.num_kv_heads as i32),
        KernelArg::I32(s.head_dim as i32),
        KernelArg::I32(s.q_stride as i32),
        KernelArg::I32(s.k_stride as i32),
    ];
    let threads = row_threads((s.num_heads + s.num_kv_heads) * s.head_dim / 2).min(256);
    let entry = format!("rope_{}", E::SUFFIX);
    // SAFETY: shapes checked above; positions must be below the table's max position (the
    // engine never schedules past max_model_len, which sizes the table).
    unsafe { dev.launch(&LAYER_OPS, &entry, LaunchCfg::rows(n, threads), &args) }
}

/// `out[t, i] = silu(gate_up[t, i]) * gate_up[t, inter + i]`.
pub fn silu_and_mul<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    gate_up: &impl DeviceBuf<D, E>,
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
    let args = [
        arg_mut(dev, out),
        arg(dev, gate_up),
        KernelArg::I32(inter as i32),
    ];
    let entry = format!("silu_and_mul_{}", E::SUFFIX);
    let cfg = LaunchCfg::rows(rows, row_threads(inter).min(512));
    // SAFETY: shapes checked above.
    unsafe { dev.launch(&LAYER_OPS, &entry, cfg, &args) }
}

/// `out[t] = table[ids[t]]` for a `[vocab, dim]` table.
pub fn embedding<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, E>,
    table: &impl DeviceBuf<D, E>,
    ids: &impl DeviceBuf<D, i32>,
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
    let args = [
        arg_mut(dev, out),
        arg(dev, table),
        arg(dev, ids),
        KernelArg::I32(dim as i32),
        KernelArg::I32((table.len() / dim) as i32),
    ];
    let entry = format!("embedding_{}", E::SUFFIX);
    let cfg = LaunchCfg::rows(ids.len(), row_threads(dim).min(256));
    // SAFETY: shapes checked above; ids are bounds-checked in the kernel.
    unsafe { dev.launch(&LAYER_OPS, &entry, cfg, &args) }
}

/// `x += y`.
pub fn add_inplace<D: Device, E: GpuElem>(
    dev: &D,
    x: &mut impl DeviceBufMut<D, E>,
    y: &impl DeviceBuf<D, E>,
) -> Result<(), CudaError> {
    check("add_inplace", x.len() == y.len(), || {
        "x and y differ in length".into()
    })?;
    if x.is_empty() {
        return Ok(());
    }
    let n = x.len();
    let args = [arg_mut(dev, x), arg(dev, y), KernelArg::I64(n as i64)];
    let blocks = n.div_ceil(256).min(65535);
    let entry = format!("add_inplace_{}", E::SUFFIX);
    // SAFETY: equal lengths; the kernel is grid-stride over n.
    unsafe { dev.launch(&LAYER_OPS, &entry, LaunchCfg::rows(blocks, 256), &args) }
}

/// The index of each row's largest logit (lowest index among equals).
pub fn argmax<D: Device, E: GpuElem>(
    dev: &D,
    out: &mut impl DeviceBufMut<D, i32>,
    logits: &impl DeviceBuf<D, E>,
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
    let rows = out.len();
    let args = [
        arg_mut(dev, out),
        arg(dev, logits),
        KernelArg::I32(vocab as i32),
    ];
    let entry = format!("argmax_{}", E::SUFFIX);
    // SAFETY: shapes checked above; 1024 threads, a power of two as the kernel requires.
    unsafe { dev.launch(&SAMPLING, &entry, LaunchCfg::rows(rows, 1024), &args) }
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
pub fn qkv_rope_write_kv<D: Device, E: GpuElem>(
    dev: &D,
    q_out: &mut impl DeviceBufMut<D, E>,
    qkv: &impl DeviceBuf<D, E>,
    positions: &impl DeviceBuf<D, i32>,
    cos_sin: &impl DeviceBuf<D, f32>,
    k_cache: &mut impl DeviceBufMut<D, E>,
    v_cache: &mut impl DeviceBufMut<D, E>,
    layout: &KvLayout,
    slot_mapping: &impl DeviceBuf<D, i64>,
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
    let args = [
        arg_mut(dev, q_out),
        arg(dev, qkv),
        arg(dev, positions),
        arg(dev, cos_sin),
        arg_mut(dev, k_cache),
        arg_mut(dev, v_cache),
        arg(dev, slot_mapping),
        KernelArg::I32(nh as i32),
        KernelArg::I32(layout.num_kv_heads as i32),
        KernelArg::I32(hd as i32),
        KernelArg::I32(layout.block_size as i32),
        KernelArg::I64((layout.num_blocks * layout.block_size) as i64),
    ];
    let threads = row_threads(nh * hd / 2).min(256);
    let entry = format!("qkv_rope_write_kv_{}", E::SUFFIX);
    // SAFETY: shapes checked above; slots are bounds-checked in the kernel; positions must be
    // below the table's max position (max_model_len sizes the table).
    unsafe { dev.launch(&CACHE_OPS, &entry, LaunchCfg::rows(n, threads), &args) }
}

/// `x[r] += bias` for every row of `bias.len()`.
pub fn add_bias<D: Device, E: GpuElem>(
    dev: &D,
    x: &mut impl DeviceBufMut<D, E>,
    bias: &impl DeviceBuf<D, E>,
) -> Result<(), CudaError> {
    let n = bias.len();
    check("add_bias", n > 0 && x.len().is_multiple_of(n), || {
        "x must be whole rows of the bias's length".into()
    })?;
    if x.is_empty() {
        return Ok(());
    }
    let total = x.len();
    let args = [
        arg_mut(dev, x),
        arg(dev, bias),
        KernelArg::I64(total as i64),
        KernelArg::I32(n as i32),
    ];
    let blocks = total.div_ceil(256).min(65535);
    let entry = format!("add_bias_{}", E::SUFFIX);
    // SAFETY: whole rows checked above; the kernel is grid-stride over total.
    unsafe { dev.launch(&LAYER_OPS, &entry, LaunchCfg::rows(blocks, 256), &args) }
}
