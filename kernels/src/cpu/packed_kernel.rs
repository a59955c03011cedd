//! The micro-kernels of the packed GEMM (`packed.rs`): what a tile is, how each weight
//! element type is laid out in a panel, and which kernel each ISA path uses.
//!
//! A call computes `out[r][c] (+)= Σ_d x[r][d] · w[d][c]` for a tile of at most `mr` rows
//! and `np` consecutive 16-column panels. Weights are f32 or bf16:
//! - f32 panels are `[depth][16]`.
//! - bf16 panels are `[depth / 2][16][2]`: each 32-bit slot holds one column's two
//!   consecutive depth elements, which is the operand order of AVX512-BF16's `vdpbf16ps`
//!   (per f32 lane, `acc += a[2i]·b[2i] + a[2i+1]·b[2i+1]`). The same layout widens cheaply
//!   for the f32-FMA kernels: the low half of each slot shifted up is depth `d`, the high
//!   half masked is depth `d + 1` (bf16 is the top half of an f32), so one load and two
//!   bit operations widen 32 weights. An odd depth is padded with a zero.
//!
//! Activations reach a kernel in one of three forms (`XLayout`): f32 rows read in place,
//! f32 packed per tile (`pack_x`), or bf16 pairs (rounded once per call, as oneDNN does for
//! bf16 GEMMs) for the dot-product kernel.

use half::bf16;

use super::isa::Isa;

/// Rows of the weight (output columns) per panel: one AVX-512 vector, two AVX2 ones.
pub const PANEL: usize = 16;
/// Activation rows per tile of the AVX2 and portable kernels.
pub(crate) const MR_AVX2: usize = 6;

/// How a tile's activations are laid out in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum XLayout {
    /// f32, packed by `pack_x::pack_activations` in tiles of this many rows: `[depth][mr]`,
    /// one contiguous stream per tile.
    Packed(usize),
    /// The caller's row-major f32 rows, this many elements apart: no packing pass.
    /// Decode-sized inputs sit in L2 whole, so row streams feed the tile as well as one
    /// packed one, and the single-threaded packing pass between parallel GEMMs is gone.
    Rows(usize),
    /// bf16 pairs (`pack_x::bf16_pairs`), row-major, this many 32-bit pairs apart.
    Pairs(usize),
}

impl XLayout {
    /// Elements between (consecutive rows, consecutive depth steps) of a tile's f32
    /// activations (pairs for `Pairs`).
    pub(crate) fn steps(self) -> (usize, usize) {
        match self {
            XLayout::Packed(mr) => (1, mr),
            XLayout::Rows(stride) | XLayout::Pairs(stride) => (stride, 1),
        }
    }
}

/// One micro-kernel call (see the module docs). Public only because `PanelElem` names it;
/// nothing outside the crate can build one.
pub struct Tile<E> {
    /// f32 activations (layouts `Packed` and `Rows`), at the tile's first row and depth.
    pub(crate) x: *const f32,
    /// bf16 pairs (layout `Pairs`), at the tile's first row and depth pair.
    pub(crate) xp: *const u32,
    pub(crate) x_layout: XLayout,
    /// Valid rows, at most the kernel's `mr`.
    pub(crate) rows: usize,
    /// The first panel's weights at the slice's first depth step.
    pub(crate) w: *const E,
    /// Elements from one panel to the next.
    pub(crate) panel_stride: usize,
    /// Depth steps of this slice (the panels and pairs are padded past an odd end).
    pub(crate) depth: usize,
    pub(crate) out: *mut f32,
    pub(crate) out_stride: usize,
    /// Valid output columns, at most `np * PANEL`; the tile covers `cols.div_ceil(PANEL)`
    /// panels.
    pub(crate) cols: usize,
    /// Add to the output (a later depth slice) instead of overwriting it.
    pub(crate) accumulate: bool,
}

/// A micro-kernel; unsafe because the tile's raw pointers must cover the extents it names.
pub type MicroKernel<E> = unsafe fn(&Tile<E>);

/// The form the activations must take for a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// f32, read in place or packed in tiles of `mr` rows.
    F32,
    /// bf16 pairs, row-major.
    Bf16Pairs,
}

/// A micro-kernel with the blocking it was written for.
#[doc(hidden)]
pub struct Kernel<E> {
    pub(crate) f: MicroKernel<E>,
    /// Rows per tile.
    pub(crate) mr: usize,
    /// Panels per tile.
    pub(crate) np: usize,
    /// Depth of one slice for prefill-sized inputs: `np` panels of it stay in L1.
    pub(crate) kc: usize,
    /// Depth slices are multiples of this many steps (bf16 pairs must not straddle two
    /// slices; AMX tiles take 32 steps at a time).
    pub(crate) depth_align: usize,
    pub(crate) act: Act,
}

