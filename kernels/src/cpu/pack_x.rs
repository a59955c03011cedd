//! Packing of the GEMM's activations into the micro-kernel's tile order.
//!
//! A prefill-sized input is megabytes, laid out per depth slice and per tile of `MR` rows
//! as `[depth][MR]`: a transposition, about 4 % of a 64 x 128 prefill run's samples. The
//! buffer is no longer cleared before it is written (that `memset` was another 2 %): only
//! the padding rows of a ragged last tile are. (Transposing full tiles eight depth steps at
//! a time in AVX2 registers left the share at 4 %: the pass is bound by memory traffic,
//! megabytes read and written, not by its stores.)

use super::packed_kernel::MR;
use super::team;

/// Lays `x[m, k]` out as the micro-kernel reads it: per depth slice of `kc`, per tile of
/// `MR` rows, `[depth][MR]` (rows past `m` zero). One contiguous stream per tile instead
/// of `MR` strided ones.
pub(crate) fn pack_activations(buf: &mut Vec<f32>, x: &[f32], m: usize, k: usize, kc: usize) {
    let m_pad = m.div_ceil(MR) * MR;
    // Every element is written below (padding rows included), so the buffer's old
    // contents need no clearing: `resize` keeps them and zeroes only what it adds.
    buf.resize(m_pad * k, 0.0);
    for k0 in (0..k).step_by(kc.max(1)) {
        let depth = kc.min(k - k0);
        let slice = &mut buf[k0 * m_pad..][..depth * m_pad];
        let pack_tile = |t: usize, tile: &mut [f32]| {
            let rows = MR.min(m - t * MR);
            for r in 0..rows {
                let row = &x[(t * MR + r) * k + k0..][..depth];
                for (d, &v) in row.iter().enumerate() {
                    tile[d * MR + r] = v;
                }
            }
            for r in rows..MR {
                for d in 0..depth {
                    tile[d * MR + r] = 0.0;
                }
            }
        };
        // Prefill-sized inputs are megabytes: pack them on all threads.
        if m >= 256 {
            team::for_each_chunk_mut(slice, depth * MR, pack_tile);
        } else {
            for (t, tile) in slice.chunks_mut(depth * MR).enumerate() {
                pack_tile(t, tile);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_matches_the_tile_order_and_clears_padding() {
        let mut buf = Vec::new();
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
            buf.resize(m.div_ceil(MR) * MR * k + 64, f32::NAN);
            pack_activations(&mut buf, &x, m, k, kc);
            let m_pad = m.div_ceil(MR) * MR;
            assert_eq!(buf.len(), m_pad * k);
            for k0 in (0..k).step_by(kc) {
                let depth = kc.min(k - k0);
                for t in 0..m_pad / MR {
                    for d in 0..depth {
                        for r in 0..MR {
                            let got = buf[k0 * m_pad + t * depth * MR + d * MR + r];
                            let row = t * MR + r;
                            let want = if row < m { x[row * k + k0 + d] } else { 0.0 };
                            assert_eq!(got, want, "m {m} k {k} kc {kc}: tile {t} d {d} r {r}");
                        }
                    }
                }
            }
        }
    }
}
