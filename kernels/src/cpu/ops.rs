//! Element-wise and per-row operations of a Llama-family layer.

use super::team;

/// Rows at or above this many elements in all are split over threads. Below it, waking the
/// other thread costs more than it saves: a 64-row decode step's norm (36,864 elements)
/// took 46-59 µs split over two threads and ~14 µs on one once vectorized.
const PAR_THRESHOLD: usize = 1 << 16;

/// `out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight`, per row of `dim`.
pub fn rms_norm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    let f = |o: &mut [f32], xr: &[f32]| {
        // Sixteen partial sums, not one serial chain of `dim` dependent adds (that made a
        // 64-row norm ~50 µs: 0.46 s of a 64 x (128 + 128) run's decode steps).
        let ms = super::simd::dot_lanes(xr, xr) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((ov, &xv), &w) in o.iter_mut().zip(xr).zip(weight) {
            *ov = xv * inv * w;
        }
    };
    let n = out.len().min(x.len());
    let out = &mut out[..n];
    if x.len() >= PAR_THRESHOLD {
        team::for_each_chunk_mut(out, dim, |t, o| f(o, &x[t * dim..][..dim]));
    } else {
        out.chunks_mut(dim)
            .zip(x.chunks(dim))
            .for_each(|(o, xr)| f(o, xr));
    }
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `out[t, i] = silu(gu[t, i]) * gu[t, inter + i]` where `gu` rows are `[gate | up]`.
pub fn silu_and_mul(out: &mut [f32], gate_up: &[f32], inter: usize) {
    let avx2 = super::simd::has_avx2_fma();
    let f = |o: &mut [f32], g: &[f32]| {
        let (gate, up) = g.split_at(inter);
        #[cfg(target_arch = "x86_64")]
        if avx2 {
            // SAFETY: the CPU reported AVX2 and FMA.
            return unsafe { silu_mul_avx2(o, gate, up) };
        }
        let _ = avx2;
        silu_mul_scalar(o, gate, up);
    };
    let rows = gate_up.len() / (2 * inter).max(1);
    let n = out.len().min(rows * inter);
    let out = &mut out[..n];
    if out.len() >= PAR_THRESHOLD {
        team::for_each_chunk_mut(out, inter, |t, o| {
            f(o, &gate_up[t * 2 * inter..][..2 * inter])
        });
    } else {
        out.chunks_mut(inter)
            .zip(gate_up.chunks(2 * inter))
            .for_each(|(o, g)| f(o, g));
    }
}

fn silu_mul_scalar(out: &mut [f32], gate: &[f32], up: &[f32]) {
    for ((ov, &a), &b) in out.iter_mut().zip(gate).zip(up) {
        *ov = a / (1.0 + (-a).exp()) * b;
    }
}

/// `silu_mul_scalar` eight lanes at a time through the vector `exp` (the C library's
/// scalar `expf` made this 4 % of a 64 × (128 + 128) run).
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(out: &mut [f32], gate: &[f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(gate.len()).min(up.len());
    let body = n / 8 * 8;
    let one = _mm256_set1_ps(1.0);
    let zero = _mm256_setzero_ps();
    for i in (0..body).step_by(8) {
        let a = _mm256_loadu_ps(gate.as_ptr().add(i));
        let e = super::simd::exp256(_mm256_sub_ps(zero, a));
        let silu = _mm256_div_ps(a, _mm256_add_ps(one, e));
        let r = _mm256_mul_ps(silu, _mm256_loadu_ps(up.as_ptr().add(i)));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), r);
    }
    silu_mul_scalar(&mut out[body..n], &gate[body..n], &up[body..n]);
}

/// Rows of `table` (`[vocab, dim]`) for each id.
pub fn embedding(out: &mut [f32], table: &[f32], ids: &[u32], dim: usize) {
    for (o, &id) in out.chunks_mut(dim).zip(ids) {
        let s = id as usize * dim;
        o.copy_from_slice(&table[s..s + dim]);
    }
}

/// Rotary position embedding frequencies, with optional Llama-3 scaling.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    /// cos and sin of `pos * inv_freq[i]`, `[max_pos, rot_dim / 2]` each.
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
    max_pos: usize,
}

/// Llama 3's frequency scaling (`rope_scaling` with `rope_type: llama3`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Llama3Scaling {
    pub factor: f64,
    pub low_freq_factor: f64,
    pub high_freq_factor: f64,
    pub original_max_position: f64,
}

impl Rope {
    pub fn new(
        head_dim: usize,
        theta: f64,
        max_pos: usize,
        scaling: Option<Llama3Scaling>,
    ) -> Self {
        let half = head_dim / 2;
        let inv_freq: Vec<f64> = (0..half)
            .map(|i| {
                let f = 1.0 / theta.powf(2.0 * i as f64 / head_dim as f64);
                match scaling {
                    Some(s) => scale_llama3(f, s),
                    None => f,
                }
            })
            .collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for &f in &inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Rope {
            cos,
            sin,
            half,
            max_pos,
        }
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    /// `[max_pos, 2 * half]`: per position the cosines, then the sines. The CUDA kernel reads
    /// this table, so both backends rotate by the very same f32 values.
    pub fn cos_sin_table(&self) -> Vec<f32> {
        let mut t = Vec::with_capacity(self.max_pos * 2 * self.half);
        for p in 0..self.max_pos {
            t.extend_from_slice(&self.cos[p * self.half..(p + 1) * self.half]);
            t.extend_from_slice(&self.sin[p * self.half..(p + 1) * self.half]);
        }
        t
    }

    /// Rotates every head of `x` (`[num_tokens, num_heads, 2 * half]`) in place, Hugging Face
    /// `rotate_half` style: element `i` pairs with `i + half`.
    pub fn apply(&self, x: &mut [f32], positions: &[usize], num_heads: usize) {
        let row = num_heads * 2 * self.half;
        let x = &mut x[..positions.len() * row];
        if x.len() >= PAR_THRESHOLD {
            team::for_each_chunk_mut(x, row, |t, v| self.apply_token(v, positions[t]));
        } else {
            for (v, &pos) in x.chunks_mut(row).zip(positions) {
                self.apply_token(v, pos);
            }
        }
    }

    /// Rotates every head of one token's row (`[num_heads, 2 * half]`) at position `pos`.
    fn apply_token(&self, x: &mut [f32], pos: usize) {
        let c = &self.cos[pos * self.half..(pos + 1) * self.half];
        let s = &self.sin[pos * self.half..(pos + 1) * self.half];
        for v in x.chunks_mut(2 * self.half) {
            let (a, b) = v.split_at_mut(self.half);
            for i in 0..self.half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * c[i] - x2 * s[i];
                b[i] = x2 * c[i] + x1 * s[i];
            }
        }
    }
}

fn scale_llama3(freq: f64, s: Llama3Scaling) -> f64 {
    let wavelen = 2.0 * std::f64::consts::PI / freq;
    let low_wavelen = s.original_max_position / s.low_freq_factor;
    let high_wavelen = s.original_max_position / s.high_freq_factor;
    if wavelen < high_wavelen {
        freq
    } else if wavelen > low_wavelen {
        freq / s.factor
    } else {
        let smooth = (s.original_max_position / wavelen - s.low_freq_factor)
            / (s.high_freq_factor - s.low_freq_factor);
        (1.0 - smooth) * freq / s.factor + smooth * freq
    }
}
