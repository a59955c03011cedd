//! CPU kernels against naive float64 references on random inputs.

use half::f16;
use kernels::cpu::isa::Isa;
use kernels::cpu::{self, AttentionElem, KvStore, SeqChunk};
use kernels::KvLayout;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

mod common;
use common::{max_abs_diff, naive_attention, randv};

#[test]
fn paged_attention_matches_contiguous_f64_attention() {
    paged_attention_matches_reference::<f32>();
}

/// An f16 cache against the same f64 reference, given the f16-rounded K and V: what is
/// left to differ is the kernel's arithmetic, not the storage's rounding.
#[test]
fn paged_attention_over_an_f16_cache_matches_f64_attention() {
    paged_attention_matches_reference::<f16>();
}

/// On every ISA path this CPU has, against one reference per case.
fn paged_attention_matches_reference<E: AttentionElem>() {
    let mut rng = StdRng::seed_from_u64(1);
    // 24 takes the portable path on every ISA (not a multiple of 16); 16, 32, 64 and 144
    // the vector kernels (one to nine 16-wide slices of the head dim: the AVX-512 V sum
    // holds four at a time). Groups of 1 to 5 query heads per KV head (the kernels take
    // heads in batches of up to four, scores for up to three at once).
    for (&hd, &bs) in [24usize, 16, 32, 64, 144]
        .iter()
        .flat_map(|hd| [1usize, 8, 16, 64, 256].iter().map(move |bs| (hd, bs)))
    {
        for &(heads, kv_heads) in &[(4usize, 4usize), (6, 2), (8, 1), (9, 3), (10, 2), (4, 1)] {
            // Two sequences in one batch: one decode-like, one chunk of a longer prompt.
            let chunks = [
                (1usize, rng.random_range(1..300usize)),
                (rng.random_range(1..300usize), 0usize),
            ];
            let chunks = [
                (chunks[0].0, chunks[0].1 + 1),
                (chunks[1].0, chunks[1].0 + rng.random_range(0..100usize)),
            ];
            let blocks_needed: usize = chunks.iter().map(|&(_, c)| c.div_ceil(bs)).sum();
            let layout = KvLayout {
                num_blocks: blocks_needed + 3,
                num_kv_heads: kv_heads,
                block_size: bs,
                head_dim: hd,
            };
            let mut kc = vec![E::from_f32(f32::NAN); layout.elems()];
            let mut vc = vec![E::from_f32(f32::NAN); layout.elems()];
            // Pages handed out in a random order, as a real pool would.
            let mut pages: Vec<u32> = (0..layout.num_blocks as u32).collect();
            pages.shuffle(&mut rng);
            let mut tables = vec![];
            let mut contexts = vec![];
            let mut q_all = vec![];
            for &(q_len, ctx) in &chunks {
                let table: Vec<u32> = pages.drain(..ctx.div_ceil(bs)).collect();
                let k = randv(&mut rng, ctx * kv_heads * hd);
                let v = randv(&mut rng, ctx * kv_heads * hd);
                let slots: Vec<i64> = (0..ctx).map(|p| layout.slot(&table, p) as i64).collect();
                cpu::write_kv(&mut kc, &mut vc, &layout, &k, &v, &slots);
                q_all.extend(randv(&mut rng, q_len * heads * hd));
                tables.push(table);
                // What the cache holds: K and V rounded to its element type.
                let stored = |x: Vec<f32>| -> Vec<f32> {
                    x.into_iter().map(|x| E::from_f32(x).to_f32()).collect()
                };
                contexts.push((stored(k), stored(v)));
            }
            let mut seqs = vec![];
            let mut start = 0;
            for (i, &(q_len, ctx)) in chunks.iter().enumerate() {
                seqs.push(SeqChunk {
                    query_start: start,
                    query_len: q_len,
                    context_len: ctx,
                    block_table: &tables[i],
                });
                start += q_len;
            }
            let scale = 1.0 / (hd as f64).sqrt();
            let mut row = 0;
            let mut want = vec![];
            for (i, &(q_len, ctx)) in chunks.iter().enumerate() {
                let (k, v) = &contexts[i];
                let q = &q_all[row * heads * hd..(row + q_len) * heads * hd];
                want.extend(naive_attention(
                    q, k, v, q_len, ctx, heads, kv_heads, hd, scale,
                ));
                row += q_len;
            }
            for isa in Isa::available() {
                let mut out = vec![f32::NAN; start * heads * hd];
                cpu::paged_attention_on(
                    isa,
                    &mut out,
                    &q_all,
                    &kc,
                    &vc,
                    &layout,
                    heads,
                    &seqs,
                    scale as f32,
                );
                let err = max_abs_diff(&out, &want);
                assert!(
                    err < 1e-5,
                    "{isa} {:?} hd {hd} bs {bs} heads {heads}/{kv_heads} {chunks:?}: {err}",
                    E::DTYPE
                );
            }
        }
    }
}

