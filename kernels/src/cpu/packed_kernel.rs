//! The micro-kernels of the packed GEMM (`packed.rs`), one per weight element type.
//!
//! A call computes `out[r][c] (+)= Σ_d x[d][r] · w[d][c]` for a tile of at most 6 rows and
//! one 16-column panel. The activations `x` are always f32; the weights are f32 or bf16.
//! bf16 is the top half of an f32, so the bf16 kernel widens a panel row in registers as it
//! loads it: decode, which streams the weights from memory, reads half the bytes, and no
//! separate widening pass is needed. A bf16 panel row stores its two 8-column halves
//! interleaved (`PanelElem::slot`), so one 32-byte load widens with one shift (the even
//! elements: columns 0-7) and one mask (the odd ones: columns 8-15).

use half::bf16;

/// Rows of the weight (output columns) per panel: two AVX2 vectors.
pub const PANEL: usize = 16;
/// Activation rows per micro-kernel tile.
pub(crate) const MR: usize = 6;

/// How a tile's activations are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XLayout {
    /// Packed by `pack_activations`: `[depth][MR]`, one contiguous stream.
    Packed,
    /// The caller's row-major rows, this many elements apart: no packing pass. Decode-sized
    /// inputs sit in L2 whole, so six row streams feed the tile as well as one packed one,
    /// and the single-threaded packing pass between parallel GEMMs is gone.
    Rows(usize),
}

impl XLayout {
    /// Elements between (consecutive rows, consecutive depth steps) of a tile.
    pub(crate) fn steps(self) -> (usize, usize) {
        match self {
            XLayout::Packed => (1, MR),
            XLayout::Rows(stride) => (stride, 1),
        }
    }
}

/// One micro-kernel call (see the module docs): `x` laid out as `x_layout` says, `w` packed
/// `[depth][PANEL]`, `rows ≤ MR` valid rows, `cols ≤ PANEL` valid columns. Public only
/// because `PanelElem` names it; nothing outside the crate can build one.
pub struct Tile<E> {
    pub(crate) x: *const f32,
    pub(crate) x_layout: XLayout,
    pub(crate) rows: usize,
    pub(crate) w: *const E,
    pub(crate) depth: usize,
    pub(crate) out: *mut f32,
    pub(crate) out_stride: usize,
    pub(crate) cols: usize,
    pub(crate) accumulate: bool,
}

/// A weight element the packed GEMM can store: how it converts, and its micro-kernel.
pub trait PanelElem: super::huge_pages::ZeroBits + Default {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Where column `j` (`< PANEL`) of a panel row is stored within the row.
    fn slot(j: usize) -> usize {
        j
    }
    /// The fastest micro-kernel this CPU supports for this element type.
    #[doc(hidden)]
    fn micro_kernel() -> MicroKernel<Self>;
    /// The reference micro-kernel (any CPU), for tests.
    #[doc(hidden)]
    fn portable_kernel() -> MicroKernel<Self> {
        micro_kernel_portable::<Self>
    }
}

/// A micro-kernel; unsafe because the tile's raw pointers must cover the extents it names.
pub type MicroKernel<E> = unsafe fn(&Tile<E>);

impl PanelElem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn micro_kernel() -> MicroKernel<f32> {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            return avx2::f32_tile;
        }
        micro_kernel_portable::<f32>
    }
}

impl PanelElem for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    /// The halves interleaved: columns 0-7 at even slots, 8-15 at odd ones. Widening a row
    /// then takes one load, one shift and one mask, where two zero-extending loads and two
    /// shifts did before: the single-stream GEMV chain (121 matrices, 269 MB), ten
    /// alternated runs, faster in eight, median 1.04x; single-stream decode end to end,
    /// twelve pairs in both orders, median 1.02x (within this machine's noise).
    fn slot(j: usize) -> usize {
        if j < PANEL / 2 {
            2 * j
        } else {
            2 * (j - PANEL / 2) + 1
        }
    }
    fn micro_kernel() -> MicroKernel<bf16> {
        #[cfg(target_arch = "x86_64")]
        if super::simd::has_avx2_fma() {
            return avx2::bf16_tile;
        }
        micro_kernel_portable::<bf16>
    }
}

/// # Safety
/// The tile's pointers cover the extents it names.
unsafe fn micro_kernel_portable<E: PanelElem>(t: &Tile<E>) {
    let (row_step, depth_step) = t.x_layout.steps();
    for r in 0..t.rows {
        let mut acc = [0f32; PANEL];
        for d in 0..t.depth {
            let xv = *t.x.add(r * row_step + d * depth_step);
            for (c, a) in acc.iter_mut().enumerate() {
                *a += xv * (*t.w.add(d * PANEL + E::slot(c))).to_f32();
            }
        }
        store(t, r, &acc);
    }
}

