//! Exact dequantization of ggml blocks to f32, following ggml's reference definitions
//! (scales are f16; `x = q * d` for the symmetric types, `x = q * d + m` for Q4_1).

use half::{bf16, f16};

use super::types::GgmlType;

/// Why a tensor cannot be dequantized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub GgmlType);

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantizes `n` elements of type `ty` from `bytes` (which must hold exactly their blocks).
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: usize) -> Result<Vec<f32>, Unsupported> {
    let mut out = Vec::with_capacity(n);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| half_at(c, 0))),
        GgmlType::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for blk in bytes.chunks_exact(34) {
                let d = half_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| q as i8 as f32 * d));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes.chunks_exact(18) {
                let d = half_at(blk, 0);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&q| ((q & 0x0f) as i32 - 8) as f32 * d));
                out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes.chunks_exact(20) {
                let (d, m) = (half_at(blk, 0), half_at(blk, 2));
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&q| (q & 0x0f) as f32 * d + m));
                out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
            }
        }
        other => return Err(Unsupported(other)),
    }
    debug_assert_eq!(out.len(), n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_block_by_hand() {
        // d = 0.5; low nibbles 0..15 give elements 0..15, high nibbles give 16..31.
        let mut blk = h(0.5).to_vec();
        blk.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let y = dequantize(GgmlType::Q4_0, &blk, 32).unwrap();
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[16 + j], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.25, m = -1: x = q / 4 - 1.
        let mut blk = h(0.25).to_vec();
        blk.extend(h(-1.0));
        blk.extend((0..16u8).map(|j| j | (3 << 4)));
        let y = dequantize(GgmlType::Q4_1, &blk, 32).unwrap();
        assert_eq!(y[0], -1.0);
        assert_eq!(y[15], 15.0 * 0.25 - 1.0);
        assert!(y[16..].iter().all(|&v| v == 3.0 * 0.25 - 1.0));
    }

    #[test]
    fn q8_0_block_by_hand() {
        let mut blk = h(2.0).to_vec();
        blk.extend((0..32).map(|j: i32| (j - 16) as i8 as u8));
        let y = dequantize(GgmlType::Q8_0, &blk, 32).unwrap();
        for (j, v) in y.iter().enumerate() {
            assert_eq!(*v, (j as f32 - 16.0) * 2.0);
        }
    }

    #[test]
    fn float_types_by_hand() {
        let f: Vec<u8> = [1.5f32, -2.25]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(dequantize(GgmlType::F32, &f, 2).unwrap(), vec![1.5, -2.25]);
        let f: Vec<u8> = [h(0.1), h(-3.0)].concat();
        assert_eq!(
            dequantize(GgmlType::F16, &f, 2).unwrap(),
            vec![f16::from_f32(0.1).to_f32(), -3.0]
        );
        let b: Vec<u8> = [
            bf16::from_f32(1.0).to_le_bytes(),
            bf16::from_f32(-0.5).to_le_bytes(),
        ]
        .concat();
        assert_eq!(dequantize(GgmlType::Bf16, &b, 2).unwrap(), vec![1.0, -0.5]);
    }

    #[test]
    fn k_quants_are_refused_by_name() {
        assert_eq!(
            dequantize(GgmlType::Q4K, &[0; 144], 256),
            Err(Unsupported(GgmlType::Q4K))
        );
    }
}
