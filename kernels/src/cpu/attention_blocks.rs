//! Prefill attention by query blocks, on AVX-512: one task attends a block of consecutive
//! query tokens of one sequence, for all query heads of one KV head.
//!
//! Why: the per-token kernel (`attention_pages`) reads every K and V row once per query
//! token and reduces each dot product horizontally. In a prefill step that is most of the
//! attention time: a 2,048-token step (16 prompts of 128) spent ~117 ms of ~590 ms in paged
//! attention on the AMX Xeon (benches/RESULTS.md), at a fraction of the FMA peak. Here the
//! rows of a block (its tokens times the GQA group's query heads, up to `MAX_ROWS`) share
//! every K and V row loaded, as a small GEMM per chunk of keys:
//! - the block's queries are transposed once, pre-scaled, into `qt[d][row]`, so a chunk's
//!   scores come out as `s[key][row]`, vectors over rows: each K element, broadcast, feeds
//!   up to four row vectors, and no dot product is reduced horizontally;
//! - the online softmax runs down the key axis on the same row vectors (running max and sum
//!   per row, one rescale per chunk), the causal mask a compare of key index and row position;
//! - the weighted V sum broadcasts each weight against V rows, four rows by up to 64 columns
//!   of the head dim in registers.
//!
//! K and V of a chunk (up to `KEY_CHUNK` keys, read through the block table) are widened to
//! f32 once into a per-thread scratch that every row of the block reuses.
//!
//! Measured (`cpu-attention`, prefill 16 x 128 over 30 layers, f16 cache, the AMX Xeon,
//! alternated with the per-token kernel): 131-141 ms -> 72-80 ms. What is left, by perf:
//! the two FMA loops ~55 %, widening the chunk's K and V ~15 % (its loads wait on L2),
//! the softmax ~10 %, the output rows' stores ~5-10 %.
//!
//! A row's result depends only on its query, its position and the cache, never on which
//! block, chunk or batch it came in: each lane's sums run in the same order whatever the other
//! lanes hold, and key chunks start at multiples of `KEY_CHUNK` from the sequence's start.

// Register-blocked loops index several arrays (rows, keys, accumulators) in lockstep.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::attention_avx512::Lanes512;
use super::kv_store::KvElem;
use super::simd::exp512;
use crate::layout::KvLayout;

/// Most rows (query tokens × query heads of one KV head) in a block: four row vectors.
const MAX_ROWS: usize = 64;
/// Most query tokens in a block (a group of one or two heads would otherwise take 64 or 32).
const MAX_TOKENS: usize = 16;
/// Keys per online-softmax step: their K and V (f32, 16 KiB each at head dim 64) and scores
/// stay in L1 and L2 while every row of the block uses them.
const KEY_CHUNK: usize = 64;
/// Zero key rows past a chunk's end, so the score loop may run whole passes of keys.
const KEY_PAD: usize = 8;
/// Chunks with fewer query tokens take the per-token kernel (a decode, a short tail).
pub(crate) const MIN_QUERY_LEN: usize = 4;

/// Query tokens per block for a GQA group of `group` query heads.
pub(crate) fn tokens_per_block(group: usize) -> usize {
    (MAX_ROWS / group.max(1)).clamp(1, MAX_TOKENS)
}

/// One block: `tokens` consecutive query tokens of one sequence, at rows `t0..` of the
/// batch and positions `p0..`, against the pages of `table`, for KV head `kv_head`.
pub(crate) struct QueryBlock<'a> {
    pub t0: usize,
    pub tokens: usize,
    pub p0: usize,
    pub kv_head: usize,
    pub table: &'a [u32],
}

/// The batch's queries, caches and shape, shared by every block.
pub(crate) struct BlockInputs<'a, E> {
    /// `[num_tokens, num_heads, head_dim]`.
    pub q: &'a [f32],
    pub k_cache: &'a [E],
    pub v_cache: &'a [E],
    pub layout: &'a KvLayout,
    pub group: usize,
    pub scale: f32,
}

