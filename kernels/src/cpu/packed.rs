//! Weight matrices (f32 or bf16) packed once, at load time, for the CPU GEMM.
//!
//! Why: the `gemm` crate packs its operands on every call. For a linear layer the weight
//! is the big operand, so a 64-row decode step re-packed every weight matrix of the model,
//! and profiling the 64 × (128 + 128) run put 13 % of the whole run in that packing. Here a
//! weight `[rows, cols]` (Hugging Face's `[out, in]`) is stored as panels of 16 rows, in
//! exactly the order the micro-kernels read them (`packed_kernel`: f32 `[cols][16]`, bf16
//! `[cols / 2][16][2]`). Activations are read in place for decode-sized inputs to matrices
//! of up to `Tuning::in_place_max_cols` outputs, packed per call into tiles otherwise, or,
//! for the AVX512-BF16 dot-product kernel, rounded to bf16 once per call.
//!
//! Blocking: a tile is `mr` rows by `np` panels (AVX2: 6 × 16 in 12 accumulators; AVX-512:
//! 8 × 48 in 24). For prefill-sized inputs a depth slice of a tile's panels (16-24 KiB)
//! stays in L1 while a block of activation rows (in L2) passes over it; decode-sized inputs
//! are not sliced: each tile runs the whole depth, the panels streaming from L2. The thread
//! team (`team`) splits the panel groups, so each weight byte is read from memory once per
//! call; for decode-sized inputs each panel is read front to back.

use super::huge_pages::HugePageBuf;
use super::isa::{self, Isa};
use super::pack_x::{bf16_pairs, pack_activations, pairs_view, PairLine};
use super::packed_kernel::{Act, Kernel, Tile, XLayout};
pub use super::packed_kernel::{PanelElem, PANEL};
use super::team::{self, SendPtr};

/// Activation rows per L2 block (a multiple of the AVX kernels' rows per tile, 6 and 8;
/// rounded up to a multiple of 32 for the AMX kernel's).
const MC: usize = 264;

