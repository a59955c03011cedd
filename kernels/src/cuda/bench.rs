//! `pagedrt bench kernels`: the card's copy bandwidth, then decode attention as a fraction
//! of it, the cost of paging (contiguous vs shuffled pages), and causal prefill TFLOP/s.
//!
//! Times come from CUDA events around a batch of launches after a warm-up; each figure is
//! the median of several batches.

use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::CudaSlice;

use super::attention::{
    paged_attention, AttentionBatch, AttentionMeta, AttentionShape, AttentionWorkspace, Route,
    SeqChunk,
};
use super::device::{driver_err, Gpu};
use super::selftest::{up, Rng};
use super::CudaError;
use crate::layout::KvLayout;

/// One measured row.
#[derive(Debug, Clone)]
pub struct KernelTiming {
    pub name: String,
    pub median_us: f64,
    /// Bytes the kernel must move, when that is what bounds it.
    pub bytes: Option<f64>,
    /// Floating-point operations, when that is what bounds it.
    pub flops: Option<f64>,
}

impl KernelTiming {
    pub fn gb_per_s(&self) -> Option<f64> {
        self.bytes.map(|b| b / self.median_us / 1e3)
    }
    pub fn tflop_per_s(&self) -> Option<f64> {
        self.flops.map(|f| f / self.median_us / 1e6)
    }
}

/// Median microseconds per call of `f`, over `batches` batches of `per_batch` calls.
fn time<F>(gpu: &Gpu, batches: usize, per_batch: usize, mut f: F) -> Result<f64, CudaError>
where
    F: FnMut() -> Result<(), CudaError>,
{
    for _ in 0..3 {
        f()?;
    }
    gpu.sync()?;
    let mut us = Vec::with_capacity(batches);
    let stream = gpu.stream();
    for _ in 0..batches {
        let start = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err)?;
        for _ in 0..per_batch {
            f()?;
        }
        let end = stream
            .record_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
            .map_err(driver_err)?;
        end.synchronize().map_err(driver_err)?;
        let ms = start.elapsed_ms(&end).map_err(driver_err)? as f64;
        us.push(ms * 1e3 / per_batch as f64);
    }
    us.sort_by(f64::total_cmp);
    Ok(us[us.len() / 2])
}

/// A step of `seqs` (query length, context length) sequences whose pages are `pages` in
/// order, with contiguous q rows and the usual 1/sqrt(head_dim) scale.
fn batch(
    gpu: &Gpu,
    layout: KvLayout,
    num_heads: usize,
    seqs: &[(usize, usize)],
    pages: &[u32],
) -> Result<AttentionBatch<Gpu>, CudaError> {
    let (mut next_page, mut next_row) = (0, 0);
    let mut list = Vec::new();
    for &(q, ctx) in seqs {
        let n = ctx.div_ceil(layout.block_size);
        list.push(SeqChunk {
            query_start: next_row,
            query_len: q,
            context_len: ctx,
            block_table: &pages[next_page..next_page + n],
        });
        next_page += n;
        next_row += q;
    }
    let shape = AttentionShape {
        layout,
        num_heads,
        q_stride: num_heads * layout.head_dim,
        scale: 1.0 / (layout.head_dim as f32).sqrt(),
    };
    AttentionBatch::new::<half::bf16>(gpu, &AttentionMeta::new(&list)?, shape, Route::Split)
}

/// Device-to-device copy of 1 GiB; bytes counted as read + written.
pub fn copy_bandwidth(gpu: &Gpu) -> Result<KernelTiming, CudaError> {
    let n = 1usize << 30;
    let stream = gpu.stream();
    let src: CudaSlice<u8> = stream.alloc_zeros(n).map_err(driver_err)?;
    let mut dst: CudaSlice<u8> = stream.alloc_zeros(n).map_err(driver_err)?;
    let median_us = time(gpu, 7, 5, || {
        stream.memcpy_dtod(&src, &mut dst).map_err(driver_err)
    })?;
    Ok(KernelTiming {
        name: "device-to-device copy, 1 GiB".into(),
        median_us,
        bytes: Some(2.0 * n as f64),
        flops: None,
    })
}

