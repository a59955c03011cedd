//! f32 weight matrices packed once, at load time, for the CPU GEMM.
//!
//! Why: the `gemm` crate packs its operands on every call. For a linear layer the weight
//! is the big operand, so a 64-row decode step re-packed every weight matrix of the model,
//! and profiling the 64 × (128 + 128) run put 13 % of the whole run in that packing. Here a
//! weight `[rows, cols]` (Hugging Face's `[out, in]`) is stored as panels of 16 rows, each
//! panel column-interleaved (`[cols][16]`), which is exactly the order the micro-kernel
//! reads it in; activations are read in place.
//!
//! Blocking (AVX2/FMA, 16 vector registers): a 6 × 16 tile of the output lives in 12
//! accumulators; per step of the inner dimension it takes two loads of the panel and six
//! broadcasts of the activations for 12 FMAs. A 256-deep slice of a panel (16 KiB) stays
//! in L1 while up to 72 activation rows (72 KiB, in L2) pass over it. Threads split the
//! panels, so each weight byte is read from memory once per call.

use rayon::prelude::*;

/// Rows of the weight (output columns) per panel: two AVX2 vectors.
pub const PANEL: usize = 16;
/// Depth of the inner-dimension slice a panel contributes per pass (16 KiB of f32).
const KC: usize = 256;
/// Activation rows per L2 block (a multiple of the micro-kernel's 6 rows).
const MC: usize = 264;
/// Activation rows per micro-kernel tile.
const MR: usize = 6;