/// The per-thread working set of a block (see the module doc for each array's layout).
#[derive(Default)]
struct Scratch {
    qt: Vec<f32>,
    kf: Vec<f32>,
    vf: Vec<f32>,
    s: Vec<f32>,
    o: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Attention of block `b`, written to its rows of `out` (`[num_tokens, num_heads,
/// head_dim]`, as `x.q`): `out[t, h] = softmax(q[t, h] · K[0..=p]ᵀ · scale) · V[0..=p]`.
///
/// # Safety
/// The CPU has the `Avx512` path's features; `head_dim % 16 == 0`, `group <= 64`; `out`
/// is valid for the batch's rows, and no other thread writes this block's (token, KV head)
/// spans while it runs.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
pub(crate) unsafe fn attend_block<E: KvElem + Lanes512>(
    out: *mut f32,
    x: &BlockInputs<E>,
    b: &QueryBlock,
) {
    let (hd, group) = (x.layout.head_dim, x.group);
    let rows = b.tokens * group;
    debug_assert!(rows <= MAX_ROWS && hd.is_multiple_of(16));
    let rv = rows.div_ceil(16);
    let rp = rv * 16;
    SCRATCH.with_borrow_mut(|sc| {
        sc.qt.resize(hd * MAX_ROWS, 0.0);
        sc.kf.resize((KEY_CHUNK + KEY_PAD) * hd, 0.0);
        sc.vf.resize(KEY_CHUNK * hd, 0.0);
        sc.s.resize((KEY_CHUNK + KEY_PAD) * MAX_ROWS, 0.0);
        sc.o.resize(MAX_ROWS * hd, 0.0);
        // Where row `r` (token `r / group`, head `r % group` of the KV head's group) starts
        // in `q` and `out`.
        let row_len = x.layout.num_kv_heads * group * hd;
        let row_at = |r: usize| (b.t0 + r / group) * row_len + (b.kv_head * group + r % group) * hd;
        // Queries, transposed and scaled, sixteen rows by sixteen columns at a time;
        // padding rows are zero.
        let zero = _mm512_setzero_ps();
        let scale = _mm512_set1_ps(x.scale);
        for v in 0..rv {
            for d0 in (0..hd).step_by(16) {
                let tile: [__m512; 16] = std::array::from_fn(|j| {
                    let r = v * 16 + j;
                    if r < rows {
                        let at = row_at(r) + d0;
                        _mm512_mul_ps(_mm512_loadu_ps(x.q[at..at + 16].as_ptr()), scale)
                    } else {
                        zero
                    }
                });
                let cols = transpose16(tile);
                for j in 0..16 {
                    _mm512_storeu_ps(sc.qt.as_mut_ptr().add((d0 + j) * rp + v * 16), cols[j]);
                }
            }
        }
        sc.o[..rp * hd].fill(0.0);
        // Each row's position (padding rows take the block's last), its running max and sum.
        let mut pos = [0i32; MAX_ROWS];
        for r in 0..rp {
            pos[r] = (b.p0 + (r / group).min(b.tokens - 1)) as i32;
        }
        let mut max = [f32::NEG_INFINITY; MAX_ROWS];
        let mut sum = [0f32; MAX_ROWS];
        let last = b.p0 + b.tokens - 1;
        for c0 in (0..=last).step_by(KEY_CHUNK) {
            let n = (last + 1 - c0).min(KEY_CHUNK);
            load_chunk(sc, x, b, c0, n);
            let sargs = (&mut sc.s[..], &sc.qt[..], &sc.kf[..], &pos, n, hd, c0);
            match rv {
                1 => scores::<1, 8>(sargs),
                2 => scores::<2, 8>(sargs),
                3 => scores::<3, 8>(sargs),
                _ => scores::<4, 6>(sargs),
            }
            let mut rescale = [0f32; MAX_ROWS];
            softmax_step(&mut sc.s, rp, n, &mut max, &mut sum, &mut rescale);
            let mut c = 0;
            while c < hd {
                let cb = ((hd - c) / 16).min(4);
                let vargs = (
                    &mut sc.o[..],
                    &sc.s[..],
                    &sc.vf[..],
                    &rescale,
                    rows,
                    rp,
                    n,
                    hd,
                    c,
                );
                match cb {
                    1 => weighted_v::<1>(vargs),
                    2 => weighted_v::<2>(vargs),
                    3 => weighted_v::<3>(vargs),
                    _ => weighted_v::<4>(vargs),
                }
                c += cb * 16;
            }
        }
        for r in 0..rows {
            let inv = _mm512_set1_ps(1.0 / sum[r]);
            let dst = out.add(row_at(r));
            let src = sc.o.as_ptr().add(r * hd);
            for d in (0..hd).step_by(16) {
                _mm512_storeu_ps(dst.add(d), _mm512_mul_ps(_mm512_loadu_ps(src.add(d)), inv));
            }
        }
    });
}

/// K and V of keys `c0..c0 + n`, widened to f32 (`kf`, `vf`: `[key][d]`); K rows past `n`
/// up to the padding are zeroed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn load_chunk<E: KvElem + Lanes512>(
    sc: &mut Scratch,
    x: &BlockInputs<E>,
    b: &QueryBlock,
    c0: usize,
    n: usize,
) {
    let (hd, bs) = (x.layout.head_dim, x.layout.block_size);
    let row_at =
        |key: usize| x.layout.tile(b.table[key / bs] as usize, b.kv_head) + (key % bs) * hd;
    for k in 0..n {
        let key = c0 + k;
        let at = row_at(key);
        let (ks, vs) = (&x.k_cache[at..at + hd], &x.v_cache[at..at + hd]);
        let (kd, vd) = (
            sc.kf.as_mut_ptr().add(k * hd),
            sc.vf.as_mut_ptr().add(k * hd),
        );
        for d in (0..hd).step_by(16) {
            _mm512_storeu_ps(kd.add(d), E::load16(ks.as_ptr().add(d)));
            _mm512_storeu_ps(vd.add(d), E::load16(vs.as_ptr().add(d)));
        }
    }
    sc.kf[n * hd..(n + KEY_PAD) * hd].fill(0.0);
}