/// Decode attention over `batch` sequences of `ctx` tokens: bf16, 32 query / 8 KV heads,
/// head_dim 128, block size 16, pages shuffled unless `contiguous`.
pub fn decode(
    gpu: &Gpu,
    batch: usize,
    ctx: usize,
    contiguous: bool,
) -> Result<KernelTiming, CudaError> {
    type E = half::bf16;
    let (kvh, g, hd, bs) = (8usize, 4usize, 128usize, 16usize);
    let nh = kvh * g;
    let per_seq = ctx.div_ceil(bs);
    let layout = KvLayout {
        num_blocks: batch * per_seq,
        num_kv_heads: kvh,
        block_size: bs,
        head_dim: hd,
    };
    let mut rng = Rng::new(3);
    let mut pages: Vec<u32> = (0..layout.num_blocks as u32).collect();
    if !contiguous {
        rng.shuffle(&mut pages);
    }
    let stream = gpu.stream();
    // Random caches would take long to upload; values do not change the timing.
    let kc: CudaSlice<E> = stream.alloc_zeros(layout.elems()).map_err(driver_err)?;
    let vc: CudaSlice<E> = stream.alloc_zeros(layout.elems()).map_err(driver_err)?;
    let q = up(gpu, &rng.vec::<E>(batch * nh * hd, 1.0))?;
    let step = self::batch(gpu, layout, nh, &vec![(1, ctx); batch], &pages)?;
    let mut out: CudaSlice<E> = stream.alloc_zeros(batch * nh * hd).map_err(driver_err)?;
    let mut ws = AttentionWorkspace::default();
    let median_us = time(gpu, 7, 20, || {
        paged_attention(gpu, &mut out, &q, &kc, &vc, &step, &mut ws)
    })?;
    let kv_bytes = (batch * ctx * kvh * hd * 2 * std::mem::size_of::<E>()) as f64;
    Ok(KernelTiming {
        name: format!(
            "decode bf16 32/8 hd128 bs16, batch {batch} x ctx {ctx}, {} pages",
            if contiguous { "contiguous" } else { "shuffled" }
        ),
        median_us,
        bytes: Some(kv_bytes),
        flops: None,
    })
}

/// Causal prefill of one `n`-token sequence: bf16, 32/8 heads, head_dim 128, block size 16.
pub fn prefill(gpu: &Gpu, n: usize) -> Result<KernelTiming, CudaError> {
    type E = half::bf16;
    let (kvh, g, hd, bs) = (8usize, 4usize, 128usize, 16usize);
    let nh = kvh * g;
    let layout = KvLayout {
        num_blocks: n.div_ceil(bs),
        num_kv_heads: kvh,
        block_size: bs,
        head_dim: hd,
    };
    let mut rng = Rng::new(5);
    let stream = gpu.stream();
    let kc = up(gpu, &rng.vec::<E>(layout.elems(), 1.0))?;
    let vc = up(gpu, &rng.vec::<E>(layout.elems(), 1.0))?;
    let q = up(gpu, &rng.vec::<E>(n * nh * hd, 1.0))?;
    let pages: Vec<u32> = (0..layout.num_blocks as u32).collect();
    let step = batch(gpu, layout, nh, &[(n, n)], &pages)?;
    let mut out: CudaSlice<E> = stream.alloc_zeros(n * nh * hd).map_err(driver_err)?;
    let mut ws = AttentionWorkspace::default();
    let median_us = time(gpu, 5, 3, || {
        paged_attention(gpu, &mut out, &q, &kc, &vc, &step, &mut ws)
    })?;
    // QKᵀ and PV over the causal half: 2 matmuls x 2 flops x heads x hd x n(n+1)/2.
    let flops = 4.0 * nh as f64 * hd as f64 * (n * (n + 1) / 2) as f64;
    Ok(KernelTiming {
        name: format!("prefill bf16 32/8 hd128 bs16, 1 x {n} tokens, causal"),
        median_us,
        bytes: None,
        flops: Some(flops),
    })
}

/// Every benchmark, copy bandwidth first; `on_row` sees each row as it is measured.
pub fn run_all(
    gpu: &Gpu,
    mut on_row: impl FnMut(&KernelTiming),
) -> Result<Vec<KernelTiming>, CudaError> {
    let mut rows = Vec::new();
    let mut push = |r: KernelTiming| {
        on_row(&r);
        rows.push(r);
    };
    push(copy_bandwidth(gpu)?);
    for (batch, ctx) in [
        (16, 2048),
        (16, 8192),
        (64, 2048),
        (64, 256),
        (256, 1024),
        (1, 32768),
    ] {
        push(decode(gpu, batch, ctx, false)?);
    }
    push(decode(gpu, 64, 2048, true)?);
    push(decode(gpu, 16, 8192, true)?);
    push(prefill(gpu, 512)?);
    push(prefill(gpu, 4096)?);
    Ok(rows)
}