#[test]
fn linear_matches_f64_matmul() {
    let mut rng = StdRng::seed_from_u64(2);
    for &(m, k, n) in &[(1usize, 64usize, 48usize), (7, 576, 192), (130, 96, 1536)] {
        let x = randv(&mut rng, m * k);
        let w = randv(&mut rng, n * k);
        let mut out = vec![f32::NAN; m * n];
        cpu::linear(&mut out, &x, &w, m, k, n);
        for i in 0..m {
            for j in 0..n {
                let want: f64 = (0..k)
                    .map(|t| x[i * k + t] as f64 * w[j * k + t] as f64)
                    .sum();
                assert!((out[i * n + j] as f64 - want).abs() < 1e-4, "{m}x{k}x{n}");
            }
        }
    }
}

/// Norm, residual add, SiLU-and-mul and RoPE on every ISA path, for ragged shapes: rows
/// 1..300, widths that are not multiples of the vector widths, and sizes on both sides of
/// the threshold above which rows are split over threads.
#[test]
fn norm_activation_and_rope_match_f64_on_every_path() {
    let mut rng = StdRng::seed_from_u64(3);
    for isa in Isa::available() {
        for &(rows, dim) in &[(3usize, 64usize), (1, 13), (7, 577), (300, 250), (129, 576)] {
            let x = randv(&mut rng, rows * dim);
            let w = randv(&mut rng, dim);
            let mut out = vec![f32::NAN; rows * dim];
            cpu::ops::rms_norm_on(isa, &mut out, &x, &w, 1e-5);
            for t in 0..rows {
                let r = &x[t * dim..(t + 1) * dim];
                let ms: f64 = r.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
                for i in 0..dim {
                    let want = r[i] as f64 / (ms + 1e-5).sqrt() * w[i] as f64;
                    let got = out[t * dim + i] as f64;
                    assert!((got - want).abs() < 1e-5 * (1.0 + want.abs()), "{isa} norm");
                }
            }
            let y = randv(&mut rng, rows * dim);
            let mut sum = x.clone();
            cpu::ops::add_inplace_on(isa, &mut sum, &y);
            assert!(
                sum.iter()
                    .zip(x.iter().zip(&y))
                    .all(|(s, (a, b))| *s == a + b),
                "{isa} add"
            );
            // SiLU-and-mul: gates spread to ±30, `dim` columns per row (vector body and
            // tail).
            let gu: Vec<f32> = randv(&mut rng, rows * 2 * dim)
                .iter()
                .map(|v| v * 30.0)
                .collect();
            let mut act = vec![f32::NAN; rows * dim];
            cpu::ops::silu_and_mul_on(isa, &mut act, &gu, dim);
            for t in 0..rows {
                for i in 0..dim {
                    let g = gu[t * 2 * dim + i] as f64;
                    let want = g / (1.0 + (-g).exp()) * gu[t * 2 * dim + dim + i] as f64;
                    let got = act[t * dim + i] as f64;
                    assert!(
                        (got - want).abs() < 1e-6 * (1.0 + want.abs()),
                        "{isa}: {got} vs {want}"
                    );
                }
            }
        }
        // RoPE: element i pairs with i + half, angle pos / theta^(2i / hd); head dims 8 and
        // 72 (not a multiple of 16), 1 to 300 tokens of 3 heads.
        for &(hd, tokens) in &[(8usize, 2usize), (72, 1), (72, 300), (64, 130)] {
            let heads = 3;
            let rope = cpu::Rope::new(hd, 10000.0, 512, None);
            let orig = randv(&mut rng, tokens * heads * hd);
            let positions: Vec<usize> = (0..tokens).map(|t| (t * 37 + 5) % 512).collect();
            let mut v = orig.clone();
            rope.apply_on(isa, &mut v, &positions, heads);
            let half = hd / 2;
            for (t, &pos) in positions.iter().enumerate() {
                for h in 0..heads {
                    let base = (t * heads + h) * hd;
                    for i in 0..half {
                        let a = pos as f64 / 10000f64.powf(2.0 * i as f64 / hd as f64);
                        let (x1, x2) = (orig[base + i] as f64, orig[base + half + i] as f64);
                        let (w1, w2) = (x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin());
                        assert!((v[base + i] as f64 - w1).abs() < 1e-5, "{isa} rope");
                        assert!((v[base + half + i] as f64 - w2).abs() < 1e-5, "{isa} rope");
                    }
                }
            }
        }
    }
}

