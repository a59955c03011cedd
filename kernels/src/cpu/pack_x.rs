//! The GEMM's activations in the forms its micro-kernels read (`packed_kernel::XLayout`).
//!
//! f32 tiles: a prefill-sized input is megabytes, laid out per depth slice and per tile of
//! `mr` rows as `[depth][mr]`: a transposition, about 4 % of a 64 x 128 prefill run's
//! samples. The buffer is not cleared before it is written (that `memset` was another 2 %):
//! only the padding rows of a ragged last tile are. (Transposing full tiles eight depth
//! steps at a time in AVX2 registers left the share at 4 %: the pass is bound by memory
//! traffic, megabytes read and written, not by its stores.)
//!
//! bf16 pairs: for the AVX512-BF16 dot-product kernel each row is rounded to bf16 once per
//! call (round to nearest even, as oneDNN does), row-major, padded with a zero to an even
//! depth; a 32-bit element holds two consecutive depth steps, the operand `vdpbf16ps`
//! broadcasts.

use super::isa::Isa;
use super::team;

/// Lays `x[m, k]` out as the micro-kernel reads it: per depth slice of `kc`, per tile of
/// `mr` rows, `[depth][mr]` (rows past `m` zero). One contiguous stream per tile instead
/// of `mr` strided ones.
pub(crate) fn pack_activations(
    buf: &mut Vec<f32>,
    x: &[f32],
    m: usize,
    k: usize,
    kc: usize,
    mr: usize,
) {
    let m_pad = m.div_ceil(mr) * mr;
    // Every element is written below (padding rows included), so the buffer's old
    // contents need no clearing: `resize` keeps them and zeroes only what it adds.
    buf.resize(m_pad * k, 0.0);
    for k0 in (0..k).step_by(kc.max(1)) {
        let depth = kc.min(k - k0);
        let slice = &mut buf[k0 * m_pad..][..depth * m_pad];
        let pack_tile = |t: usize, tile: &mut [f32]| {
            let rows = mr.min(m - t * mr);
            for r in 0..rows {
                let row = &x[(t * mr + r) * k + k0..][..depth];
                for (d, &v) in row.iter().enumerate() {
                    tile[d * mr + r] = v;
                }
            }
            for r in rows..mr {
                for d in 0..depth {
                    tile[d * mr + r] = 0.0;
                }
            }
        };
        // Prefill-sized inputs are megabytes: pack them on all threads.
        if m >= 256 {
            team::for_each_chunk_mut(slice, depth * mr, pack_tile);
        } else {
            for (t, tile) in slice.chunks_mut(depth * mr).enumerate() {
                pack_tile(t, tile);
            }
        }
    }
}

/// Rows of `x[m, k]` rounded to bf16 pairs: `buf[r * k.div_ceil(2) + i]` holds steps `2i`
/// (low half) and `2i + 1` (high half) of row `r`, a zero past an odd `k`. Round to
/// nearest even; f32 subnormals (below 1.2e-38) become zero, as the AVX512-BF16
/// conversion and dot product treat them (no activation is that small in practice).
///
/// Rows are `stride >= k.div_ceil(2)` pairs apart in `buf` (which holds at least `m` of
/// them); the pairs between a row's end and the next are left as they are.
pub(crate) fn bf16_pairs(isa: Isa, buf: &mut [u32], x: &[f32], m: usize, k: usize, stride: usize) {
    let kp = k.div_ceil(2);
    assert!(
        stride >= kp && buf.len() >= m * stride,
        "pairs buffer too small"
    );
    let buf = &mut buf[..m * stride];
    let row = |r: usize, dst: &mut [u32]| {
        let dst = &mut dst[..kp];
        let src = &x[r * k..][..k];
        #[cfg(target_arch = "x86_64")]
        if isa >= Isa::Avx512 {
            // SAFETY: the path's features were checked when `isa` was chosen.
            return unsafe { bf16_pairs_avx512(dst, src) };
        }
        let _ = isa;
        bf16_pairs_portable(dst, src);
    };
    // Prefill-sized inputs are megabytes: convert them on all threads.
    if m >= 256 {
        team::for_each_chunk_mut(buf, stride * 16, |c, rows| {
            for (i, dst) in rows.chunks_mut(stride).enumerate() {
                row(c * 16 + i, dst);
            }
        });
    } else {
        for (r, dst) in buf.chunks_mut(stride).enumerate() {
            row(r, dst);
        }
    }
}

/// Sixteen pairs, 64 bytes on a 64-byte boundary: the unit a pairs buffer is allocated in,
/// so that its rows start on cache lines when their stride is a multiple of 16 pairs. An
/// AMX tile load of 16 rows that each straddle two lines took 6.5 times as long as one of
/// aligned rows (probe on this Xeon: four 1 KiB loads 9.2 ns aligned, 60-77 ns at offsets
/// 2-32 bytes), and the allocator returns large buffers 16 bytes past a page.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(64))]
pub(crate) struct PairLine([u32; 16]);

/// A buffer of at least `len` pairs (zeros where it grew), as one slice.
pub(crate) fn pairs_view(buf: &mut Vec<PairLine>, len: usize) -> &mut [u32] {
    buf.resize(len.div_ceil(16), PairLine::default());
    // SAFETY: `PairLine` is `repr(C)` over 16 `u32` with no padding (64 bytes, align 64),
    // so the lines are a contiguous run of `16 * buf.len()` initialised `u32`.
    unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u32, buf.len() * 16) }
}

/// The reference rounding: f32 to bf16, nearest even, subnormals to zero (see `bf16_pairs`).
pub(crate) fn round_bf16(v: f32) -> u16 {
    let v = if v.is_finite() && v.abs() < f32::MIN_POSITIVE {
        0.0f32.copysign(v)
    } else {
        v
    };
    half::bf16::from_f32(v).to_bits()
}

