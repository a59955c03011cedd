//! Element-wise and per-row operations of a Llama-family layer, on the process's ISA path
//! (`…_on` variants take it as a value). The norm, residual add and RoPE are plain Rust
//! compiled three times (`vectorized!`: baseline x86-64, AVX2, AVX-512), so every path
//! vectorizes the same source and sums in the same order; SiLU goes through the vector
//! `exp` of each width.

use super::isa::{self, Isa};
use super::team;

/// Rows at or above this many elements in all are split over threads. Below it, waking the
/// other thread costs more than it saves: a 64-row decode step's norm (36,864 elements)
/// took 46-59 µs split over two threads and ~14 µs on one once vectorized.
const PAR_THRESHOLD: usize = 1 << 16;

/// Defines `$name(isa, args…)`, which runs `$lanes(args…)` compiled for `isa`'s features.
macro_rules! vectorized {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) => $lanes:path) => {
        $(#[$m])*
        fn $name(isa: Isa, $($a: $t),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                unsafe fn wide($($a: $t),*) {
                    $lanes($($a),*)
                }
                #[target_feature(enable = "avx2,fma,f16c")]
                unsafe fn narrow($($a: $t),*) {
                    $lanes($($a),*)
                }
                match isa {
                    // SAFETY: the path's features were checked when `isa` was chosen.
                    Isa::Avx512 | Isa::Amx => return unsafe { wide($($a),*) },
                    Isa::Avx2 => return unsafe { narrow($($a),*) },
                    Isa::Portable => {}
                }
            }
            let _ = isa;
            $lanes($($a),*)
        }
    };
}

/// Runs `f(first_row, rows_out)` over blocks of whole rows of `out` (rows of `row` elements):
/// on the team, about four blocks per thread, when there are `PAR_THRESHOLD` elements or
/// more; else in one call. (One row per task made a 2,048-row prefill norm 0.75 ms: the two
/// threads took turns on the task counter's cache line every 576 elements.)
pub(crate) fn for_row_blocks(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    for_row_blocks_from(PAR_THRESHOLD, out, row, f)
}

/// `for_row_blocks` with the threshold given: for kernels that do more per element.
pub(crate) fn for_row_blocks_from(
    threshold: usize,
    out: &mut [f32],
    row: usize,
    f: impl Fn(usize, &mut [f32]) + Sync,
) {
    let row = row.max(1);
    let rows = out.len() / row;
    let out = &mut out[..rows * row];
    if out.len() < threshold {
        return f(0, out);
    }
    let per = rows.div_ceil(4 * team::threads()).max(1);
    team::for_each_chunk_mut(out, per * row, |c, block| f(c * per, block));
}

/// `out[t] = x[t] / sqrt(mean(x[t]²) + eps) * weight`, per row of `dim`.
pub fn rms_norm(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    rms_norm_on(isa::selected(), out, x, weight, eps)
}

/// `rms_norm` on a given path.
pub fn rms_norm_on(isa: Isa, out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    let n = out.len().min(x.len());
    for_row_blocks(&mut out[..n], dim, |r0, o| {
        rms_rows(isa, o, &x[r0 * dim..][..o.len()], weight, eps)
    });
}

vectorized!(
    /// Norms of the rows of `x` into `out`.
    fn rms_rows(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) => rms_rows_lanes
);

#[inline(always)]
fn rms_rows_lanes(out: &mut [f32], x: &[f32], weight: &[f32], eps: f32) {
    let dim = weight.len();
    for (o, xr) in out.chunks_exact_mut(dim).zip(x.chunks_exact(dim)) {
        // Sixteen partial sums, not one serial chain of `dim` dependent adds (that made a
        // 64-row norm ~50 µs: 0.46 s of a 64 x (128 + 128) run's decode steps).
        let ms = super::simd::dot_lanes(xr, xr) / dim as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((ov, &xv), &w) in o.iter_mut().zip(xr).zip(weight) {
            *ov = xv * inv * w;
        }
    }
}

/// `x += y`.
pub fn add_inplace(x: &mut [f32], y: &[f32]) {
    add_inplace_on(isa::selected(), x, y)
}

/// `add_inplace` on a given path.
pub fn add_inplace_on(isa: Isa, x: &mut [f32], y: &[f32]) {
    // Blocks of whole 4,096-element "rows", then the rest.
    const ROW: usize = 4096;
    let n = x.len().min(y.len());
    let whole = n / ROW * ROW;
    let (body, tail) = x[..n].split_at_mut(whole);
    for_row_blocks(body, ROW, |r0, xs| {
        add_lanes_on(isa, xs, &y[r0 * ROW..][..xs.len()])
    });
    add_lanes_on(isa, tail, &y[whole..n]);
}

vectorized!(fn add_lanes_on(x: &mut [f32], y: &[f32]) => add_lanes);