#[test]
fn llama3_scaling_leaves_high_frequencies_and_divides_low_ones() {
    let s = cpu::Llama3Scaling {
        factor: 8.0,
        low_freq_factor: 1.0,
        high_freq_factor: 4.0,
        original_max_position: 8192.0,
    };
    let plain = cpu::Rope::new(128, 500000.0, 2, None);
    let scaled = cpu::Rope::new(128, 500000.0, 2, Some(s));
    let (mut a, mut b) = (vec![1.0f32; 128], vec![1.0f32; 128]);
    plain.apply(&mut a, &[1], 1);
    scaled.apply(&mut b, &[1], 1);
    // The highest frequency (i = 0) is untouched; the lowest is divided by the factor.
    assert_eq!(a[0], b[0]);
    let low = 500000f64.powf(-126.0 / 128.0);
    let want = (1.0 * (low / 8.0).cos() - 1.0 * (low / 8.0).sin()) as f32;
    assert!((b[63] - want).abs() < 1e-6);
}

/// The fused split + RoPE + cache write gives what the separate steps give (RoPE checked
/// against f64 above, `write_kv` below), bit for bit, for 1 to 300 tokens (the parallel
/// path too) with padding slots, in f32 and f16 caches.
#[test]
fn fused_qkv_rope_write_matches_the_separate_steps() {
    fused_matches::<f32>();
    fused_matches::<f16>();
}

fn fused_matches<E: AttentionElem + PartialEq + std::fmt::Debug>() {
    let mut rng = StdRng::seed_from_u64(5);
    let (heads, kv_heads, hd) = (9usize, 3usize, 64usize);
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let rope = cpu::Rope::new(hd, 10000.0, 1024, None);
    for t in [1usize, 7, 300] {
        let layout = KvLayout {
            num_blocks: 40,
            num_kv_heads: kv_heads,
            block_size: 16,
            head_dim: hd,
        };
        let qkv = randv(&mut rng, t * (qd + 2 * kvd));
        let positions: Vec<usize> = (0..t).map(|i| (i * 3 + 1) % 1024).collect();
        // Distinct slots, every fifth token padding.
        let mut slots: Vec<i64> = (0..layout.num_blocks as i64 * 16).collect();
        slots.shuffle(&mut rng);
        let slots: Vec<i64> = (0..t)
            .map(|i| if i % 5 == 4 { -1 } else { slots[i] })
            .collect();
        let mut q = vec![f32::NAN; t * qd];
        let mut kc = vec![E::from_f32(0.5); layout.elems()];
        let mut vc = kc.clone();
        cpu::qkv_rope_write_kv(
            &mut q, &qkv, &rope, &positions, heads, &layout, &mut kc, &mut vc, &slots,
        );
        let (mut q2, mut k2, mut v2) = (vec![], vec![], vec![]);
        for r in qkv.chunks(qd + 2 * kvd) {
            q2.extend_from_slice(&r[..qd]);
            k2.extend_from_slice(&r[qd..qd + kvd]);
            v2.extend_from_slice(&r[qd + kvd..]);
        }
        rope.apply(&mut q2, &positions, heads);
        rope.apply(&mut k2, &positions, kv_heads);
        let mut kc2 = vec![E::from_f32(0.5); layout.elems()];
        let mut vc2 = kc2.clone();
        cpu::write_kv(&mut kc2, &mut vc2, &layout, &k2, &v2, &slots);
        assert_eq!(q, q2, "{t} tokens: q");
        assert!(kc == kc2 && vc == vc2, "{t} tokens: cache");
    }
}

