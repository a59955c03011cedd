//! Cases for the cache, layer and sampling kernels, each against its CPU twin.

use super::{down, poisoned, to_f32, tolerance, twice, up, Check, Rng};
use crate::cpu;
use crate::cuda::launch::Device;
use crate::cuda::ops::{self, RopeShape};
use crate::cuda::GpuElem;
use crate::layout::KvLayout;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

pub fn run<D: Device, E: GpuElem>(dev: &D, push: &mut impl FnMut(Check)) {
    let tol = tolerance::<E>();
    let d = E::SUFFIX;
    let mut rng = Rng::new(7);

    // write_kv: strided K/V rows into random slots, some of them padding.
    let layout = KvLayout {
        num_blocks: 16,
        num_kv_heads: 2,
        block_size: 8,
        head_dim: 64,
    };
    let (n, row) = (20, 2 * 64);
    let stride = row + 32;
    let k_cache: Vec<E> = rng.vec(layout.elems(), 1.0);
    let v_cache: Vec<E> = rng.vec(layout.elems(), 1.0);
    let k: Vec<E> = rng.vec(n * stride, 1.0);
    let v: Vec<E> = rng.vec(n * stride, 1.0);
    let mut slots: Vec<i64> = (0..(layout.num_blocks * layout.block_size) as i64).collect();
    rng.shuffle(&mut slots);
    slots.truncate(n);
    for i in [0, 7, 19] {
        slots[i] = -1;
    }
    let (mut rk, mut rv) = (to_f32(&k_cache), to_f32(&v_cache));
    let pack = |x: &[E]| -> Vec<f32> {
        (0..n)
            .flat_map(|t| to_f32(&x[t * stride..t * stride + row]))
            .collect()
    };
    cpu::write_kv(&mut rk, &mut rv, &layout, &pack(&k), &pack(&v), &slots);
    rk.extend(rv);
    push(twice(
        dev,
        "write_kv",
        d,
        format!("{n} tokens, stride {stride}"),
        tol,
        &f64s(&rk),
        || {
            let (mut kc, mut vc) = (up(dev, &k_cache)?, up(dev, &v_cache)?);
            let (kd, vd, sd) = (up(dev, &k)?, up(dev, &v)?, up(dev, &slots)?);
            ops::write_kv(
                dev, &mut kc, &mut vc, &layout, &kd, &vd, stride, stride, &sd,
            )?;
            let mut o = to_f32(&down(dev, &kc)?);
            o.extend(to_f32(&down(dev, &vc)?));
            Ok(o)
        },
    ));

    // copy_blocks: two layers' K and V in one launch.
    let caches: Vec<Vec<E>> = (0..4).map(|_| rng.vec(layout.elems(), 1.0)).collect();
    let pairs = [(1u32, 5u32), (2, 6), (1, 7), (15, 0)];
    let mut reference = Vec::new();
    for c in &caches {
        let mut r = to_f32(c);
        cpu::copy_blocks(&mut r, &layout, &pairs);
        reference.extend(f64s(&r));
    }
    push(twice(
        dev,
        "copy_blocks",
        d,
        "2 layers, 4 pairs".into(),
        tol,
        &reference,
        || {
            let mut bufs = caches
                .iter()
                .map(|c| up(dev, c))
                .collect::<Result<Vec<_>, _>>()?;
            let mut refs: Vec<_> = bufs.iter_mut().collect();
            ops::copy_blocks(dev, &mut refs, &layout, &pairs)?;
            let mut o = Vec::new();
            for c in &bufs {
                o.extend(to_f32(&down(dev, c)?));
            }
            Ok(o)
        },
    ));

    for dim in [576, 4096] {
        let rows = 7;
        let x: Vec<E> = rng.vec(rows * dim, 2.0);
        let w: Vec<E> = rng.vec(dim, 1.0);
        let res: Vec<E> = rng.vec(rows * dim, 2.0);
        let mut r = vec![0.0; rows * dim];
        cpu::rms_norm(&mut r, &to_f32(&x), &to_f32(&w), 1e-5);
        push(twice(
            dev,
            "rms_norm",
            d,
            format!("{rows} x {dim}"),
            tol,
            &f64s(&r),
            || {
                let mut o = poisoned::<D, E>(dev, rows * dim)?;
                ops::rms_norm(dev, &mut o, &up(dev, &x)?, &up(dev, &w)?, 1e-5)?;
                Ok(to_f32(&down(dev, &o)?))
            },
        ));
        // The residual is rounded to E once; the norm reads the rounded value.
        let summed: Vec<E> = x
            .iter()
            .zip(&res)
            .map(|(a, b)| E::from_f32(a.to_f32() + b.to_f32()))
            .collect();
        let mut normed = vec![0.0; rows * dim];
        cpu::rms_norm(&mut normed, &to_f32(&summed), &to_f32(&w), 1e-5);
        let mut reference = f64s(&normed);
        reference.extend(f64s(&to_f32(&summed)));
        push(twice(
            dev,
            "fused_add_rms_norm",
            d,
            format!("{rows} x {dim}"),
            tol,
            &reference,
            || {
                let (mut xd, mut rd) = (up(dev, &x)?, up(dev, &res)?);
                ops::fused_add_rms_norm(dev, &mut xd, &mut rd, &up(dev, &w)?, 1e-5)?;
                let mut o = to_f32(&down(dev, &xd)?);
                o.extend(to_f32(&down(dev, &rd)?));
                Ok(o)
            },
        ));
    }

    for scaling in [
        None,
        Some(cpu::Llama3Scaling {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position: 64.0,
        }),
    ] {
        let (t, nh, nkv, hd) = (5, 9, 3, 64);
        let rope = cpu::Rope::new(hd, 10000.0, 300, scaling);
        let pos: Vec<i32> = (0..t).map(|_| rng.below(300) as i32).collect();
        let q: Vec<E> = rng.vec(t * nh * hd, 1.0);
        let k: Vec<E> = rng.vec(t * nkv * hd, 1.0);
        let (mut rq, mut rk) = (to_f32(&q), to_f32(&k));
        let upos: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
        rope.apply(&mut rq, &upos, nh);
        rope.apply(&mut rk, &upos, nkv);
        rq.extend(rk);
        let table = rope.cos_sin_table();
        let case = format!("{t} tokens, {nh}/{nkv} heads, llama3 {}", scaling.is_some());
        push(twice(dev, "rope", d, case, tol, &f64s(&rq), || {
            let (mut qd, mut kd) = (up(dev, &q)?, up(dev, &k)?);
            let shape = RopeShape {
                num_tokens: t,
                num_heads: nh,
                num_kv_heads: nkv,
                head_dim: hd,
                q_stride: nh * hd,
                k_stride: nkv * hd,
            };
            ops::rope(
                dev,
                &mut qd,
                &mut kd,
                &up(dev, &pos)?,
                &up(dev, &table)?,
                shape,
            )?;
            let mut o = to_f32(&down(dev, &qd)?);
            o.extend(to_f32(&down(dev, &kd)?));
            Ok(o)
        }));
    }

    let (rows, inter) = (3, 1536);
    let gu: Vec<E> = rng.vec(rows * 2 * inter, 4.0);
    let mut r = vec![0.0; rows * inter];
    cpu::silu_and_mul(&mut r, &to_f32(&gu), inter);
    push(twice(
        dev,
        "silu_and_mul",
        d,
        format!("{rows} x {inter}"),
        tol,
        &f64s(&r),
        || {
            let mut o = poisoned::<D, E>(dev, rows * inter)?;
            ops::silu_and_mul(dev, &mut o, &up(dev, &gu)?, inter)?;
            Ok(to_f32(&down(dev, &o)?))
        },
    ));

    // embedding, with one id outside the vocabulary (a zero row).
    let (vocab, dim) = (50, 64);
    let table: Vec<E> = rng.vec(vocab * dim, 1.0);
    let ids: Vec<i32> = vec![3, 49, 0, 3, 50];
    let mut r = vec![0.0; ids.len() * dim];
    cpu::embedding(&mut r[..4 * dim], &to_f32(&table), &[3, 49, 0, 3], dim);
    push(twice(
        dev,
        "embedding",
        d,
        "5 ids, one out of range".into(),
        tol,
        &f64s(&r),
        || {
            let mut o = poisoned::<D, E>(dev, ids.len() * dim)?;
            ops::embedding(dev, &mut o, &up(dev, &table)?, &up(dev, &ids)?, dim)?;
            Ok(to_f32(&down(dev, &o)?))
        },
    ));

    let x: Vec<E> = rng.vec(1000, 1.0);
    let y: Vec<E> = rng.vec(1000, 1.0);
    let r: Vec<f64> = x
        .iter()
        .zip(&y)
        .map(|(a, b)| (a.to_f32() + b.to_f32()) as f64)
        .collect();
    push(twice(dev, "add_inplace", d, "1000".into(), tol, &r, || {
        let mut xd = up(dev, &x)?;
        ops::add_inplace(dev, &mut xd, &up(dev, &y)?)?;
        Ok(to_f32(&down(dev, &xd)?))
    }));

    push(qkv_rope_write_kv_case::<D, E>(dev, &mut rng));

    let (rows, n) = (5, 96);
    let x: Vec<E> = rng.vec(rows * n, 1.0);
    let bias: Vec<E> = rng.vec(n, 1.0);
    let r: Vec<f64> = (0..rows * n)
        .map(|i| (x[i].to_f32() + bias[i % n].to_f32()) as f64)
        .collect();
    push(twice(
        dev,
        "add_bias",
        d,
        format!("{rows} x {n}"),
        tol,
        &r,
        || {
            let mut xd = up(dev, &x)?;
            ops::add_bias(dev, &mut xd, &up(dev, &bias)?)?;
            Ok(to_f32(&down(dev, &xd)?))
        },
    ));

    push(argmax_case::<D, E>(dev, &mut rng));
}

