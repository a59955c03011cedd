//! Weight GEMMs with bf16 weights (`--dtype bf16`): half the bytes of f32, so decode, which
//! streams every weight once per step, reads half as much memory.
//!
//! bf16 is the top half of an f32, so widening is a 16-bit shift. Small batches dot each
//! weight row, widened in registers, with every input row (one pass over the weights).
//! Larger batches widen a block of weight rows into an f32 scratch tile and hand it to the
//! blocked f32 GEMM: one extra pass over the weights per step, small next to the GEMM's
//! arithmetic at that size.

use half::bf16;
use rayon::prelude::*;

use super::matmul::{gemm_into, small_m_with, SMALL_M};

/// f32 bytes of weights widened per block in the large-batch path. Each block is one GEMM
/// call, which packs the inputs again, so blocks are large (a few, not hundreds, per
/// matrix) yet stay within the last-level cache.
const BLOCK_BYTES: usize = 8 << 20;

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` with `w` in bf16.
pub fn linear_bf16(out: &mut [f32], x: &[f32], w: &[bf16], m: usize, k: usize, n: usize) {
    assert!(out.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m == 0 {
        return;
    }
    if m <= SMALL_M {
        // One pass over the weights: each row, widened in registers, dotted with all m inputs.
        return small_m_with(out, x, w, m, k, n, dot_fn());
    }
    let block_rows = (BLOCK_BYTES / (4 * k)).max(64);
    let mut tile = vec![0f32; block_rows.min(n) * k];
    for j0 in (0..n).step_by(block_rows) {
        let rows = block_rows.min(n - j0);
        let t = &mut tile[..rows * k];
        t.par_chunks_mut(k)
            .zip(w[j0 * k..(j0 + rows) * k].par_chunks(k))
            .for_each(|(d, s)| widen(d, s));
        // Columns j0..j0+rows of out, a row stride of n.
        gemm_into(&mut out[j0..], n, x, t, m, k, rows);
    }
}

/// bf16 → f32, exactly.
#[inline(always)]
pub fn widen(dst: &mut [f32], src: &[bf16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = f32::from_bits((s.to_bits() as u32) << 16);
    }
}

/// Sixteen independent lanes (two 8-wide FMA accumulators with AVX2), widening as it goes.
#[inline(always)]
fn dot_lanes(a: &[f32], b: &[bf16]) -> f32 {
    let mut s = [0f32; 16];
    let chunks = a.len() / 16;
    for i in 0..chunks {
        let (ac, bc) = (&a[i * 16..i * 16 + 16], &b[i * 16..i * 16 + 16]);
        for j in 0..16 {
            s[j] += ac[j] * f32::from_bits((bc[j].to_bits() as u32) << 16);
        }
    }
    let mut t: f32 = s.iter().sum();
    for i in chunks * 16..a.len() {
        t += a[i] * b[i].to_f32();
    }
    t
}

fn dot_portable(a: &[f32], b: &[bf16]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(a: &[f32], b: &[bf16]) -> f32 {
    dot_lanes(a, b)
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_safe(a: &[f32], b: &[bf16]) -> f32 {
    // SAFETY: only chosen by `dot_fn` after the CPU reported AVX2 and FMA.
    unsafe { dot_avx2(a, b) }
}

fn dot_fn() -> fn(&[f32], &[bf16]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        return dot_avx2_safe;
    }
    dot_portable
}

/// Rows of a bf16 `[vocab, dim]` table, widened (the embedding lookup of a bf16 model).
pub fn embedding_bf16(out: &mut [f32], table: &[bf16], ids: &[u32], dim: usize) {
    for (o, &id) in out.chunks_mut(dim).zip(ids) {
        let s = id as usize * dim;
        widen(o, &table[s..s + dim]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both paths against an f64 product of the same bf16 weights, across the knee.
    #[test]
    fn bf16_linear_matches_f64_on_the_rounded_weights() {
        let (k, n) = (72, 300);
        let w: Vec<bf16> = (0..n * k)
            .map(|i| bf16::from_f32(((i * 7919 % 1000) as f32 / 500.0) - 1.0))
            .collect();
        for m in [1, 3, SMALL_M, SMALL_M + 1, 40] {
            let x: Vec<f32> = (0..m * k)
                .map(|i| ((i * 31 % 97) as f32 / 48.0) - 1.0)
                .collect();
            let mut out = vec![f32::NAN; m * n];
            linear_bf16(&mut out, &x, &w, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| x[i * k + p] as f64 * w[j * k + p].to_f64())
                        .sum();
                    let got = out[i * n + j] as f64;
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "m {m}: {got} vs {want}"
                    );
                }
            }
        }
    }
}