/// bf16 GEMMs with at least this many rows use the dot-product kernel on AVX-512 (with
/// activations rounded to bf16); fewer rows are memory-bound and widen the weights to f32
/// instead, keeping f32 activations.
pub(crate) const DOT_MIN_ROWS: usize = 4;

/// bf16 GEMMs with at least this many rows use the AMX kernel on the `Amx` path: the same
/// line as the dot-product kernel's (both round the activations to bf16), since a tile of 16
/// rows, mostly padding, still beats `vdpbf16ps` from 4 rows (8 rows, interleaved on this
/// Xeon: 108-145 -> 246-307 GFLOP/s); fewer rows keep the widening kernel.
pub(crate) const AMX_MIN_ROWS: usize = DOT_MIN_ROWS;

/// A weight element the packed GEMM can store: its panel layout and its micro-kernels.
pub trait PanelElem: super::huge_pages::ZeroBits + Default {
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// Depth steps a panel stores for `k` (bf16 pairs pad an odd depth).
    fn padded_depth(k: usize) -> usize;
    /// Where element (depth `d`, column `c < PANEL`) lies within its panel.
    fn index(d: usize, c: usize) -> usize;
    /// The micro-kernel `isa` uses for a call with `m` activation rows.
    #[doc(hidden)]
    fn kernel(isa: Isa, m: usize) -> Kernel<Self>;
}

fn portable<E: PanelElem>() -> Kernel<E> {
    Kernel {
        f: micro_kernel_portable::<E>,
        mr: MR_AVX2,
        np: 1,
        kc: 256,
        depth_align: 2,
        act: Act::F32,
    }
}

