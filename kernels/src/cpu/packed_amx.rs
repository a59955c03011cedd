//! The AMX micro-kernel of the packed GEMM: bf16 weights, bf16-pair activations, f32
//! accumulation in AMX tiles (`tdpbf16ps`), for CPUs with AMX-BF16 (Sapphire Rapids and
//! later Xeons).
//!
//! Why: one `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32
//! tile, 8,192 multiply-adds, and a core retires one every 16 cycles: register-only loops
//! on one core of an Intel Xeon measured 3.7 TFLOP/s against 0.12 for `vdpbf16ps`
//! (`cpu-roofline`). Prefill and batched decode are bound by that arithmetic.
//!
//! No repacking: the bf16 panel layout (`[depth / 2][16][2]`, see `packed_kernel`) is
//! already AMX's "VNNI" layout of the right-hand tile: 16 depth pairs of one panel are 16
//! rows of 64 bytes, one B tile. The activation pairs (`pack_x::bf16_pairs`, row-major) are
//! the left-hand tiles as they lie: 16 rows of 16 pairs, one row stride apart.
//!
//! A micro-kernel call covers up to 32 rows × 2 panels in four accumulator tiles
//! (`tmm0-3`), two A tiles (`tmm4-5`) and two B tiles (`tmm6-7`): per 32 depth steps, four
//! tile loads for four products. Depth steps past the last multiple of 32 go through the
//! AVX-512 dot-product kernel, adding to what the tiles stored. Rows past the tile's valid
//! ones are read from the activation buffer's padding (`AMX_MR` rows: `packed.rs` pads it)
//! and never stored; columns past the matrix are zero panel rows and never stored. A tile
//! that is not whole (ragged rows or columns) is stored through a scratch tile.
//!
//! Alignment matters more than anything else here: a tile load whose 64-byte rows straddle
//! cache lines took 6.5 times as long as an aligned one, so the panels (huge pages) and the
//! activation pairs (`pack_x::PairLine`, a stride of whole lines) start every row on a line.
//!
//! Tile state is per thread: each thread loads the one configuration this kernel uses (all
//! eight tiles 16 rows of 64 bytes) before its first AMX instruction and keeps it; the
//! process asks Linux for permission to use the tile data once (`isa::detect`).

use std::arch::asm;
use std::cell::Cell;

use half::bf16;

use super::packed_kernel::{Act, Kernel, Tile, PANEL};

/// Rows per micro-kernel call: two tiles of 16.
pub(crate) const AMX_MR: usize = 32;
/// Depth steps per tile product (16 bf16 pairs).
const TILE_DEPTH: usize = 32;

pub(crate) fn bf16_amx_kernel() -> Kernel<bf16> {
    Kernel {
        f: bf16_amx_tile,
        mr: AMX_MR,
        np: 2,
        // Whole depth up to 4,096 steps: the accumulators then never go to memory and
        // back between slices (a group's B tiles, 36-96 KiB at SmolLM2's depths, are
        // reread from L1/L2 by each row tile of a block). 2,048-row probe, interleaved,
        // slices of 192-512 vs whole depth: down (depth 1,536) 1,029-1,045 -> 1,407-1,608
        // GFLOP/s, gate/up 1,318-1,455 -> 1,361-1,563.
        kc: 4096,
        depth_align: TILE_DEPTH,
        act: Act::Bf16Pairs,
    }
}

/// The palette-1 configuration: eight tiles of 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const fn tile_config() -> TileConfig {
    let mut c = [0u8; 64];
    c[0] = 1; // palette 1
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = 64; // bytes per row (u16, little-endian)
        c[48 + t] = 16; // rows
        t += 1;
    }
    TileConfig(c)
}

static CONFIG: TileConfig = tile_config();

thread_local! {
    /// Whether this thread has loaded `CONFIG`.
    static CONFIGURED: Cell<bool> = const { Cell::new(false) };
}

/// Loads the tile configuration on this thread, once.
///
/// # Safety
/// The CPU has AMX-TILE and the process has permission to use tile data.
#[inline]
unsafe fn ensure_configured() {
    if !CONFIGURED.get() {
        asm!("ldtilecfg [{0}]", in(reg) CONFIG.0.as_ptr(), options(nostack, readonly));
        CONFIGURED.set(true);
    }
}

/// `tmm{T} = 16 rows of 64 bytes at p, stride bytes apart`.
#[inline(always)]
unsafe fn load<const T: u8>(p: *const u8, stride: usize) {
    asm!("tileloadd tmm{t}, [{p} + {s}*1]", t = const T, p = in(reg) p, s = in(reg) stride,
        options(nostack, readonly));
}