/// Scores, their transposed queries, K rows, row positions, keys, head dim, first key.
type ScoreArgs<'a> = (
    &'a mut [f32],
    &'a [f32],
    &'a [f32],
    &'a [i32; MAX_ROWS],
    usize,
    usize,
    usize,
);

/// `s[k][r] = qt[·][r] · kf[k]` for the chunk's `n` keys and `RV` row vectors, `KP` keys per
/// pass (`RV * KP` accumulators), `-inf` where key `c0 + k` lies past row `r`'s position.
/// Up to `KP - 1` key rows past `n` are written too (the padding).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn scores<const RV: usize, const KP: usize>(a: ScoreArgs) {
    let (s, qt, kf, pos, n, hd, c0) = a;
    let rp = RV * 16;
    let posv: [__m512i; RV] =
        std::array::from_fn(|v| _mm512_loadu_si512(pos.as_ptr().add(v * 16) as *const _));
    let (sp, qp, kp) = (s.as_mut_ptr(), qt.as_ptr(), kf.as_ptr());
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut k0 = 0;
    while k0 < n {
        let mut acc = [[_mm512_setzero_ps(); RV]; KP];
        for d in 0..hd {
            let qv: [__m512; RV] =
                std::array::from_fn(|v| _mm512_loadu_ps(qp.add(d * rp + v * 16)));
            for j in 0..KP {
                let kb = _mm512_set1_ps(*kp.add((k0 + j) * hd + d));
                for v in 0..RV {
                    acc[j][v] = _mm512_fmadd_ps(qv[v], kb, acc[j][v]);
                }
            }
        }
        for j in 0..KP {
            let key = _mm512_set1_epi32((c0 + k0 + j) as i32);
            for v in 0..RV {
                let seen = _mm512_cmpge_epi32_mask(posv[v], key);
                let out = _mm512_mask_mov_ps(neg_inf, seen, acc[j][v]);
                _mm512_storeu_ps(sp.add((k0 + j) * rp + v * 16), out);
            }
        }
        k0 += KP;
    }
}

/// One online-softmax step over a chunk's `n` keys of scores `s` (`[key][rp]`): the new
/// running max per row, `s` turned into weights `exp(s - max)` (zero where masked), the
/// running sums updated, and `rescale[r]`, what the rows' output so far must be multiplied by.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn softmax_step(
    s: &mut [f32],
    rp: usize,
    n: usize,
    max: &mut [f32; MAX_ROWS],
    sum: &mut [f32; MAX_ROWS],
    rescale: &mut [f32; MAX_ROWS],
) {
    let sp = s.as_mut_ptr();
    let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
    for v in (0..rp).step_by(16) {
        let mut cmax = neg_inf;
        for k in 0..n {
            cmax = _mm512_max_ps(cmax, _mm512_loadu_ps(sp.add(k * rp + v)));
        }
        let old = _mm512_loadu_ps(max.as_ptr().add(v));
        // Key 0 is in every row's first chunk, so `new` is finite from then on and
        // `old - new` is `-inf` (a factor of ~0 on an output and sum still zero) or finite.
        let new = _mm512_max_ps(old, cmax);
        let r = exp512(_mm512_sub_ps(old, new));
        let mut total = _mm512_setzero_ps();
        for k in 0..n {
            let p = sp.add(k * rp + v);
            let x = _mm512_loadu_ps(p);
            let seen = _mm512_cmp_ps_mask::<_CMP_NEQ_OQ>(x, neg_inf);
            let w = _mm512_maskz_mov_ps(seen, exp512(_mm512_sub_ps(x, new)));
            _mm512_storeu_ps(p, w);
            total = _mm512_add_ps(total, w);
        }
        let old_sum = _mm512_loadu_ps(sum.as_ptr().add(v));
        _mm512_storeu_ps(sum.as_mut_ptr().add(v), _mm512_fmadd_ps(old_sum, r, total));
        _mm512_storeu_ps(max.as_mut_ptr().add(v), new);
        _mm512_storeu_ps(rescale.as_mut_ptr().add(v), r);
    }
}