#[inline(always)]
fn add_lanes(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `out[t, i] = silu(gu[t, i]) * gu[t, inter + i]` where `gu` rows are `[gate | up]`.
pub fn silu_and_mul(out: &mut [f32], gate_up: &[f32], inter: usize) {
    silu_and_mul_on(isa::selected(), out, gate_up, inter)
}

/// `silu_and_mul` on a given path.
pub fn silu_and_mul_on(isa: Isa, out: &mut [f32], gate_up: &[f32], inter: usize) {
    let rows = gate_up.len() / (2 * inter).max(1);
    let n = out.len().min(rows * inter);
    for_row_blocks(&mut out[..n], inter, |r0, o| {
        for (i, o) in o.chunks_mut(inter).enumerate() {
            let (gate, up) = gate_up[(r0 + i) * 2 * inter..][..2 * inter].split_at(inter);
            silu_mul_row_on(isa, o, gate, up);
        }
    });
}

/// `out[j] = silu(gate[j]) * up[j]`: one row of `silu_and_mul` on `isa`'s lane code.
fn silu_mul_row_on(isa: Isa, out: &mut [f32], gate: &[f32], up: &[f32]) {
    match isa {
        // SAFETY: the path's features were checked when `isa` was chosen.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Amx => unsafe { silu_mul_avx512(out, gate, up) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { silu_mul_avx2(out, gate, up) },
        _ => silu_mul_scalar(out, gate, up),
    }
}

/// `out[r, j] = silu(src[r, j]) * src[r, width + j]` for `rows` rows: the epilogue of the
/// fused gate/up projection (`packed_fused`), whose scratch rows are `[gate | up]` slices
/// of `width`. The same per-lane code as `silu_and_mul`, so the same bits when `width` is a
/// multiple of the vector width.
///
/// # Safety
/// `isa` is supported; `out` covers `rows` rows of `out_stride` with `width` writable
/// elements each, which no other thread touches; `src` holds `rows` rows of `src_stride`
/// elements, each at least `2 * width`.
pub(crate) unsafe fn silu_mul_rows_on(
    isa: Isa,
    rows: usize,
    width: usize,
    (out, out_stride): (*mut f32, usize),
    (src, src_stride): (&[f32], usize),
) {
    for r in 0..rows {
        let o = std::slice::from_raw_parts_mut(out.add(r * out_stride), width);
        let (gate, up) = src[r * src_stride..][..2 * width].split_at(width);
        silu_mul_row_on(isa, o, gate, up);
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

/// `silu_mul_avx2` sixteen lanes at a time, the tail through masked loads and stores (the
/// same bits as the AVX2 path: `exp512` is `exp256` widened).
///
/// # Safety
/// The CPU has the `Avx512` path's features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn silu_mul_avx512(out: &mut [f32], gate: &[f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = out.len().min(gate.len()).min(up.len());
    let one = _mm512_set1_ps(1.0);
    let zero = _mm512_setzero_ps();
    let mut i = 0;
    while i < n {
        let left = n - i;
        let mask = super::simd::lanes16(left);
        let a = _mm512_maskz_loadu_ps(mask, gate.as_ptr().add(i));
        let e = super::simd::exp512(_mm512_sub_ps(zero, a));
        let silu = _mm512_div_ps(a, _mm512_add_ps(one, e));
        let r = _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(mask, up.as_ptr().add(i)));
        _mm512_mask_storeu_ps(out.as_mut_ptr().add(i), mask, r);
        i += 16;
    }
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
        self.apply_on(isa::selected(), x, positions, num_heads)
    }

    /// `apply` on a given path.
    pub fn apply_on(&self, isa: Isa, x: &mut [f32], positions: &[usize], num_heads: usize) {
        let row = num_heads * 2 * self.half;
        for_row_blocks(&mut x[..positions.len() * row], row, |t0, v| {
            for (i, v) in v.chunks_mut(row).enumerate() {
                self.apply_token_on(isa, v, positions[t0 + i]);
            }
        });
    }

    /// Rotates every head of one token's row (`[num_heads, 2 * half]`) at position `pos`.
    pub(crate) fn apply_token_on(&self, isa: Isa, x: &mut [f32], pos: usize) {
        let c = &self.cos[pos * self.half..(pos + 1) * self.half];
        let s = &self.sin[pos * self.half..(pos + 1) * self.half];
        rotate_on(isa, x, c, s);
    }
}

vectorized!(fn rotate_on(x: &mut [f32], c: &[f32], s: &[f32]) => rotate_lanes);

/// Every head of a row (`[heads, 2 * c.len()]`) rotated by the angles whose cosines and sines
/// are `c` and `s`.
#[inline(always)]
fn rotate_lanes(x: &mut [f32], c: &[f32], s: &[f32]) {
    let half = c.len();
    for v in x.chunks_mut(2 * half) {
        let (a, b) = v.split_at_mut(half);
        for i in 0..half {
            let (x1, x2) = (a[i], b[i]);
            a[i] = x1 * c[i] - x2 * s[i];
            b[i] = x2 * c[i] + x1 * s[i];
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