/// Stores `tmm{T}` as 16 rows of 64 bytes at p, stride bytes apart.
#[inline(always)]
unsafe fn store<const T: u8>(p: *mut u8, stride: usize) {
    asm!("tilestored [{p} + {s}*1], tmm{t}", t = const T, p = in(reg) p, s = in(reg) stride,
        options(nostack));
}

#[inline(always)]
unsafe fn zero<const T: u8>() {
    asm!("tilezero tmm{t}", t = const T, options(nostack, nomem));
}

/// `tmm{C} += tmm{A} · tmm{B}` (bf16 pairs into f32).
#[inline(always)]
unsafe fn dot<const C: u8, const A: u8, const B: u8>() {
    asm!("tdpbf16ps tmm{c}, tmm{a}, tmm{b}", c = const C, a = const A, b = const B,
        options(nostack, nomem));
}

/// # Safety
/// The CPU has the `Amx` path's features; the tile's pointers cover what it names, and the
/// activation rows up to the next multiple of 16 past `rows` are readable.
unsafe fn bf16_amx_tile(t: &Tile<bf16>) {
    ensure_configured();
    let tiled = t.depth / TILE_DEPTH * TILE_DEPTH;
    if tiled > 0 {
        match (t.rows > 16, t.cols > PANEL) {
            (true, true) => tiles::<2, 2>(t, tiled),
            (true, false) => tiles::<2, 1>(t, tiled),
            (false, true) => tiles::<1, 2>(t, tiled),
            (false, false) => tiles::<1, 1>(t, tiled),
        }
    }
    if tiled < t.depth {
        rest(t, tiled);
    }
}

/// One accumulator tile in memory, on a cache line (tile loads and stores of rows that
/// straddle lines are several times slower).
#[repr(C, align(64))]
struct Scratch([[f32; PANEL]; 16]);

/// The accumulator tile of row tile `r`, panel `j`.
const fn acc(r: usize, j: usize) -> u8 {
    (r * 2 + j) as u8
}

/// Runs `$body` with `$c` bound to the const tile number of accumulator (r, j), for the
/// four accumulators of a 2 × 2 call (tile numbers must be constants in the asm).
macro_rules! for_acc {
    ($r:expr, $j:expr, $c:ident => $body:expr) => {
        match acc($r, $j) {
            0 => {
                const $c: u8 = 0;
                $body
            }
            1 => {
                const $c: u8 = 1;
                $body
            }
            2 => {
                const $c: u8 = 2;
                $body
            }
            _ => {
                const $c: u8 = 3;
                $body
            }
        }
    };
}

/// Depth steps `0..tiled` of an `R`-row-tile by `P`-panel call on the tiles.
#[inline(always)]
unsafe fn tiles<const R: usize, const P: usize>(t: &Tile<bf16>, tiled: usize) {
    let (row_step, _) = t.x_layout.steps();
    let a_stride = row_step * 4;
    let out_stride = t.out_stride * 4;
    let mut scratch = Scratch([[0f32; PANEL]; 16]);
    let scratch = &mut scratch.0;
    // Whether accumulator (r, j) covers 16 valid rows and 16 valid columns.
    let whole = |r: usize, j: usize| (r + 1) * 16 <= t.rows && (j + 1) * PANEL <= t.cols;
    let out_at = |r: usize, j: usize| t.out.add(r * 16 * t.out_stride + j * PANEL);
    let valid = |r: usize, j: usize| ((t.rows - r * 16).min(16), (t.cols - j * PANEL).min(PANEL));
    for r in 0..R {
        for j in 0..P {
            for_acc!(r, j, C => {
                if !t.accumulate {
                    zero::<C>();
                } else if whole(r, j) {
                    load::<C>(out_at(r, j) as *const u8, out_stride);
                } else {
                    let (rows, cols) = valid(r, j);
                    for (i, s) in scratch.iter_mut().enumerate() {
                        s.fill(0.0);
                        if i < rows {
                            let o = out_at(r, j).add(i * t.out_stride);
                            s[..cols].copy_from_slice(std::slice::from_raw_parts(o, cols));
                        }
                    }
                    load::<C>(scratch.as_ptr() as *const u8, PANEL * 4);
                }
            });
        }
    }
    let a0 = t.xp as *const u8;
    let a1 = t.xp.add(16 * row_step) as *const u8;
    let b0 = t.w as *const u8;
    let b1 = t.w.add(t.panel_stride) as *const u8;
    // The next panel group (this one's two panels on) at the same depth.
    let group_bytes = 2 * t.panel_stride * std::mem::size_of::<bf16>();
    // Byte offsets of 32 depth steps: 16 pairs of 4 bytes in an A row; 16 pair rows of
    // 64 bytes in a panel.
    for step in 0..tiled / TILE_DEPTH {
        let (a_off, b_off) = (step * 64, step * 16 * 64);
        prefetch_next_group::<P>(b0.wrapping_add(b_off + group_bytes), group_bytes);
        load::<4>(a0.add(a_off), a_stride);
        load::<6>(b0.add(b_off), 64);
        dot::<0, 4, 6>();
        if P == 2 {
            load::<7>(b1.add(b_off), 64);
            dot::<1, 4, 7>();
        }
        if R == 2 {
            load::<5>(a1.add(a_off), a_stride);
            dot::<2, 5, 6>();
            if P == 2 {
                dot::<3, 5, 7>();
            }
        }
    }
    for r in 0..R {
        for j in 0..P {
            for_acc!(r, j, C => {
                if whole(r, j) {
                    store::<C>(out_at(r, j) as *mut u8, out_stride);
                } else {
                    store::<C>(scratch.as_mut_ptr() as *mut u8, PANEL * 4);
                    let (rows, cols) = valid(r, j);
                    for (i, s) in scratch.iter().enumerate().take(rows) {
                        let o = out_at(r, j).add(i * t.out_stride);
                        std::slice::from_raw_parts_mut(o, cols).copy_from_slice(&s[..cols]);
                    }
                }
            });
        }
    }
}

