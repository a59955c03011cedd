//! Weight matrices (f32 or bf16) packed once, at load time, for the CPU GEMM.
//!
//! Why: the `gemm` crate packs its operands on every call. For a linear layer the weight
//! is the big operand, so a 64-row decode step re-packed every weight matrix of the model,
//! and profiling the 64 × (128 + 128) run put 13 % of the whole run in that packing. Here a
//! weight `[rows, cols]` (Hugging Face's `[out, in]`) is stored as panels of 16 rows, each
//! panel column-interleaved (`[cols][16]`), which is exactly the order the micro-kernel
//! reads it in; activations are packed per call into 6-row tiles, except decode-sized
//! inputs to matrices of up to `IN_PLACE_MAX_COLS` outputs, which are read in place
//! (packing them cost more than it saved). bf16 panels are widened
//! in registers by their micro-kernel (`packed_kernel`), so `--dtype bf16` needs no
//! widening pass and decode reads half the bytes.
//!
//! Blocking (AVX2/FMA, 16 vector registers): a 6 × 16 tile of the output lives in 12
//! accumulators; per step of the inner dimension it takes two loads of the panel and six
//! broadcasts of the activations for 12 FMAs. For prefill-sized inputs a 256-deep slice of
//! a panel (16 KiB) stays in L1 while a block of activation rows (in L2) passes over it;
//! decode-sized inputs are not sliced: each tile runs the whole depth, the panel streaming
//! from L2. The thread team (`team`) splits the panels, so each weight byte is read from
//! memory once per call; for decode-sized inputs each panel is read front to back.

use super::huge_pages::HugePageBuf;
use super::pack_x::pack_activations;
pub use super::packed_kernel::{PanelElem, PANEL};
use super::packed_kernel::{Tile, XLayout, MR};
use super::team::{self, SendPtr};

/// Depth of the inner-dimension slice a panel contributes per pass (16 KiB of f32).
const KC: usize = 256;
/// Activation rows per L2 block (a multiple of the micro-kernel's 6 rows).
const MC: usize = 264;
/// Packed activations up to this size stay in L2 while every panel passes over them, so
/// each panel can be read whole, front to back (one stream for the prefetcher), rather
/// than a depth slice at a time.
const X_IN_L2_BYTES: usize = 256 << 10;
/// Activations up to this size (one core's L2) are not sliced in depth at all: each
/// 6-row tile runs the whole inner dimension in one micro-kernel call, its panel streaming
/// from L2, so no output is written and read back between slices. Measured against 192- and
/// 256-deep slices at decode shapes (1-128 rows, depth 576 and 1,536), interleaved: equal
/// to 8 % faster, never slower (benches/RESULTS.md).
const FULL_DEPTH_BYTES: usize = 512 << 10;
/// Full-depth inputs are read in place, not packed, when the matrix has at most this many
/// rows (output columns). Packing is one pass over the activations on one thread, paid
/// once per call; reading six row streams instead of one costs a little in every tile.
/// A 30-matrix probe at 64 rows, both alternated in one process (median GFLOP/s, in place
/// / packed): 576 x 576 1.11-1.21x, 1,536 -> 576 1.07-1.08x, 576 -> 960 1.02-1.03x,
/// 576 -> 1,536 1.01-1.06x, 576 -> 3,072 0.95x.
const IN_PLACE_MAX_COLS: usize = 2048;

/// A weight matrix `[rows, cols]` in panel order, in f32 or bf16, in huge-page-backed
/// memory (`huge_pages`: the decode step streams it); see the module docs.
#[derive(Debug, Clone)]
pub struct PackedMatrix<E: PanelElem = f32> {
    rows: usize,
    cols: usize,
    data: HugePageBuf<E>,
}