impl PanelElem for f32 {
    fn from_f32(v: f32) -> Self {
        v
    }
    fn to_f32(self) -> f32 {
        self
    }
    fn padded_depth(k: usize) -> usize {
        k
    }
    fn index(d: usize, c: usize) -> usize {
        d * PANEL + c
    }
    fn kernel(isa: Isa, _m: usize) -> Kernel<f32> {
        match isa {
            Isa::Portable => portable(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel {
                f: avx2::f32_tile,
                ..portable()
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx => super::packed_avx512::f32_kernel(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable(),
        }
    }
}

impl PanelElem for bf16 {
    fn from_f32(v: f32) -> Self {
        bf16::from_f32(v)
    }
    fn to_f32(self) -> f32 {
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    fn padded_depth(k: usize) -> usize {
        k.next_multiple_of(2)
    }
    fn index(d: usize, c: usize) -> usize {
        (d / 2) * 2 * PANEL + 2 * c + d % 2
    }
    fn kernel(isa: Isa, m: usize) -> Kernel<bf16> {
        match isa {
            Isa::Portable => portable(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => Kernel {
                f: avx2::bf16_tile,
                ..portable()
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Amx if m >= AMX_MIN_ROWS => super::packed_amx::bf16_amx_kernel(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if m >= DOT_MIN_ROWS => super::packed_avx512::bf16_dot_kernel(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 | Isa::Amx => super::packed_avx512::bf16_widen_kernel(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => portable(),
        }
    }
}

/// The reference micro-kernel (any CPU, any tile shape, f32 activations).
///
/// # Safety
/// The tile's pointers cover the extents it names.
pub(crate) unsafe fn micro_kernel_portable<E: PanelElem>(t: &Tile<E>) {
    let (row_step, depth_step) = t.x_layout.steps();
    for r in 0..t.rows {
        for p in 0..t.cols.div_ceil(PANEL) {
            let w = t.w.add(p * t.panel_stride);
            let cols = PANEL.min(t.cols - p * PANEL);
            let mut acc = [0f32; PANEL];
            for d in 0..t.depth {
                let xv = *t.x.add(r * row_step + d * depth_step);
                for (c, a) in acc.iter_mut().enumerate() {
                    *a += xv * (*w.add(E::index(d, c))).to_f32();
                }
            }
            let o = t.out.add(r * t.out_stride + p * PANEL);
            for (c, &a) in acc.iter().enumerate().take(cols) {
                let oc = o.add(c);
                *oc = if t.accumulate { *oc + a } else { a };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! AVX2/FMA micro-kernels, one panel per tile. A 6 × 16 tile lives in 12 accumulators;
    //! per step of the inner dimension: one panel row (two vectors), six broadcasts, twelve
    //! FMAs. A single row (decode) alternates two accumulator pairs so the FMA latency does
    //! not bound a loop that should be bound by memory.

    use super::{Tile, XLayout, MR_AVX2 as MR, PANEL};
    use half::bf16;
    use std::arch::x86_64::*;

    /// Loads panel row `d` as two f32 vectors; `ODD` is `d % 2` (bf16 keeps two depth
    /// steps per 32-bit slot, see `PanelElem::index`).
    trait Load: Sized {
        unsafe fn load<const ODD: bool>(w: *const Self, d: usize) -> (__m256, __m256);
    }

    impl Load for f32 {
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load<const ODD: bool>(w: *const f32, d: usize) -> (__m256, __m256) {
            let p = w.add(d * PANEL);
            (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)))
        }
    }

    impl Load for bf16 {
        /// Columns 0-7 of the pair row are its first 32 bytes, 8-15 the next; in each
        /// 32-bit slot the low half (shifted up) is the even depth step and the high half
        /// (low bits masked off) the odd one.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn load<const ODD: bool>(w: *const bf16, d: usize) -> (__m256, __m256) {
            // Both steps of a pair load the pair row, volatile so that the compiler does
            // not keep the loaded row live from the even step to the odd one: that took
            // the two registers the 6-row tile's 12 accumulators need, and the spills made
            // the 64-row in-place GEMM 0.75x as fast (the second load hits L1).
            // Pair rows are 64-byte aligned: panels start on 64 bytes (`huge_pages`), are
            // a multiple of 64 bytes long, and depth slices start at even steps.
            let p = w.add((d & !1) * PANEL) as *const __m256i;
            let (lo, hi) = (
                std::ptr::read_volatile(p),
                std::ptr::read_volatile(p.add(1)),
            );
            if ODD {
                let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
                (
                    _mm256_castsi256_ps(_mm256_and_si256(lo, high)),
                    _mm256_castsi256_ps(_mm256_and_si256(hi, high)),
                )
            } else {
                (
                    _mm256_castsi256_ps(_mm256_slli_epi32(lo, 16)),
                    _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16)),
                )
            }
        }
    }

    macro_rules! tile_fn {
        ($name:ident, $elem:ty, $rows:ident, $step:ident) => {
            /// # Safety
            /// AVX2 and FMA present; the tile's pointers cover the extents it names.
            #[target_feature(enable = "avx2,fma")]
            pub(super) unsafe fn $name(t: &Tile<$elem>) {
                let packed = matches!(t.x_layout, XLayout::Packed(_));
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
                let mut d = 0;
                while d + 1 < t.depth {
                    $step::<R, false>(t.w, d, &xr, d * depth_step, &mut acc);
                    $step::<R, true>(t.w, d + 1, &xr, (d + 1) * depth_step, &mut acc);
                    d += 2;
                }
                if d < t.depth {
                    $step::<R, false>(t.w, d, &xr, d * depth_step, &mut acc);
                }
                for (r, a) in acc.iter().enumerate() {
                    finish(t, r, a[0], a[1]);
                }
            }

            /// One depth step `d` (of parity `ODD`) for `R` rows: one panel row, `R`
            /// broadcasts (`x_off` past each row's start), `2 R` FMAs.
            #[inline]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn $step<const R: usize, const ODD: bool>(
                w: *const $elem,
                d: usize,
                xr: &[*const f32; R],
                x_off: usize,
                acc: &mut [[__m256; 2]; R],
            ) {
                let (w0, w1) = <$elem as Load>::load::<ODD>(w, d);
                for (x, a) in xr.iter().zip(acc.iter_mut()) {
                    let xv = _mm256_broadcast_ss(&*x.add(x_off));
                    a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                    a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
                }
            }
        };
    }

    tile_fn!(f32_tile, f32, f32_rows, f32_step);
    tile_fn!(bf16_tile, bf16, bf16_rows, bf16_step);

    /// One activation row: two independent accumulator pairs over even and odd steps.
    /// `STEP` is the distance between its consecutive depth elements (`MR` packed, 1 not).
    #[target_feature(enable = "avx2,fma")]
    unsafe fn single_row<E: Load, const STEP: usize>(t: &Tile<E>) {
        let (mut a0, mut a1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let (mut b0, mut b1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut d = 0;
        while d + 1 < t.depth {
            let (w0, w1) = E::load::<false>(t.w, d);
            let (v0, v1) = E::load::<true>(t.w, d + 1);
            let xa = _mm256_broadcast_ss(&*t.x.add(d * STEP));
            let xb = _mm256_broadcast_ss(&*t.x.add((d + 1) * STEP));
            a0 = _mm256_fmadd_ps(xa, w0, a0);
            a1 = _mm256_fmadd_ps(xa, w1, a1);
            b0 = _mm256_fmadd_ps(xb, v0, b0);
            b1 = _mm256_fmadd_ps(xb, v1, b1);
            d += 2;
        }
        if d < t.depth {
            let (w0, w1) = E::load::<false>(t.w, d);
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
            for (c, &a) in lanes.iter().enumerate().take(t.cols) {
                let oc = o.add(c);
                *oc = if t.accumulate { *oc + a } else { a };
            }
        }
    }
}