/// Writes (or adds) one row of a tile's accumulators, the valid columns only.
///
/// # Safety
/// Row `r` of the tile's output covers `t.cols` elements.
#[inline(always)]
unsafe fn store<E>(t: &Tile<E>, r: usize, acc: &[f32; PANEL]) {
    let o = t.out.add(r * t.out_stride);
    for (c, &a) in acc.iter().enumerate().take(t.cols) {
        let oc = o.add(c);
        *oc = if t.accumulate { *oc + a } else { a };
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2/FMA micro-kernels. A 6 × 16 tile lives in 12 accumulators; per step of the
    //! inner dimension: one panel row (two vectors), six broadcasts, twelve FMAs. A single
    //! row (decode) alternates two accumulator pairs so the FMA latency does not bound a
    //! loop that should be bound by memory.

    use super::{store, Tile, XLayout, MR, PANEL};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Loads panel row `d` as two f32 vectors.
    trait Load: Sized {
        unsafe fn load(w: *const Self, d: usize) -> (__m256, __m256);
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(w: *const f32, d: usize) -> (__m256, __m256) {
            let p = w.add(d * PANEL);
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
    }

    impl Load for bf16 {
        /// Columns 0-7 are the even elements (low halves of each 32-bit lane: shift them
        /// up), 8-15 the odd ones (already in the high halves: mask the low ones off); see
        /// `PanelElem::slot`.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load(w: *const bf16, d: usize) -> (__m256, __m256) {
            let v = _mm256_loadu_si256(w.add(d * PANEL) as *const __m256i);
            let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
            (
                _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
                _mm256_castsi256_ps(_mm256_and_si256(v, high)),
            )
        }
    }

    macro_rules! tile_fn {
        ($name:ident, $elem:ty, $rows:ident) => {
            /// # Safety
            /// AVX2 and FMA present; the tile's pointers cover the extents it names.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(t: &Tile<$elem>) {
                let packed = t.x_layout == XLayout::Packed;
                match (t.rows, packed) {
                    (6, true) => $rows::<6, true>(t),
                    (5, true) => $rows::<5, true>(t),
                    (4, true) => $rows::<4, true>(t),
                    (3, true) => $rows::<3, true>(t),
                    (2, true) => $rows::<2, true>(t),
                    (6, false) => $rows::<6, false>(t),
                    (5, false) => $rows::<5, false>(t),
                    (4, false) => $rows::<4, false>(t),
                    (3, false) => $rows::<3, false>(t),
                    (2, false) => $rows::<2, false>(t),
                    (_, true) => single_row::<_, MR>(t),
                    (_, false) => single_row::<_, 1>(t),
                }
            }

            /// `R` rows; `PACKED` says whether x is `[depth][MR]` or row-major rows (the
            /// depth step is then a compile-time constant either way).
            #[target_feature(enable = "avx2,fma")]
            #[allow(clippy::needless_range_loop)] // rows index x and the accumulators in lockstep
            unsafe fn $rows<const R: usize, const PACKED: bool>(t: &Tile<$elem>) {
                // Compile-time steps for packed tiles, so their six broadcasts are fixed
                // offsets from one pointer.
                let (row_step, depth_step) = if PACKED { (1, MR) } else { t.x_layout.steps() };
                let xr: [*const f32; R] = std::array::from_fn(|r| t.x.add(r * row_step));
                if t.accumulate {
                    // The output this tile adds to was written one depth slice ago; for a
                    // prefill-sized block (with its activations, more than L2 holds) it has
                    // gone to L3, and `finish` waited on it (5 % of a prefill run's
                    // samples). Asked for now, it arrives while the tile computes: 2,048-row
                    // probe, median 1.00-1.13x in 10 alternated runs.
                    for r in 0..R {
                        let o = t.out.add(r * t.out_stride) as *const i8;
                        _mm_prefetch::<_MM_HINT_T0>(o);
                        _mm_prefetch::<_MM_HINT_T0>(o.add(60));
                    }
                }
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                for d in 0..t.depth {
                    let (w0, w1) = <$elem as Load>::load(t.w, d);
                    for r in 0..R {
                        let xv = _mm256_broadcast_ss(&*xr[r].add(d * depth_step));
                        acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
                    }
                }
                for r in 0..R {
                    finish(t, r, acc[r][0], acc[r][1]);
                }
            }
        };
    }

    tile_fn!(f32_tile, f32, f32_rows);
    tile_fn!(bf16_tile, bf16, bf16_rows);

    /// One activation row: two independent accumulator pairs over even and odd steps.
    /// `STEP` is the distance between its consecutive depth elements (`MR` packed, 1 not).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn single_row<E: Load, const STEP: usize>(t: &Tile<E>) {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut b0, mut b1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut d = 0;
        while d + 1 < t.depth {
            let (w0, w1) = E::load(t.w, d);
            let (v0, v1) = E::load(t.w, d + 1);
            let xa = _mm256_broadcast_ss(&*t.x.add(d * STEP));
            let xb = _mm256_broadcast_ss(&*t.x.add((d + 1) * STEP));
            a0 = _mm256_fmadd_ps(xa, w0, a0);
            a1 = _mm256_fmadd_ps(xa, w1, a1);
            b0 = _mm256_fmadd_ps(xb, v0, b0);
            b1 = _mm256_fmadd_ps(xb, v1, b1);
            d += 2;
        }
        if d < t.depth {
            let (w0, w1) = E::load(t.w, d);
            let xa = _mm256_broadcast_ss(&*t.x.add(d * STEP));
            a0 = _mm256_fmadd_ps(xa, w0, a0);
            a1 = _mm256_fmadd_ps(xa, w1, a1);
        }
        finish(t, 0, _mm256_add_ps(a0, b0), _mm256_add_ps(a1, b1));
    }

    /// Stores row `r` of the tile from its two accumulators.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn finish<E>(t: &Tile<E>, r: usize, a0: __m256, a1: __m256) {
        let o = t.out.add(r * t.out_stride);
        if t.cols == PANEL {
            let (mut a0, mut a1) = (a0, a1);
            if t.accumulate {
                a0 = _mm256_add_ps(a0, _mm256_loadu_ps(o));
                a1 = _mm256_add_ps(a1, _mm256_loadu_ps(o.add(8)));
            }
            _mm256_storeu_ps(o, a0);
            _mm256_storeu_ps(o.add(8), a1);
        } else {
            // The last panel of a matrix whose rows are not a multiple of 16.
            let mut lanes = [0f32; PANEL];
            _mm256_storeu_ps(lanes.as_mut_ptr(), a0);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), a1);
            store(t, r, &lanes);
        }
    }
}