/// Two tokens with one slot would race on the parallel path: refused in every build.
#[test]
fn fused_qkv_rope_write_refuses_a_shared_slot() {
    let (heads, kv_heads, hd) = (2usize, 1usize, 8usize);
    let layout = KvLayout {
        num_blocks: 8,
        num_kv_heads: kv_heads,
        block_size: 4,
        head_dim: hd,
    };
    let rope = cpu::Rope::new(hd, 10000.0, 64, None);
    let t = 20;
    let qkv = vec![0.25f32; t * (heads + 2 * kv_heads) * hd];
    let positions: Vec<usize> = (0..t).collect();
    // Distinct but unordered slots pass (padding anywhere); one repeat panics.
    let ok: Vec<i64> = (0..t as i64)
        .map(|i| {
            if i == 3 {
                -1
            } else {
                15 - i % 16 + 16 * (i / 16)
            }
        })
        .collect();
    let mut bad = ok.clone();
    bad[19] = bad[2];
    for (slots, refused) in [(ok, false), (bad, true)] {
        let r = std::panic::catch_unwind(|| {
            let mut q = vec![0f32; t * heads * hd];
            let mut kc = vec![0f32; layout.elems()];
            let mut vc = kc.clone();
            cpu::qkv_rope_write_kv(
                &mut q, &qkv, &rope, &positions, heads, &layout, &mut kc, &mut vc, &slots,
            );
        });
        assert_eq!(r.is_err(), refused, "{slots:?}");
    }
}

#[test]
fn cache_ops_copy_pages_and_skip_padding() {
    let layout = KvLayout {
        num_blocks: 3,
        num_kv_heads: 2,
        block_size: 2,
        head_dim: 2,
    };
    let mut k = vec![0.0; layout.elems()];
    let mut v = vec![0.0; layout.elems()];
    let new: Vec<f32> = (1..=8).map(|x| x as f32).collect();
    cpu::write_kv(&mut k, &mut v, &layout, &new, &new, &[3, -1]);
    assert_eq!(
        &k[layout.offset(3, 0)..layout.offset(3, 0) + 2],
        &[1.0, 2.0]
    );
    assert_eq!(
        &k[layout.offset(3, 1)..layout.offset(3, 1) + 2],
        &[3.0, 4.0]
    );
    assert_eq!(
        k.iter().filter(|&&x| x != 0.0).count(),
        4,
        "padding row skipped"
    );
    cpu::copy_blocks(&mut k, &layout, &[(1, 2)]);
    assert_eq!(k[layout.offset(5, 1)], 3.0);
    let mut host = vec![0.0; layout.elems()];
    cpu::swap_blocks(&mut host, &k, &layout, &[(1, 0)]);
    assert_eq!(host[layout.offset(1, 0)], 1.0);
}

#[test]
fn f16_cache_ops_round_on_write_and_move_pages_unchanged() {
    let layout = KvLayout {
        num_blocks: 3,
        num_kv_heads: 1,
        block_size: 2,
        head_dim: 2,
    };
    // 1/3 is not an f16: the cache holds its nearest f16, 0.33325195.
    let new = [1.0 / 3.0, -2.5, 70000.0, 1e-8];
    let mut k = KvStore::zeros(layout.elems(), cpu::KvDtype::F16);
    let mut v = KvStore::zeros(layout.elems(), cpu::KvDtype::F16);
    if let (KvStore::F16(kc), KvStore::F16(vc)) = (&mut k, &mut v) {
        cpu::write_kv(kc, vc, &layout, &new, &new, &[2, 3]);
    }
    let at = |s: &KvStore, slot: usize, d: usize| s.get(layout.offset(slot, 0) + d);
    assert_eq!(at(&k, 2, 0), 0.333_251_95);
    assert_eq!(at(&k, 2, 1), -2.5);
    assert_eq!(at(&k, 3, 0), f32::INFINITY, "past f16's range");
    assert_eq!(at(&v, 3, 1), 0.0, "below f16's smallest subnormal");
    k.copy_blocks(&layout, &[(1, 0)]);
    assert_eq!(at(&k, 0, 0), 0.333_251_95);
    let mut host = KvStore::zeros(layout.elems(), cpu::KvDtype::F16);
    host.swap_from(&k, &layout, &[(1, 2)]);
    assert_eq!(at(&host, 4, 1), -2.5);
    assert_eq!(host.as_bytes().len(), 2 * layout.elems());
}