/// Output, weights, V rows, rescales, rows, padded rows, keys, head dim, first column.
type VArgs<'a> = (
    &'a mut [f32],
    &'a [f32],
    &'a [f32],
    &'a [f32; MAX_ROWS],
    usize,
    usize,
    usize,
    usize,
    usize,
);

/// Rows of output taken together: each V slice loaded feeds all of them.
const ROWS_PER_PASS: usize = 4;

/// `o[r][c..c + 16 CB] = o[r][..] · rescale[r] + Σ_k s[k][r] · vf[k][..]` for every real
/// row: `ROWS_PER_PASS * CB` accumulators in registers across the chunk's keys.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn weighted_v<const CB: usize>(a: VArgs) {
    let (o, s, vf, rescale, rows, rp, n, hd, c) = a;
    let (op, sp, vp) = (o.as_mut_ptr().add(c), s.as_ptr(), vf.as_ptr().add(c));
    for r0 in (0..rows).step_by(ROWS_PER_PASS) {
        let mut acc = [[_mm512_setzero_ps(); CB]; ROWS_PER_PASS];
        for i in 0..ROWS_PER_PASS {
            let f = _mm512_set1_ps(rescale[r0 + i]);
            for cb in 0..CB {
                acc[i][cb] = _mm512_mul_ps(_mm512_loadu_ps(op.add((r0 + i) * hd + cb * 16)), f);
            }
        }
        for k in 0..n {
            let v: [__m512; CB] =
                std::array::from_fn(|cb| _mm512_loadu_ps(vp.add(k * hd + cb * 16)));
            for i in 0..ROWS_PER_PASS {
                let w = _mm512_set1_ps(*sp.add(k * rp + r0 + i));
                for cb in 0..CB {
                    acc[i][cb] = _mm512_fmadd_ps(w, v[cb], acc[i][cb]);
                }
            }
        }
        for i in 0..ROWS_PER_PASS {
            for cb in 0..CB {
                _mm512_storeu_ps(op.add((r0 + i) * hd + cb * 16), acc[i][cb]);
            }
        }
    }
}

/// The 16 x 16 transpose of `r` (row `i` of the result is column `i` of `r`): pairs of rows
/// interleaved by 32 bits, then 64, then by 128-bit lanes twice.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16,avx2,fma,f16c")]
unsafe fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // `u[4g + j]`: rows 4g..4g + 4 of columns j, j + 4, j + 8, j + 12, one per 128-bit lane.
    let mut u = [_mm512_setzero_ps(); 16];
    for g in 0..4 {
        u[4 * g] = _mm512_shuffle_ps::<0x44>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 1] = _mm512_shuffle_ps::<0xEE>(t[4 * g], t[4 * g + 2]);
        u[4 * g + 2] = _mm512_shuffle_ps::<0x44>(t[4 * g + 1], t[4 * g + 3]);
        u[4 * g + 3] = _mm512_shuffle_ps::<0xEE>(t[4 * g + 1], t[4 * g + 3]);
    }
    let mut out = [_mm512_setzero_ps(); 16];
    for j in 0..4 {
        let v0 = _mm512_shuffle_f32x4::<0x88>(u[j], u[4 + j]);
        let v1 = _mm512_shuffle_f32x4::<0xDD>(u[j], u[4 + j]);
        let v2 = _mm512_shuffle_f32x4::<0x88>(u[8 + j], u[12 + j]);
        let v3 = _mm512_shuffle_f32x4::<0xDD>(u[8 + j], u[12 + j]);
        out[j] = _mm512_shuffle_f32x4::<0x88>(v0, v2);
        out[j + 8] = _mm512_shuffle_f32x4::<0xDD>(v0, v2);
        out[j + 4] = _mm512_shuffle_f32x4::<0x88>(v1, v3);
        out[j + 12] = _mm512_shuffle_f32x4::<0xDD>(v1, v3);
    }
    out
}