/// The fused split + RoPE + cache write against the CPU backend's three steps.
fn qkv_rope_write_kv_case<D: Device, E: GpuElem>(dev: &D, rng: &mut Rng) -> Check {
    let (t, nh) = (6, 9);
    let layout = KvLayout {
        num_blocks: 8,
        num_kv_heads: 3,
        block_size: 4,
        head_dim: 64,
    };
    let (hd, kvd) = (64, 3 * 64);
    let row = nh * hd + 2 * kvd;
    let rope = cpu::Rope::new(hd, 10000.0, 64, None);
    let table = rope.cos_sin_table();
    let qkv: Vec<E> = rng.vec(t * row, 1.0);
    let pos: Vec<i32> = (0..t).map(|_| rng.below(64) as i32).collect();
    let mut slots: Vec<i64> = (0..32).collect();
    rng.shuffle(&mut slots);
    slots.truncate(t);
    slots[2] = -1;
    let k_cache: Vec<E> = rng.vec(layout.elems(), 1.0);
    let v_cache: Vec<E> = rng.vec(layout.elems(), 1.0);
    let x = to_f32(&qkv);
    let (mut q, mut k, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for r in x.chunks(row) {
        q.extend_from_slice(&r[..nh * hd]);
        k.extend_from_slice(&r[nh * hd..nh * hd + kvd]);
        v.extend_from_slice(&r[nh * hd + kvd..]);
    }
    let upos: Vec<usize> = pos.iter().map(|&p| p as usize).collect();
    rope.apply(&mut q, &upos, nh);
    rope.apply(&mut k, &upos, layout.num_kv_heads);
    let (mut kc, mut vc) = (to_f32(&k_cache), to_f32(&v_cache));
    cpu::write_kv(&mut kc, &mut vc, &layout, &k, &v, &slots);
    let mut reference = f64s(&q);
    reference.extend(f64s(&kc));
    reference.extend(f64s(&vc));
    let case = format!("{t} tokens, {nh}/3 heads, one padding slot");
    twice(
        dev,
        "qkv_rope_write_kv",
        E::SUFFIX,
        case,
        tolerance::<E>(),
        &reference,
        || {
            let mut qd = poisoned::<D, E>(dev, t * nh * hd)?;
            let (mut kd, mut vd) = (up(dev, &k_cache)?, up(dev, &v_cache)?);
            ops::qkv_rope_write_kv(
                dev,
                &mut qd,
                &up(dev, &qkv)?,
                &up(dev, &pos)?,
                &up(dev, &table)?,
                &mut kd,
                &mut vd,
                &layout,
                &up(dev, &slots)?,
                ops::QkvShape {
                    num_tokens: t,
                    num_heads: nh,
                },
            )?;
            let mut o = to_f32(&down(dev, &qd)?);
            o.extend(to_f32(&down(dev, &kd)?));
            o.extend(to_f32(&down(dev, &vd)?));
            Ok(o)
        },
    )
}

/// argmax: the CPU sampler's index on each row, a tie (lowest index wins) and a NaN included.
fn argmax_case<D: Device, E: GpuElem>(dev: &D, rng: &mut Rng) -> Check {
    let (rows, vocab) = (4, 49152);
    let mut logits: Vec<E> = rng.vec(rows * vocab, 8.0);
    logits[vocab + 100] = E::from_f32(100.0);
    logits[vocab + 30000] = E::from_f32(100.0);
    logits[2 * vocab + 5] = E::nan();
    let reference: Vec<f64> = (0..rows)
        .map(|r| {
            let row: Vec<f32> = to_f32(&logits[r * vocab..(r + 1) * vocab]);
            let mut best = 0;
            for (i, &l) in row.iter().enumerate() {
                if l > row[best] || row[best].is_nan() && !l.is_nan() {
                    best = i;
                }
            }
            best as f64
        })
        .collect();
    twice(
        dev,
        "argmax",
        E::SUFFIX,
        format!("{rows} x {vocab}, tie and NaN"),
        0.0,
        &reference,
        || {
            let mut o = up(dev, &vec![-1i32; rows])?;
            ops::argmax(dev, &mut o, &up(dev, &logits)?, vocab)?;
            let idx: Vec<i32> = down(dev, &o)?;
            Ok(idx.iter().map(|&i| i as f32).collect::<Vec<f32>>())
        },
    )
}