fn bf16_pairs_portable(dst: &mut [u32], src: &[f32]) {
    for (i, d) in dst.iter_mut().enumerate() {
        let lo = round_bf16(src[2 * i]) as u32;
        let hi = src.get(2 * i + 1).map_or(0, |&v| round_bf16(v) as u32);
        *d = lo | hi << 16;
    }
}

/// 32 steps per `vcvtne2ps2bf16`; a ragged end through masked loads (zeros past `src`).
///
/// # Safety
/// The CPU has the `Avx512` path's features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn bf16_pairs_avx512(dst: &mut [u32], src: &[f32]) {
    use super::simd::lanes16;
    use std::arch::x86_64::*;
    let n = src.len();
    let (s, d) = (src.as_ptr(), dst.as_mut_ptr());
    let mut i = 0;
    while i + 32 <= n {
        let (a, b) = (_mm512_loadu_ps(s.add(i)), _mm512_loadu_ps(s.add(i + 16)));
        // The second operand fills the low 16 bf16 (steps i..i+16), the first the high.
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        _mm512_storeu_si512(d.add(i / 2) as *mut _, v);
        i += 32;
    }
    if i < n {
        let left = n - i;
        let (m_a, m_b) = (lanes16(left), lanes16(left.saturating_sub(16)));
        let a = _mm512_maskz_loadu_ps(m_a, s.add(i));
        let b = _mm512_maskz_loadu_ps(m_b, s.add(i + 16));
        let v: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(b, a));
        let pairs = left.div_ceil(2);
        let m_out = lanes16(pairs);
        _mm512_mask_storeu_epi32(d.add(i / 2) as *mut _, m_out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_matches_the_tile_order_and_clears_padding() {
        let mut buf = Vec::new();
        for mr in [6usize, 8] {
            for (m, k, kc) in [
                (1usize, 5usize, 5usize),
                (6, 8, 8),
                (7, 17, 9),
                (12, 16, 8),
                (300, 37, 16),
                (261, 576, 256),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| i as f32 + 0.5).collect();
                // Stale contents from an earlier, larger call must not survive.
                buf.clear();
                buf.resize(m.div_ceil(mr) * mr * k + 64, f32::NAN);
                pack_activations(&mut buf, &x, m, k, kc, mr);
                let m_pad = m.div_ceil(mr) * mr;
                assert_eq!(buf.len(), m_pad * k);
                for k0 in (0..k).step_by(kc) {
                    let depth = kc.min(k - k0);
                    for t in 0..m_pad / mr {
                        for d in 0..depth {
                            for r in 0..mr {
                                let got = buf[k0 * m_pad + t * depth * mr + d * mr + r];
                                let row = t * mr + r;
                                let want = if row < m { x[row * k + k0 + d] } else { 0.0 };
                                assert_eq!(got, want, "mr {mr} m {m} k {k} kc {kc}: {t} {d} {r}");
                            }
                        }
                    }
                }
            }
        }
    }

    /// Round to nearest even on the bits, independently of `half`: add 0x7FFF plus the
    /// lowest kept bit, drop the low 16.
    fn rne_by_hand(v: f32) -> u16 {
        if v.abs() < f32::MIN_POSITIVE {
            return ((v.to_bits() >> 16) & 0x8000) as u16;
        }
        let b = v.to_bits();
        ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
    }

    #[test]
    fn bf16_pairs_round_to_nearest_even_on_every_path() {
        // Values with every pattern of the low 16 bits that matters: exact halves (ties
        // go to even), just above and below, negative, large, tiny and subnormal.
        let mut vals = vec![1.0f32, -2.5, 3.0e30, -7.0e-30, 1.0e-39, -1.0e-40, 0.0, -0.0];
        for i in 0..2000u32 {
            let base = 0x3F80_0000u32 + (i % 97) * 0x0001_0000;
            for low in [0x8000u32, 0x7FFF, 0x8001, 0x0000, 0xFFFF, (i * 37) & 0xFFFF] {
                let v = f32::from_bits(base | low);
                vals.push(if i % 2 == 0 { v } else { -v });
            }
        }
        for &v in &vals {
            assert_eq!(round_bf16(v), rne_by_hand(v), "{v:e}");
        }
        for isa in Isa::available() {
            for (m, k) in [
                (1usize, 1usize),
                (3, 31),
                (2, 32),
                (5, 33),
                (7, 77),
                (300, 64),
            ] {
                let x: Vec<f32> = (0..m * k).map(|i| vals[(i * 13) % vals.len()]).collect();
                let kp = k.div_ceil(2);
                // Rows packed tight, and rows padded to a 64-byte stride (the padding
                // untouched).
                for stride in [kp, kp.next_multiple_of(16)] {
                    let mut buf = vec![0xDEAD_BEEF; m * stride + 3];
                    bf16_pairs(isa, &mut buf, &x, m, k, stride);
                    assert_eq!(buf[m * stride..], [0xDEAD_BEEF; 3]);
                    for r in 0..m {
                        for i in kp..stride {
                            assert_eq!(buf[r * stride + i], 0xDEAD_BEEF, "{isa} m {m} k {k}");
                        }
                        for i in 0..kp {
                            let lo = rne_by_hand(x[r * k + 2 * i]) as u32;
                            let hi = if 2 * i + 1 < k {
                                rne_by_hand(x[r * k + 2 * i + 1]) as u32
                            } else {
                                0
                            };
                            assert_eq!(
                                buf[r * stride + i],
                                lo | hi << 16,
                                "{isa} m {m} k {k} stride {stride}: {r} {i}"
                            );
                        }
                    }
                }
            }
        }
    }
}
