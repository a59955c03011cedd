//! The MLP's gate/up projection with SiLU-and-multiply as its epilogue.
//!
//! Why: `linear` then `silu_and_mul` wrote the `[tokens, 2 * inter]` gate/up output to
//! memory and read it back. For a 2,048-token prefill step that is 25 MB out and 25 MB in
//! per layer, and profiling put `silu_mul` at 5.8 % of the step, most of it waiting on
//! memory. Here each task computes a gate panel group and the matching up panel group
//! (`inter` columns further on) for a block of rows into a small per-thread scratch, which
//! stays in L2, and writes only `silu(gate) * up`: the `[tokens, inter]` activation.
//!
//! The tiles are the `linear` tiles (same kernel, depth slices and row blocks), and the
//! epilogue is `silu_and_mul`'s lane code, so the result is bit-for-bit that of the two
//! unfused calls; shapes that do not split into whole panel groups take those two calls.

use super::isa::{self, Isa};
use super::ops::{silu_and_mul_on, silu_mul_rows_on};
use super::packed::{panels_per_task, Call, GroupOut, PackedMatrix, PanelElem, Tuning, PANEL};
use super::team::{self, SendPtr};

impl<E: PanelElem> PackedMatrix<E> {
    /// `act[m, inter] = silu(x · gateᵀ) * (x · upᵀ)` where `self` is `[gate; up]`
    /// (`2 * inter` rows), on the process's ISA path.
    pub fn linear_silu_mul(&self, act: &mut [f32], x: &[f32], m: usize) {
        self.linear_silu_mul_tuned(isa::selected(), act, x, m, Tuning::default())
    }

    /// `linear_silu_mul` on a given path with given blocking choices (tests, benchmarks).
    #[doc(hidden)]
    pub fn linear_silu_mul_tuned(
        &self,
        isa: Isa,
        act: &mut [f32],
        x: &[f32],
        m: usize,
        tune: Tuning,
    ) {
        assert!(
            self.rows().is_multiple_of(2),
            "[gate; up] of {} rows",
            self.rows()
        );
        let inter = self.rows() / 2;
        assert!(act.len() >= m * inter && x.len() >= m * self.cols());
        assert!(isa.supported(), "this CPU has no {isa} path");
        if m == 0 || inter == 0 {
            return;
        }
        let np = E::kernel(isa, m).np;
        if !inter.is_multiple_of(PANEL) || !(inter / PANEL).is_multiple_of(np) {
            // A gate group would straddle the gate/up boundary: the unfused calls.
            let mut gu = vec![0f32; m * 2 * inter];
            self.linear_tuned(isa, &mut gu, x, m, tune);
            return silu_and_mul_on(isa, &mut act[..m * inter], &gu, inter);
        }
        self.with_call(isa, x, m, tune, |call| {
            let gate_groups = inter / PANEL / np;
            let per_task = panels_per_task(gate_groups, team::threads());
            let act_ptr = SendPtr(act.as_mut_ptr());
            team::for_each_task(gate_groups.div_ceil(per_task), |task| {
                let g0 = task * per_task;
                let g1 = (g0 + per_task).min(gate_groups);
                // SAFETY: each task writes only the activation columns of its own gate
                // groups.
                unsafe { self.gate_groups_into(isa, act_ptr, call, g0..g1, gate_groups) };
            });
        });
    }