/// A weight matrix `[rows, cols]` in panel order; see the module docs.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl PackedMatrix {
    /// Packs a row-major `[rows, cols]` matrix; rows past the last full panel are zero.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weight of {rows} x {cols}");
        let panels = rows.div_ceil(PANEL);
        let mut data = vec![0f32; panels * PANEL * cols];
        if cols > 0 {
            data.par_chunks_mut(PANEL * cols)
                .enumerate()
                .for_each(|(p, panel)| {
                    for j in 0..PANEL.min(rows - p * PANEL) {
                        let src = &w[(p * PANEL + j) * cols..(p * PANEL + j + 1) * cols];
                        for (kk, &v) in src.iter().enumerate() {
                            panel[kk * PANEL + j] = v;
                        }
                    }
                });
        }
        PackedMatrix { rows, cols, data }
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Copies row `j` out (an embedding lookup from a tied embedding/LM-head matrix); a
    /// row past the end gives zeros, as the CUDA embedding kernel does.
    pub fn row_into(&self, j: usize, dst: &mut [f32]) {
        assert!(dst.len() >= self.cols);
        if j >= self.rows {
            dst[..self.cols].fill(0.0);
            return;
        }
        let panel = &self.data[j / PANEL * PANEL * self.cols..][..PANEL * self.cols];
        for (kk, d) in dst[..self.cols].iter_mut().enumerate() {
            *d = panel[kk * PANEL + j % PANEL];
        }
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ` (a linear layer).
    pub fn linear(&self, out: &mut [f32], x: &[f32], m: usize) {
        let (n, k) = (self.rows, self.cols);
        assert!(out.len() >= m * n && x.len() >= m * k);
        if m == 0 || n == 0 {
            return;
        }
        let kc = depth_slice(k);
        PACKED_X.with(|buf| {
            let mut buf = buf.borrow_mut();
            pack_activations(&mut buf, x, m, k, kc);
            let xp: &[f32] = &buf;
            let panels = n.div_ceil(PANEL);
            let threads = rayon::current_num_threads().max(1);
            // A few tasks per thread so a thread slowed by a noisy neighbour does not hold
            // up the step; each task still streams whole panels.
            let per_task = panels.div_ceil(threads * 4).max(1);
            let out_ptr = SendPtr(out.as_mut_ptr());
            let tasks: Vec<usize> = (0..panels).step_by(per_task).collect();
            tasks.par_iter().for_each(|&p0| {
                let p1 = (p0 + per_task).min(panels);
                // SAFETY: each task writes only the output columns of its own panels.
                unsafe { self.panels_into(out_ptr, xp, m, kc, p0..p1) };
            });
        });
    }

    /// The output columns of panels `range`, for all `m` rows, from activations packed by
    /// `pack_activations` with slice depth `kc`.
    ///
    /// # Safety
    /// `out` holds `m * rows` elements and no other thread writes these columns.
    unsafe fn panels_into(
        &self,
        out: SendPtr,
        xp: &[f32],
        m: usize,
        kc: usize,
        range: std::ops::Range<usize>,
    ) {
        let (n, k) = (self.rows, self.cols);
        let m_pad = m.div_ceil(MR) * MR;
        let kernel = micro_kernel_fn();
        for k0 in (0..k).step_by(kc) {
            let depth = kc.min(k - k0);
            let x_slice = &xp[k0 * m_pad..][..depth * m_pad];
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                for p in range.clone() {
                    let w = &self.data[p * PANEL * k + k0 * PANEL..][..depth * PANEL];
                    let ncols = PANEL.min(n - p * PANEL);
                    for ir in (i0..i0 + mc).step_by(MR) {
                        let tile = Tile {
                            x: x_slice.as_ptr().add(ir * depth),
                            rows: MR.min(m - ir),
                            w: w.as_ptr(),
                            depth,
                            out: out.0.add(ir * n + p * PANEL),
                            out_stride: n,
                            cols: ncols,
                            accumulate: k0 > 0,
                        };
                        kernel(&tile);
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The packed activations of the calling thread's current `linear` (reused, so a step
    /// does not page-fault in a fresh buffer per layer).
    static PACKED_X: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The inner-dimension slice depth: at most `KC`, and equal slices (576 → 3 × 192 rather
/// than 256 + 256 + 64, whose short last pass pays the tile overhead for little work).
fn depth_slice(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// Lays `x[m, k]` out as the micro-kernel reads it: per depth slice, per tile of `MR`
/// rows, `[depth][MR]` (rows past `m` zero). One contiguous stream per tile instead of
/// `MR` strided ones.
fn pack_activations(buf: &mut Vec<f32>, x: &[f32], m: usize, k: usize, kc: usize) {
    let m_pad = m.div_ceil(MR) * MR;
    buf.clear();
    buf.resize(m_pad * k, 0.0);
    for k0 in (0..k).step_by(kc) {
        let depth = kc.min(k - k0);
        let slice = &mut buf[k0 * m_pad..][..depth * m_pad];
        let pack_tile = |(t, tile): (usize, &mut [f32])| {
            for r in 0..MR.min(m - t * MR) {
                let row = &x[(t * MR + r) * k + k0..][..depth];
                for (d, &v) in row.iter().enumerate() {
                    tile[d * MR + r] = v;
                }
            }
        };
        // Prefill-sized inputs are megabytes: pack them on all threads.
        if m >= 256 {
            slice
                .par_chunks_mut(depth * MR)
                .enumerate()
                .for_each(pack_tile);
        } else {
            slice.chunks_mut(depth * MR).enumerate().for_each(pack_tile);
        }
    }
}

/// One micro-kernel call: `out[r][c] (+)= Σ_d x[d][r] · w[d][c]` for r < rows ≤ 6,
/// c < cols ≤ 16, d < depth (`x` packed `[depth][MR]`, `w` packed `[depth][PANEL]`).
struct Tile {
    x: *const f32,
    rows: usize,
    w: *const f32,
    depth: usize,
    out: *mut f32,
    out_stride: usize,
    cols: usize,
    accumulate: bool,
}

fn micro_kernel_fn() -> unsafe fn(&Tile) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        return micro_kernel_avx2;
    }
    micro_kernel_portable
}

/// The reference micro-kernel (any CPU).
///
/// # Safety
/// The tile's pointers cover the extents it names.
unsafe fn micro_kernel_portable(t: &Tile) {
    for r in 0..t.rows {
        let mut acc = [0f32; PANEL];
        for d in 0..t.depth {
            let xv = *t.x.add(d * MR + r);
            for (c, a) in acc.iter_mut().enumerate() {
                *a += xv * *t.w.add(d * PANEL + c);
            }
        }
        for (c, &a) in acc.iter().enumerate().take(t.cols) {
            let o = t.out.add(r * t.out_stride + c);
            *o = if t.accumulate { *o + a } else { a };
        }
    }
}

/// # Safety
/// AVX2 and FMA present; the tile's pointers cover the extents it names.
#[cfg(target_arch = "x86_64")]
unsafe fn micro_kernel_avx2(t: &Tile) {
    match t.rows {
        6 => avx2_rows::<6>(t),
        5 => avx2_rows::<5>(t),
        4 => avx2_rows::<4>(t),
        3 => avx2_rows::<3>(t),
        2 => avx2_rows::<2>(t),
        _ => avx2_rows::<1>(t),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // rows index x and the accumulators in lockstep
unsafe fn avx2_rows<const R: usize>(t: &Tile) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for d in 0..t.depth {
        let w0 = _mm256_loadu_ps(t.w.add(d * PANEL));
        let w1 = _mm256_loadu_ps(t.w.add(d * PANEL + 8));
        for r in 0..R {
            let xv = _mm256_broadcast_ss(&*t.x.add(d * MR + r));
            acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
        }
    }
    for r in 0..R {
        let o = t.out.add(r * t.out_stride);
        if t.cols == PANEL {
            let (mut a0, mut a1) = (acc[r][0], acc[r][1]);
            if t.accumulate {
                a0 = _mm256_add_ps(a0, _mm256_loadu_ps(o));
                a1 = _mm256_add_ps(a1, _mm256_loadu_ps(o.add(8)));
            }
            _mm256_storeu_ps(o, a0);
            _mm256_storeu_ps(o.add(8), a1);
        } else {
            // The last panel of a matrix whose rows are not a multiple of 16.
            let mut lanes = [0f32; PANEL];
            _mm256_storeu_ps(lanes.as_mut_ptr(), acc[r][0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), acc[r][1]);
            for (c, &a) in lanes.iter().enumerate().take(t.cols) {
                let oc = o.add(c);
                *oc = if t.accumulate { *oc + a } else { a };
            }
        }
    }
}

/// The output pointer, shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: tasks write disjoint column ranges of the output.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|d| x[i * k + d] as f64 * w[j * k + d] as f64)
                    .sum();
            }
        }
        out
    }

    fn check(m: usize, k: usize, n: usize, kernel: Option<unsafe fn(&Tile)>) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let p = PackedMatrix::pack(&w, n, k);
        let mut out = vec![f32::NAN; m * n];
        match kernel {
            None => p.linear(&mut out, &x, m),
            Some(f) => {
                // The whole matrix through one given micro-kernel, single-threaded.
                let kc = depth_slice(k);
                let mut xp = vec![];
                pack_activations(&mut xp, &x, m, k, kc);
                let m_pad = m.div_ceil(MR) * MR;
                for k0 in (0..k).step_by(kc) {
                    let depth = kc.min(k - k0);
                    for pi in 0..n.div_ceil(PANEL) {
                        for ir in (0..m).step_by(MR) {
                            let tile = Tile {
                                x: xp[k0 * m_pad + ir * depth..].as_ptr(),
                                rows: MR.min(m - ir),
                                w: p.data[pi * PANEL * k + k0 * PANEL..].as_ptr(),
                                depth,
                                out: out[ir * n + pi * PANEL..].as_mut_ptr(),
                                out_stride: n,
                                cols: PANEL.min(n - pi * PANEL),
                                accumulate: k0 > 0,
                            };
                            // SAFETY: the tile lies inside the packed x and w, and out.
                            unsafe { f(&tile) };
                        }
                    }
                }
            }
        }
        let want = reference(&x, &w, m, k, n);
        for (i, (g, r)) in out.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                "m {m} k {k} n {n}: out[{i}] = {g}, want {r}"
            );
        }
    }

    #[test]
    fn packed_linear_matches_f64_for_ragged_shapes() {
        for &(m, k, n) in &[
            (1, 576, 576),
            (5, 300, 17),
            (7, 257, 33),
            (64, 576, 1536),
            (73, 1536, 40),
            (150, 64, 100),
        ] {
            check(m, k, n, None);
            check(m, k, n, Some(micro_kernel_portable));
        }
    }

    #[test]
    fn rows_unpack_exactly() {
        let (n, k) = (37, 11);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let p = PackedMatrix::pack(&w, n, k);
        let mut row = vec![0f32; k];
        for j in 0..n {
            p.row_into(j, &mut row);
            assert_eq!(row, w[j * k..(j + 1) * k]);
        }
    }
}