impl<E: PanelElem> PackedMatrix<E> {
    /// Packs a row-major `[rows, cols]` f32 matrix (rounding to `E`); rows past the last
    /// full panel are zero.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weight of {rows} x {cols}");
        let panels = rows.div_ceil(PANEL);
        let mut data = HugePageBuf::zeroed(panels * PANEL * cols);
        if cols > 0 {
            team::for_each_chunk_mut(&mut data, PANEL * cols, |p, panel| {
                for j in 0..PANEL.min(rows - p * PANEL) {
                    let src = &w[(p * PANEL + j) * cols..(p * PANEL + j + 1) * cols];
                    for (kk, &v) in src.iter().enumerate() {
                        panel[kk * PANEL + E::slot(j)] = E::from_f32(v);
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
            *d = panel[kk * PANEL + E::slot(j % PANEL)].to_f32();
        }
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ` (a linear layer).
    pub fn linear(&self, out: &mut [f32], x: &[f32], m: usize) {
        let (n, k) = (self.rows, self.cols);
        assert!(out.len() >= m * n && x.len() >= m * k);
        if m == 0 || n == 0 {
            return;
        }
        let m_pad = m.div_ceil(MR) * MR;
        let full_depth = m_pad * k * 4 <= FULL_DEPTH_BYTES;
        let kc = if full_depth { k } else { depth_slice(k) };
        // Decode-sized inputs of matrices with few output columns are read in place (see
        // `XLayout::Rows`); the rest are packed. The buffer is taken out of the
        // thread-local for the call, not borrowed, so a `linear` nested in a task on this
        // thread would simply find no buffer to reuse.
        let in_place = full_depth && n <= IN_PLACE_MAX_COLS;
        let mut buf = Vec::new();
        let xs = if in_place {
            Activations {
                x,
                layout: XLayout::Rows(k),
            }
        } else {
            buf = PACKED_X.take();
            pack_activations(&mut buf, x, m, k, kc);
            Activations {
                x: &buf,
                layout: XLayout::Packed,
            }
        };
        let panels = n.div_ceil(PANEL);
        let threads = team::threads();
        let per_task = panels_per_task(panels, threads);
        let out_ptr = SendPtr(out.as_mut_ptr());
        team::for_each_task(panels.div_ceil(per_task), |task| {
            let p0 = task * per_task;
            let p1 = (p0 + per_task).min(panels);
            // SAFETY: each task writes only the output columns of its own panels.
            unsafe { self.panels_into(out_ptr, xs, m, kc, p0..p1) };
        });
        if !in_place {
            PACKED_X.set(buf);
        }
    }

    /// The output columns of panels `range`, for all `m` rows, from activations in place
    /// or packed by `pack_activations` with slice depth `kc`.
    ///
    /// # Safety
    /// `out` holds `m * rows` elements and no other thread writes these columns.
    unsafe fn panels_into(
        &self,
        out: SendPtr<f32>,
        xs: Activations,
        m: usize,
        kc: usize,
        range: std::ops::Range<usize>,
    ) {
        let k = self.cols;
        let m_pad = m.div_ceil(MR) * MR;
        if m_pad * k * 4 <= X_IN_L2_BYTES {
            // Decode-sized: panel by panel, each read front to back.
            for p in range {
                for k0 in (0..k).step_by(kc) {
                    self.slice_into(out, xs, m, kc, k0, 0..m, p);
                }
            }
        } else {
            // Prefill-sized: a depth slice of a panel stays in L1 while a block of MC
            // activation rows passes over it. The depth slices of one row block run back
            // to back, so the block's output (MC rows of this task's panels, ~200 KB) is
            // still in L2 when the next slice adds to it. With the depth loop outermost, a
            // 2048-row output (25 MB for gate/up) went to memory and back once per slice:
            // criterion, gate/up at 2048 rows, 100-107 -> 119-122 GFLOP/s.
            for i0 in (0..m).step_by(MC) {
                for k0 in (0..k).step_by(kc) {
                    for p in range.clone() {
                        self.slice_into(out, xs, m, kc, k0, i0..(i0 + MC).min(m), p);
                    }
                }
            }
        }
    }

    /// Depth slice `k0..k0 + kc` of panel `p` applied to activation rows `rows`.
    ///
    /// # Safety
    /// As for `panels_into`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    unsafe fn slice_into(
        &self,
        out: SendPtr<f32>,
        xs: Activations,
        m: usize,
        kc: usize,
        k0: usize,
        rows: std::ops::Range<usize>,
        p: usize,
    ) {
        let (n, k) = (self.rows, self.cols);
        let m_pad = m.div_ceil(MR) * MR;
        let depth = kc.min(k - k0);
        let w = &self.data[p * PANEL * k + k0 * PANEL..][..depth * PANEL];
        let kernel = E::micro_kernel();
        // Where this slice's activations start, and the distance from one tile to the next.
        let (x_slice, tile_step) = match xs.layout {
            XLayout::Packed => (xs.x[k0 * m_pad..][..depth * m_pad].as_ptr(), depth),
            XLayout::Rows(stride) => (xs.x[k0..].as_ptr(), stride),
        };
        for ir in rows.step_by(MR) {
            let tile = Tile {
                x: x_slice.add(ir * tile_step),
                x_layout: xs.layout,
                rows: MR.min(m - ir),
                w: w.as_ptr(),
                depth,
                out: out.get().add(ir * n + p * PANEL),
                out_stride: n,
                cols: PANEL.min(n - p * PANEL),
                accumulate: k0 > 0,
            };
            kernel(&tile);
        }
    }
}

thread_local! {
    /// The packed activations of the calling thread's current `linear` (reused, so a step
    /// does not page-fault in a fresh buffer per layer).
    static PACKED_X: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Panels per task: about four tasks per thread, so a thread slowed by a noisy neighbour
/// does not hold up the step (each task still streams whole panels), with the size chosen
/// so that the tasks share out evenly. Four tasks per thread of `ceil(panels / 8)` gave a
/// 36-panel matrix (576 outputs: the O and down projections) tasks of 5, 5, 5, 5, 5, 5, 5
/// and 1 panels, one thread doing 20 while the other did 16; tasks of 3 give 18 each. A
/// probe at 64 rows, alternated: 576 -> 576 198.6 -> 216.7 GFLOP/s, 1,536 -> 576 202.6 ->
/// 220.4, 576 -> 960 208.7 -> 220.1.
fn panels_per_task(panels: usize, threads: usize) -> usize {
    let base = panels.div_ceil(threads * 4).max(1);
    // The most any thread does when tasks are taken in turn.
    let busiest = |per: usize| panels.div_ceil(per).div_ceil(threads) * per;
    // The largest size (fewest tasks) among those that balance best.
    (base.div_ceil(2)..=base)
        .rev()
        .min_by_key(|&per| busiest(per))
        .unwrap_or(base)
}

/// The inner-dimension slice depth: at most `KC`, and equal slices (576 → 3 × 192 rather
/// than 256 + 256 + 64, whose short last pass pays the tile overhead for little work).
fn depth_slice(k: usize) -> usize {
    k.div_ceil(k.div_ceil(KC).max(1)).max(1)
}

/// The activations a call reads, in place or packed.
#[derive(Clone, Copy)]
struct Activations<'a> {
    x: &'a [f32],
    layout: XLayout,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::packed_kernel::MicroKernel;
    use half::bf16;

    #[test]
    fn tasks_share_panels_out_evenly() {
        assert_eq!(panels_per_task(36, 2), 3);
        assert_eq!(panels_per_task(60, 2), 6);
        assert_eq!(panels_per_task(192, 2), 24);
        for threads in 1..=8 {
            for panels in 1..=600 {
                let per = panels_per_task(panels, threads);
                let busiest = |per: usize| panels.div_ceil(per).div_ceil(threads) * per;
                let naive = panels.div_ceil(threads * 4);
                assert!(
                    per >= 1 && per <= naive,
                    "{panels} panels, {threads} threads"
                );
                assert!(
                    busiest(per) <= busiest(naive),
                    "{panels} panels, {threads} threads"
                );
            }
        }
    }

    /// f64 `x · wᵀ` with the weights as `E` stores them (rounded), so bf16 is checked on
    /// its own values.
    fn reference<E: PanelElem>(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|d| x[i * k + d] as f64 * E::from_f32(w[j * k + d]).to_f32() as f64)
                    .sum();
            }
        }
        out
    }

    /// `kernel`: `None` goes through `linear`; `Some((f, layout))` runs every tile through
    /// `f` with the activations laid out as `layout` says (`Rows` with any stride reads `x`
    /// in place).
    fn check<E: PanelElem>(
        m: usize,
        k: usize,
        n: usize,
        kernel: Option<(MicroKernel<E>, XLayout)>,
    ) {
        let x: Vec<f32> = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        let p = PackedMatrix::<E>::pack(&w, n, k);
        let mut out = vec![f32::NAN; m * n];
        match kernel {
            None => p.linear(&mut out, &x, m),
            Some((f, layout)) => {
                // The whole matrix through one given micro-kernel, single-threaded, in
                // depth slices (so `accumulate` is exercised too).
                let kc = depth_slice(k);
                let mut xp = vec![];
                pack_activations(&mut xp, &x, m, k, kc);
                let m_pad = m.div_ceil(MR) * MR;
                for k0 in (0..k).step_by(kc) {
                    let depth = kc.min(k - k0);
                    for pi in 0..n.div_ceil(PANEL) {
                        for ir in (0..m).step_by(MR) {
                            let xt = match layout {
                                XLayout::Packed => xp[k0 * m_pad + ir * depth..].as_ptr(),
                                XLayout::Rows(_) => x[ir * k + k0..].as_ptr(),
                            };
                            let tile = Tile {
                                x: xt,
                                x_layout: layout,
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
        let want = reference::<E>(&x, &w, m, k, n);
        for (i, (g, r)) in out.iter().zip(&want).enumerate() {
            assert!(
                (*g as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                "m {m} k {k} n {n}: out[{i}] = {g}, want {r}"
            );
        }
    }

    /// Shapes cover ragged tiles and panels, odd depths (the single-row kernel's tail),
    /// both loop orders (packed activations under and over `X_IN_L2_BYTES`), and through
    /// `linear`, activations read in place (up to `FULL_DEPTH_BYTES`) and packed.
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 576, 576),
        (1, 257, 40),
        (5, 300, 17),
        (7, 257, 33),
        (64, 576, 1536),
        (73, 1536, 40),
        (150, 64, 100),
        (300, 576, 50),
    ];

    #[test]
    fn packed_linear_matches_f64_for_ragged_shapes() {
        for &(m, k, n) in &SHAPES {
            check::<f32>(m, k, n, None);
            for layout in [XLayout::Packed, XLayout::Rows(k)] {
                check::<f32>(m, k, n, Some((f32::portable_kernel(), layout)));
                check::<f32>(m, k, n, Some((f32::micro_kernel(), layout)));
            }
        }
    }

    #[test]
    fn packed_bf16_linear_matches_f64_on_the_rounded_weights() {
        for &(m, k, n) in &SHAPES {
            check::<bf16>(m, k, n, None);
            for layout in [XLayout::Packed, XLayout::Rows(k)] {
                check::<bf16>(m, k, n, Some((bf16::portable_kernel(), layout)));
                check::<bf16>(m, k, n, Some((bf16::micro_kernel(), layout)));
            }
        }
    }

    #[test]
    fn rows_unpack_exactly() {
        let (n, k) = (37, 11);
        // Integers up to 256 are exact in bf16 (8 significant bits) as well as in f32.
        let w: Vec<f32> = (0..n * k).map(|i| (i % 251) as f32 - 120.0).collect();
        let p = PackedMatrix::<f32>::pack(&w, n, k);
        let mut row = vec![0f32; k];
        for j in 0..n {
            p.row_into(j, &mut row);
            assert_eq!(row, w[j * k..(j + 1) * k]);
        }
        let p = PackedMatrix::<bf16>::pack(&w, n, k);
        for j in 0..n {
            p.row_into(j, &mut row);
            assert_eq!(row, w[j * k..(j + 1) * k]);
        }
    }
}