    /// `act`'s columns of gate panel groups `range` (up group `g + gate_groups` for gate
    /// group `g`), for all rows.
    ///
    /// # Safety
    /// `act` holds `m * inter` elements and no other thread writes these columns.
    unsafe fn gate_groups_into(
        &self,
        isa: Isa,
        act: SendPtr<f32>,
        c: &Call<E>,
        range: std::ops::Range<usize>,
        gate_groups: usize,
    ) {
        let (k, inter) = (self.cols(), self.rows() / 2);
        let width = c.kern.np * PANEL;
        // Decode-sized: each group pair read whole, for all rows; prefill-sized: blocks of
        // MC rows, as in `linear`.
        let block = if c.decode_order { c.m } else { c.row_block() };
        let mut scratch = SCRATCH.take();
        let stride = 2 * width;
        let scr_len = block.min(c.m) * stride;
        let scr = aligned(&mut scratch, scr_len).as_mut_ptr();
        for i0 in (0..c.m).step_by(block) {
            let rows = i0..(i0 + block).min(c.m);
            for g in range.clone() {
                let half = |h: usize| GroupOut {
                    ptr: scr.add(h * width),
                    stride,
                    row0: i0,
                };
                for k0 in (0..k).step_by(c.kc) {
                    self.slice_into(half(0), c, k0, rows.clone(), g);
                    self.slice_into(half(1), c, k0, rows.clone(), g + gate_groups);
                }
                let out = act.get().add(i0 * inter + g * width);
                let tiles = std::slice::from_raw_parts(scr, scr_len);
                silu_mul_rows_on(isa, rows.len(), width, (out, inter), (tiles, stride));
            }
        }
        SCRATCH.set(scratch);
    }
}

thread_local! {
    /// The calling thread's gate/up tile outputs (reused across calls).
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// `len` elements of `buf` starting on a cache line (the tiles' rows are whole lines).
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    const LINE: usize = 16;
    if buf.len() < len + LINE {
        buf.resize(len + LINE, 0.0);
    }
    let skip = buf.as_ptr().align_offset(64).min(LINE);
    &mut buf[skip..skip + len]
}

#[cfg(test)]
mod tests {
    use super::super::packed::tests::{operands, reference, tunings};
    use super::*;
    use half::bf16;

    /// Bit-equal to `linear` then `silu_and_mul`, and within f32 rounding of an f64
    /// SiLU-and-multiply of an f64 product of the same operands (rounded as the kernel
    /// rounds them).
    fn check<E: PanelElem>(isa: Isa, (m, k, inter): (usize, usize, usize)) {
        let n = 2 * inter;
        let (x, w) = operands(m, k, n);
        let p = PackedMatrix::<E>::pack(&w, n, k);
        let round_x = E::kernel(isa, m).act == crate::cpu::packed_kernel::Act::Bf16Pairs;
        let product = reference::<E>(&x, &w, (m, k, n), round_x);
        for tune in tunings() {
            let mut gu = vec![f32::NAN; m * n];
            p.linear_tuned(isa, &mut gu, &x, m, tune);
            let mut unfused = vec![f32::NAN; m * inter];
            silu_and_mul_on(isa, &mut unfused, &gu, inter);
            let mut fused = vec![f32::NAN; m * inter];
            p.linear_silu_mul_tuned(isa, &mut fused, &x, m, tune);
            for i in 0..m {
                for j in 0..inter {
                    let (f, u) = (fused[i * inter + j], unfused[i * inter + j]);
                    let at = format!("{isa} {tune:?} m {m} k {k} inter {inter}: [{i}, {j}]");
                    assert_eq!(f.to_bits(), u.to_bits(), "{at}: fused {f}, unfused {u}");
                    let (g, up) = (product[i * n + j], product[i * n + inter + j]);
                    let want = g / (1.0 + (-g).exp()) * up;
                    assert!(
                        (f as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                        "{at}: {f}, want {want}"
                    );
                }
            }
        }
    }

    /// Whole gate groups on every kernel (inter a multiple of 16 × 1, 2 and 3 panels:
    /// 96, 192), ragged ones that take the unfused path (40, 24), ragged tiles and depths,
    /// and enough rows for several prefill row blocks.
    const SHAPES: [(usize, usize, usize); 8] = [
        (1, 576, 96),
        (3, 33, 192),
        (7, 257, 40),
        (9, 64, 24),
        (17, 577, 96),
        (64, 576, 192),
        (150, 64, 96),
        (300, 96, 192),
    ];

    #[test]
    fn fused_gate_up_matches_the_unfused_calls_and_f64_on_every_path() {
        for isa in Isa::available() {
            for &shape in &SHAPES {
                check::<f32>(isa, shape);
                check::<bf16>(isa, shape);
            }
        }
    }
}