/// Blocking choices of one call; `Default` is what `linear` uses. Public (hidden) so that a
/// benchmark can compare choices in one process, interleaved.
#[doc(hidden)]
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Activations (in the kernel's form) up to this size stay in L2 while every panel
    /// passes over them, so each panel can be read whole, front to back (one stream for the
    /// prefetcher), rather than a depth slice at a time.
    pub x_in_l2_bytes: usize,
    /// Activations up to this size (one core's L2) are not sliced in depth at all: each
    /// tile runs the whole inner dimension in one micro-kernel call, its panels streaming
    /// from L2, so no output is written and read back between slices. Measured against
    /// 192- and 256-deep slices at decode shapes (1-128 rows, depth 576 and 1,536),
    /// interleaved, on the AVX2 kernel: equal to 8 % faster, never slower
    /// (benches/RESULTS.md).
    pub full_depth_bytes: usize,
    /// Full-depth f32 inputs are read in place, not packed, when the matrix has at most
    /// this many rows (output columns). Packing is one pass over the activations on one
    /// thread, paid once per call; reading row streams instead of one costs a little in
    /// every tile. A 30-matrix probe at 64 rows on the AVX2 kernel, both alternated in one
    /// process (median GFLOP/s, in place / packed): 576 x 576 1.11-1.21x, 1,536 -> 576
    /// 1.07-1.08x, 576 -> 960 1.02-1.03x, 576 -> 1,536 1.01-1.06x, 576 -> 3,072 0.95x.
    pub in_place_max_cols: usize,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            x_in_l2_bytes: 256 << 10,
            full_depth_bytes: 512 << 10,
            in_place_max_cols: 2048,
        }
    }
}

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
    /// full panel and the padding of an odd bf16 depth are zero.
    pub fn pack(w: &[f32], rows: usize, cols: usize) -> Self {
        assert_eq!(w.len(), rows * cols, "weight of {rows} x {cols}");
        let panels = rows.div_ceil(PANEL);
        let stride = PANEL * E::padded_depth(cols);
        let mut data = HugePageBuf::zeroed(panels * stride);
        if cols > 0 {
            team::for_each_chunk_mut(&mut data, stride, |p, panel| {
                for j in 0..PANEL.min(rows - p * PANEL) {
                    let src = &w[(p * PANEL + j) * cols..(p * PANEL + j + 1) * cols];
                    for (kk, &v) in src.iter().enumerate() {
                        panel[E::index(kk, j)] = E::from_f32(v);
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

    /// Elements from one panel to the next.
    fn panel_stride(&self) -> usize {
        PANEL * E::padded_depth(self.cols)
    }

    /// Copies row `j` out (an embedding lookup from a tied embedding/LM-head matrix); a
    /// row past the end gives zeros, as the CUDA embedding kernel does.
    pub fn row_into(&self, j: usize, dst: &mut [f32]) {
        assert!(dst.len() >= self.cols);
        if j >= self.rows {
            dst[..self.cols].fill(0.0);
            return;
        }
        let panel = &self.data[j / PANEL * self.panel_stride()..][..self.panel_stride()];
        for (kk, d) in dst[..self.cols].iter_mut().enumerate() {
            *d = panel[E::index(kk, j % PANEL)].to_f32();
        }
    }

    /// `out[m, rows] = x[m, cols] · selfᵀ` (a linear layer), on the process's ISA path.
    pub fn linear(&self, out: &mut [f32], x: &[f32], m: usize) {
        self.linear_on(isa::selected(), out, x, m)
    }

    /// `linear` on a given path (`isa` must be supported by this CPU).
    pub fn linear_on(&self, isa: Isa, out: &mut [f32], x: &[f32], m: usize) {
        self.linear_tuned(isa, out, x, m, Tuning::default())
    }

    /// `linear_on` with given blocking choices (benchmarks).
    #[doc(hidden)]
    pub fn linear_tuned(&self, isa: Isa, out: &mut [f32], x: &[f32], m: usize, tune: Tuning) {
        let n = self.rows;
        assert!(out.len() >= m * n && x.len() >= m * self.cols);
        assert!(isa.supported(), "this CPU has no {isa} path");
        if m == 0 || n == 0 {
            return;
        }
        self.with_call(isa, x, m, tune, |call| {
            let groups = n.div_ceil(PANEL).div_ceil(call.kern.np);
            let per_task = panels_per_task(groups, team::threads());
            let out_ptr = SendPtr(out.as_mut_ptr());
            team::for_each_task(groups.div_ceil(per_task), |task| {
                let g0 = task * per_task;
                let g1 = (g0 + per_task).min(groups);
                // SAFETY: each task writes only the output columns of its own panels.
                unsafe { self.groups_into(out_ptr, call, g0..g1) };
            });
        });
    }

    /// Brings `x[m, cols]` into the form the kernel for `isa` and `m` rows reads, chooses
    /// the call's blocking, and runs `run` with it.
    pub(super) fn with_call(
        &self,
        isa: Isa,
        x: &[f32],
        m: usize,
        tune: Tuning,
        run: impl FnOnce(&Call<E>),
    ) {
        let k = self.cols;
        let kern = E::kernel(isa, m);
        let m_pad = m.div_ceil(kern.mr) * kern.mr;
        let x_bytes = match kern.act {
            Act::F32 => m_pad * k * 4,
            Act::Bf16Pairs => m * E::padded_depth(k) * 2,
        };
        let full_depth = x_bytes <= tune.full_depth_bytes;
        let kc = if full_depth {
            k
        } else {
            depth_slice(k, kern.kc, kern.depth_align)
        };
        // The activations in the kernel's form. Buffers are taken out of their
        // thread-locals for the call, not borrowed, so a `linear` nested in a task on this
        // thread would simply find no buffer to reuse.
        let (mut packed, mut pairs) = (Vec::new(), Vec::new());
        let xs = match kern.act {
            // Decode-sized inputs of matrices with few output columns are read in place.
            Act::F32 if full_depth && self.rows <= tune.in_place_max_cols => Activations {
                x,
                pairs: &[],
                layout: XLayout::Rows(k),
            },
            Act::F32 => {
                packed = PACKED_X.take();
                pack_activations(&mut packed, x, m, k, kc, kern.mr);
                Activations {
                    x: &packed,
                    pairs: &[],
                    layout: XLayout::Packed(kern.mr),
                }
            }
            Act::Bf16Pairs => {
                pairs = PAIRS_X.take();
                // Rows start on cache lines where the kernel reads whole lines (AMX: a
                // stride of 16 pairs or more), and rows up to the tile's height are
                // readable (AMX loads whole 16-row tiles; rows past `m` are never stored).
                let stride = k.div_ceil(2).next_multiple_of(kern.depth_align / 2);
                let view = pairs_view(&mut pairs, m_pad * stride);
                bf16_pairs(isa, view, x, m, k, stride);
                Activations {
                    x: &[],
                    pairs: view,
                    layout: XLayout::Pairs(stride),
                }
            }
        };
        run(&Call {
            kern: &kern,
            xs,
            m,
            kc,
            decode_order: x_bytes <= tune.x_in_l2_bytes,
        });
        if !packed.is_empty() {
            PACKED_X.set(packed);
        }
        if !pairs.is_empty() {
            PAIRS_X.set(pairs);
        }
    }

    /// The output columns of panel groups `range` (`np` panels each), for all rows.
    ///
    /// # Safety
    /// `out` holds `m * rows` elements and no other thread writes these columns.
    unsafe fn groups_into(&self, out: SendPtr<f32>, c: &Call<E>, range: std::ops::Range<usize>) {
        let k = self.cols;
        if c.decode_order {
            // Decode-sized: group by group, each read front to back.
            for g in range {
                let dst = self.group_out(out, c, g);
                for k0 in (0..k).step_by(c.kc) {
                    self.slice_into(dst, c, k0, 0..c.m, g);
                }
            }
        } else {
            // Prefill-sized: a depth slice of a group stays in L1 while a block of MC
            // activation rows passes over it. The depth slices of one row block run back
            // to back, so the block's output (MC rows of this task's panels, ~200 KB) is
            // still in L2 when the next slice adds to it. With the depth loop outermost, a
            // 2048-row output (25 MB for gate/up) went to memory and back once per slice:
            // criterion, gate/up at 2048 rows, 100-107 -> 119-122 GFLOP/s.
            let mc = c.row_block();
            for i0 in (0..c.m).step_by(mc) {
                for k0 in (0..k).step_by(c.kc) {
                    for g in range.clone() {
                        let dst = self.group_out(out, c, g);
                        self.slice_into(dst, c, k0, i0..(i0 + mc).min(c.m), g);
                    }
                }
            }
        }
    }

    /// Where panel group `g` of a `linear` writes: its columns of `out[m, rows]`.
    fn group_out(&self, out: SendPtr<f32>, c: &Call<E>, g: usize) -> GroupOut {
        GroupOut {
            // SAFETY (of the later writes): `out` holds `m * rows` elements.
            ptr: out.get().wrapping_add(g * c.kern.np * PANEL),
            stride: self.rows,
            row0: 0,
        }
    }

    /// Depth slice `k0..k0 + kc` of panel group `g` applied to activation rows `rows`,
    /// written (or added, past the first slice) to `dst`.
    ///
    /// # Safety
    /// `dst` covers `rows` and the group's columns, and no other thread writes them.
    #[inline]
    pub(super) unsafe fn slice_into(
        &self,
        dst: GroupOut,
        c: &Call<E>,
        k0: usize,
        rows: std::ops::Range<usize>,
        g: usize,
    ) {
        let (n, k) = (self.rows, self.cols);
        let (mr, m) = (c.kern.mr, c.m);
        let m_pad = m.div_ceil(mr) * mr;
        let depth = c.kc.min(k - k0);
        let p = g * c.kern.np;
        let w = &self.data[p * self.panel_stride() + k0 * PANEL..];
        // Where this slice's activations start, and the distance from one tile to the next.
        let (x, xp, tile_step) = match c.xs.layout {
            XLayout::Packed(_) => (c.xs.x[k0 * m_pad..].as_ptr(), std::ptr::null(), depth),
            XLayout::Rows(stride) => (c.xs.x[k0..].as_ptr(), std::ptr::null(), stride),
            XLayout::Pairs(stride) => (std::ptr::null(), c.xs.pairs[k0 / 2..].as_ptr(), stride),
        };
        for ir in rows.step_by(mr) {
            let tile = Tile {
                x: x.wrapping_add(ir * tile_step),
                xp: xp.wrapping_add(ir * tile_step),
                x_layout: c.xs.layout,
                rows: mr.min(m - ir),
                w: w.as_ptr(),
                panel_stride: self.panel_stride(),
                depth,
                out: dst.ptr.add((ir - dst.row0) * dst.stride),
                out_stride: dst.stride,
                cols: (c.kern.np * PANEL).min(n - p * PANEL),
                accumulate: k0 > 0,
            };
            (c.kern.f)(&tile);
        }
    }
}

thread_local! {
    /// The packed f32 activations of the calling thread's current `linear` (reused, so a
    /// step does not page-fault in a fresh buffer per layer).
    static PACKED_X: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
    /// The same for activations rounded to bf16 pairs.
    static PAIRS_X: std::cell::Cell<Vec<PairLine>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Panels (here: groups of panels) per task: about four tasks per thread, so a thread
/// slowed by a noisy neighbour does not hold up the step (each task still streams whole
/// panels), with the size chosen so that the tasks share out evenly. Four tasks per
/// thread of `ceil(panels / 8)` gave a 36-panel matrix (576 outputs: the O and down
/// projections) tasks of 5, 5, 5, 5, 5, 5, 5 and 1 panels, one thread doing 20 while the
/// other did 16; tasks of 3 give 18 each. A probe at 64 rows, alternated: 576 -> 576
/// 198.6 -> 216.7 GFLOP/s, 1,536 -> 576 202.6 -> 220.4, 576 -> 960 208.7 -> 220.1.
pub(super) fn panels_per_task(panels: usize, threads: usize) -> usize {
    let base = panels.div_ceil(threads * 4).max(1);
    // The most any thread does when tasks are taken in turn.
    let busiest = |per: usize| panels.div_ceil(per).div_ceil(threads) * per;
    // The largest size (fewest tasks) among those that balance best.
    (base.div_ceil(2)..=base)
        .rev()
        .min_by_key(|&per| busiest(per))
        .unwrap_or(base)
}

/// The inner-dimension slice depth: about `kc`, a multiple of `align` (even, so bf16 pairs
/// never straddle two slices; 32 for AMX tiles), and equal slices (576 → 3 × 192 rather
/// than 256 + 256 + 64, whose short last pass pays the tile overhead for little work).
fn depth_slice(k: usize, kc: usize, align: usize) -> usize {
    k.div_ceil(k.div_ceil(kc).max(1))
        .next_multiple_of(align)
        .max(align)
}

/// Where one panel group's tiles write: output row `i`, the group's column `j`, goes to
/// `ptr + (i - row0) * stride + j` (the layer's output, or a fused kernel's scratch).
#[derive(Clone, Copy)]
pub(super) struct GroupOut {
    pub(super) ptr: *mut f32,
    pub(super) stride: usize,
    pub(super) row0: usize,
}

/// The activations a call reads, in the form its kernel takes.
#[derive(Clone, Copy)]
struct Activations<'a> {
    x: &'a [f32],
    pairs: &'a [u32],
    layout: XLayout,
}

/// What every tile of one call shares.
pub(super) struct Call<'a, E> {
    pub(super) kern: &'a Kernel<E>,
    xs: Activations<'a>,
    pub(super) m: usize,
    /// Depth slice.
    pub(super) kc: usize,
    /// Group by group with whole-depth passes (decode-sized), or row blocks (prefill).
    pub(super) decode_order: bool,
}

impl<E> Call<'_, E> {
    /// Activation rows per prefill-order block: `MC`, in whole tiles.
    pub(super) fn row_block(&self) -> usize {
        MC.next_multiple_of(self.kern.mr)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
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

    #[test]
    fn depth_slices_are_even_and_cover_the_depth() {
        for k in 1..2000 {
            for kc in [128, 256] {
                let s = depth_slice(k, kc, 2);
                assert!(s.is_multiple_of(2) && s <= kc, "k {k} kc {kc}: {s}");
                assert!(k.div_ceil(s) <= k.div_ceil(kc).max(1), "k {k} kc {kc}: {s}");
                let s = depth_slice(k, kc, 32);
                assert!(s.is_multiple_of(32) && s < kc + 32, "k {k} kc {kc}: {s}");
                assert!(k.div_ceil(s) <= k.div_ceil(kc).max(1), "k {k} kc {kc}: {s}");
            }
        }
    }

    /// f64 `x · wᵀ` with the weights as `E` stores them (rounded), and the activations
    /// rounded to bf16 too when `round_x` (the dot-product kernel's inputs).
    pub(in crate::cpu) fn reference<E: PanelElem>(
        x: &[f32],
        w: &[f32],
        (m, k, n): (usize, usize, usize),
        round_x: bool,
    ) -> Vec<f64> {
        let xv = |v: f32| {
            if round_x {
                f32::from_bits((crate::cpu::pack_x::round_bf16(v) as u32) << 16) as f64
            } else {
                v as f64
            }
        };
        let mut out = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k)
                    .map(|d| xv(x[i * k + d]) * E::from_f32(w[j * k + d]).to_f32() as f64)
                    .sum();
            }
        }
        out
    }

    /// Every blocking a call can take: the defaults, activations always packed, always
    /// sliced in depth, and the prefill loop order for small inputs.
    pub(in crate::cpu) fn tunings() -> [Tuning; 4] {
        let d = Tuning::default();
        [
            d,
            Tuning {
                in_place_max_cols: 0,
                ..d
            },
            Tuning {
                full_depth_bytes: 0,
                ..d
            },
            Tuning {
                full_depth_bytes: 0,
                x_in_l2_bytes: 0,
                ..d
            },
        ]
    }

    /// Deterministic activations `[m, k]` and weights `[n, k]` in [-0.5, 0.5).
    pub(in crate::cpu) fn operands(m: usize, k: usize, n: usize) -> (Vec<f32>, Vec<f32>) {
        let x = (0..m * k)
            .map(|i| ((i * 7919) % 97) as f32 / 97.0 - 0.5)
            .collect();
        let w = (0..n * k)
            .map(|i| ((i * 104729) % 89) as f32 / 89.0 - 0.5)
            .collect();
        (x, w)
    }

    fn check<E: PanelElem>(isa: Isa, (m, k, n): (usize, usize, usize)) {
        let (x, w) = operands(m, k, n);
        let p = PackedMatrix::<E>::pack(&w, n, k);
        let round_x = E::kernel(isa, m).act == Act::Bf16Pairs;
        let want = reference::<E>(&x, &w, (m, k, n), round_x);
        for tune in tunings() {
            let mut out = vec![f32::NAN; m * n];
            p.linear_tuned(isa, &mut out, &x, m, tune);
            for (i, (g, r)) in out.iter().zip(&want).enumerate() {
                assert!(
                    (*g as f64 - r).abs() <= 1e-4 * (1.0 + r.abs()),
                    "{isa} {tune:?} m {m} k {k} n {n}: out[{i}] = {g}, want {r}"
                );
            }
        }
    }

    /// Ragged tiles (rows 1..300, not multiples of 6 or 8), ragged panels and panel groups
    /// (columns not multiples of 16 or 48), depths that are not multiples of the vector
    /// width or of two (the bf16 pairs' padding), and big enough inputs for both loop
    /// orders and depth slicing.
    const SHAPES: [(usize, usize, usize); 14] = [
        (1, 576, 576),
        (1, 257, 40),
        (2, 33, 17),
        (3, 1, 5),
        (4, 15, 48),
        (5, 300, 17),
        (7, 257, 33),
        (9, 31, 97),
        (17, 577, 64),
        (64, 576, 1536),
        (73, 1536, 40),
        (150, 64, 100),
        (263, 77, 49),
        (300, 576, 50),
    ];

    #[test]
    fn packed_linear_matches_f64_on_every_path() {
        for isa in Isa::available() {
            for &shape in &SHAPES {
                check::<f32>(isa, shape);
            }
        }
    }

    #[test]
    fn packed_bf16_linear_matches_f64_on_the_rounded_operands_on_every_path() {
        for isa in Isa::available() {
            for &shape in &SHAPES {
                check::<bf16>(isa, shape);
            }
        }
    }

    #[test]
    fn rows_unpack_exactly() {
        for (n, k) in [(37usize, 11usize), (16, 12), (5, 1)] {
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
}