/// Asks for the next panel group's B tiles of this depth step into L2 (`next` is its first
/// panel's, the second follows `group_bytes / 2` on; past the matrix's end a prefetch does
/// nothing). A tile load waits for its whole kilobyte and the tile unit keeps few loads in
/// flight, so weights streamed from memory (decode) left the kernel waiting on every load;
/// a group ahead is about one call's compute ahead. 64-row probe, interleaved, against
/// 4 KiB ahead into L1: 5-10 % faster, equal at 8 rows; against none, 10 %.
#[inline(always)]
unsafe fn prefetch_next_group<const P: usize>(next: *const u8, group_bytes: usize) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    for line in 0..16 {
        _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(line * 64) as *const i8);
        if P == 2 {
            _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(group_bytes / 2 + line * 64) as *const i8);
        }
    }
}

/// Depth steps `tiled..depth` (fewer than 32) through the AVX-512 dot-product kernel, in
/// tiles of its 8 rows, added to what the tiles stored (or to the output, for a later
/// slice).
unsafe fn rest(t: &Tile<bf16>, tiled: usize) {
    let k = super::packed_avx512::bf16_dot_kernel();
    let (row_step, _) = t.x_layout.steps();
    for r0 in (0..t.rows).step_by(k.mr) {
        let sub = Tile {
            x: std::ptr::null(),
            xp: t.xp.add(r0 * row_step + tiled / 2),
            x_layout: t.x_layout,
            rows: k.mr.min(t.rows - r0),
            w: t.w.add(tiled * PANEL),
            panel_stride: t.panel_stride,
            depth: t.depth - tiled,
            out: t.out.add(r0 * t.out_stride),
            out_stride: t.out_stride,
            cols: t.cols,
            accumulate: t.accumulate || tiled > 0,
        };
        (k.f)(&sub);
    }
}

/// Flop of one `peak_loop` iteration: four 16 × 16 × 32 tile products.
#[doc(hidden)]
pub const PEAK_FLOP_PER_ITER: f64 = 4.0 * 16.0 * 16.0 * 32.0 * 2.0;

/// A register-only loop of `iters` × four independent `tdpbf16ps` on this thread: the
/// ceiling `cpu-roofline` reports the AMX kernel against. Returns one result element
/// (so the loop is not optimised away).
///
/// # Panics
/// If this CPU has no `Amx` path.
#[doc(hidden)]
pub fn peak_loop(iters: usize) -> f32 {
    assert!(super::isa::Isa::Amx.supported(), "this CPU has no amx path");
    // bf16 1.0 times bf16 2^-15: the sums stay small and finite.
    let a = [0x3F80u16; 16 * 32];
    let b = [0x3800u16; 16 * 32];
    let mut c = [[0f32; PANEL]; 16];
    // SAFETY: AMX is supported and granted (asserted); every tile load and store covers
    // 16 rows of 64 bytes of the arrays above.
    unsafe {
        ensure_configured();
        zero::<0>();
        zero::<1>();
        zero::<2>();
        zero::<3>();
        load::<4>(a.as_ptr() as *const u8, 64);
        load::<5>(a.as_ptr() as *const u8, 64);
        load::<6>(b.as_ptr() as *const u8, 64);
        load::<7>(b.as_ptr() as *const u8, 64);
        for _ in 0..iters {
            dot::<0, 4, 6>();
            dot::<1, 4, 7>();
            dot::<2, 5, 6>();
            dot::<3, 5, 7>();
        }
        store::<3>(c.as_mut_ptr() as *mut u8, PANEL * 4);
    }
    c[15][15]
}
