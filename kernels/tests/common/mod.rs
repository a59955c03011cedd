//! Helpers shared by the kernel tests: random inputs and the float64 attention reference.

use rand::rngs::StdRng;
use rand::Rng;

pub fn randv(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// Contiguous causal attention in f64: query i of the chunk sits at `ctx - q_len + i`.
#[allow(clippy::too_many_arguments)]
pub fn naive_attention(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    q_len: usize,
    ctx: usize,
    heads: usize,
    kv_heads: usize,
    hd: usize,
    scale: f64,
) -> Vec<f64> {
    let group = heads / kv_heads;
    let mut out = vec![0f64; q_len * heads * hd];
    for i in 0..q_len {
        let pos = ctx - q_len + i;
        for h in 0..heads {
            let kvh = h / group;
            let qv = &q[(i * heads + h) * hd..(i * heads + h + 1) * hd];
            let scores: Vec<f64> = (0..=pos)
                .map(|p| {
                    let kk = &k[(p * kv_heads + kvh) * hd..(p * kv_heads + kvh + 1) * hd];
                    qv.iter()
                        .zip(kk)
                        .map(|(a, b)| *a as f64 * *b as f64)
                        .sum::<f64>()
                        * scale
                })
                .collect();
            let m = scores.iter().cloned().fold(f64::MIN, f64::max);
            let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
            let z: f64 = w.iter().sum();
            for (p, wp) in w.iter().enumerate() {
                let vv = &v[(p * kv_heads + kvh) * hd..(p * kv_heads + kvh + 1) * hd];
                for d in 0..hd {
                    out[(i * heads + h) * hd + d] += wp / z * vv[d] as f64;
                }
            }
        }
    }
    out
}

/// The largest `|got[i] - want[i]|`.
pub fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(g, w)| (*g as f64 - w).abs())
        .fold(0.0, f64::max)
}
