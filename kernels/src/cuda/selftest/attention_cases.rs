//! Paged attention cases against a float64 attention that gathers each sequence's K/V
//! position by position (no tiles, no online softmax: a different algorithm from both the
//! CPU and the CUDA kernels).

use super::{down, poisoned, to_f32, tolerance, twice, up, Check, Rng};
use crate::cuda::attention::{
    paged_attention, AttentionBatch, AttentionMeta, AttentionShape, AttentionWorkspace, Route,
    SeqChunk,
};
use crate::cuda::launch::Device;
use crate::cuda::GpuElem;
use crate::layout::KvLayout;

/// One attention problem: sequences with (query length, context length), a cache with
/// shuffled pages, queries.
struct Problem<E> {
    layout: KvLayout,
    num_heads: usize,
    seqs: Vec<(usize, usize)>,
    max_blocks: usize,
    tables: Vec<i32>,
    k_cache: Vec<E>,
    v_cache: Vec<E>,
    q: Vec<E>,
}

impl<E: GpuElem> Problem<E> {
    fn new(
        rng: &mut Rng,
        head_dim: usize,
        num_kv_heads: usize,
        group: usize,
        block_size: usize,
        seqs: Vec<(usize, usize)>,
        contiguous: bool,
    ) -> Self {
        let max_blocks = seqs
            .iter()
            .map(|s| s.1.div_ceil(block_size))
            .max()
            .unwrap_or(1)
            .max(1);
        let total: usize = seqs.iter().map(|s| s.1.div_ceil(block_size)).sum();
        let num_blocks = total + 3;
        let mut pages: Vec<i32> = (0..num_blocks as i32).collect();
        if !contiguous {
            rng.shuffle(&mut pages);
        }
        let mut tables = vec![0i32; seqs.len() * max_blocks];
        let mut next = 0;
        for (s, &(_, ctx)) in seqs.iter().enumerate() {
            for b in 0..ctx.div_ceil(block_size) {
                tables[s * max_blocks + b] = pages[next];
                next += 1;
            }
        }
        let layout = KvLayout {
            num_blocks,
            num_kv_heads,
            block_size,
            head_dim,
        };
        let num_heads = num_kv_heads * group;
        let tokens: usize = seqs.iter().map(|s| s.0).sum();
        Problem {
            layout,
            num_heads,
            max_blocks,
            tables,
            k_cache: rng.vec(layout.elems(), 1.0),
            v_cache: rng.vec(layout.elems(), 1.0),
            q: rng.vec(tokens * num_heads * head_dim, 1.0),
            seqs,
        }
    }

    fn scale(&self) -> f32 {
        1.0 / (self.layout.head_dim as f32).sqrt()
    }

    /// softmax(q·Kᵀ·scale)·V per query row, in f64, positions 0..=p.
    fn reference(&self) -> Vec<f64> {
        let l = &self.layout;
        let hd = l.head_dim;
        let group = self.num_heads / l.num_kv_heads;
        let mut out = Vec::new();
        let mut row = 0;
        for (s, &(qlen, ctx)) in self.seqs.iter().enumerate() {
            let table: Vec<u32> = self.tables[s * self.max_blocks..(s + 1) * self.max_blocks]
                .iter()
                .map(|&b| b as u32)
                .collect();
            for i in 0..qlen {
                if ctx == 0 {
                    // A decode row with nothing to attend to: zeros.
                    out.extend(std::iter::repeat_n(0.0, self.num_heads * hd));
                    continue;
                }
                let pos = ctx - qlen + i;
                for h in 0..self.num_heads {
                    let kvh = h / group;
                    let q = &self.q[((row + i) * self.num_heads + h) * hd..][..hd];
                    let scores: Vec<f64> = (0..=pos)
                        .map(|p| {
                            let k = &self.k_cache[l.offset(l.slot(&table, p), kvh)..][..hd];
                            let dot: f64 = q
                                .iter()
                                .zip(k)
                                .map(|(a, b)| a.to_f32() as f64 * b.to_f32() as f64)
                                .sum();
                            dot * self.scale() as f64
                        })
                        .collect();
                    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
                    let z: f64 = w.iter().sum();
                    let mut o = vec![0.0; hd];
                    for (p, wp) in w.iter().enumerate() {
                        let v = &self.v_cache[l.offset(l.slot(&table, p), kvh)..][..hd];
                        for (od, vd) in o.iter_mut().zip(v) {
                            *od += wp / z * vd.to_f32() as f64;
                        }
                    }
                    out.extend(o);
                }
            }
            row += qlen;
        }
        out
    }

    fn describe(&self) -> String {
        let ctx: Vec<usize> = self.seqs.iter().map(|s| s.1).collect();
        let q: Vec<usize> = self.seqs.iter().map(|s| s.0).collect();
        format!(
            "hd {} heads {}/{} bs {} queries {:?} contexts {:?}",
            self.layout.head_dim,
            self.num_heads,
            self.layout.num_kv_heads,
            self.layout.block_size,
            abbreviate(&q),
            abbreviate(&ctx)
        )
    }

    /// The sequences as the launchers take them.
    fn seq_tables(&self) -> Vec<Vec<u32>> {
        self.seqs
            .iter()
            .enumerate()
            .map(|(s, &(_, ctx))| {
                let n = ctx.div_ceil(self.layout.block_size);
                let t = &self.tables[s * self.max_blocks..][..n];
                t.iter().map(|&b| b as u32).collect()
            })
            .collect()
    }

    /// Runs the problem routed by `route` twice against `reference`, as `kernel`: the decode
    /// kernel (every row must go there), the prefill kernel, or both ("paged_attention").
    fn check<D: Device>(&self, dev: &D, kernel: &str, route: Route, reference: &[f64]) -> Check {
        twice(
            dev,
            kernel,
            E::SUFFIX,
            self.describe(),
            tolerance::<E>(),
            reference,
            || self.run(dev, kernel, route),
        )
    }

    fn run<D: Device>(
        &self,
        dev: &D,
        kernel: &str,
        route: Route,
    ) -> Result<Vec<f32>, crate::cuda::CudaError> {
        let tables = self.seq_tables();
        let mut start = 0;
        let seqs: Vec<SeqChunk> = self
            .seqs
            .iter()
            .zip(&tables)
            .map(|(&(qlen, ctx), t)| {
                let s = SeqChunk {
                    query_start: start,
                    query_len: qlen,
                    context_len: ctx,
                    block_table: t,
                };
                start += qlen;
                s
            })
            .collect();
        let shape = AttentionShape {
            layout: self.layout,
            num_heads: self.num_heads,
            q_stride: self.num_heads * self.layout.head_dim,
            scale: self.scale(),
        };
        let meta = AttentionMeta::new(&seqs)?;
        let batch = AttentionBatch::new::<E>(dev, &meta, shape, route)?;
        let (decode_rows, prefill_tiles) = batch.split();
        let routed = match kernel {
            "paged_attention_decode" => prefill_tiles == 0,
            "paged_attention_prefill" => decode_rows == 0,
            _ => decode_rows > 0 && prefill_tiles > 0,
        };
        if !routed {
            return Err(crate::cuda::CudaError::Unsupported {
                kernel: kernel.into(),
                problem: format!(
                    "the batch went to other kernels: {decode_rows} decode rows, \
                     {prefill_tiles} prefill tiles"
                ),
            });
        }
        let (q, kc, vc) = (
            up(dev, &self.q)?,
            up(dev, &self.k_cache)?,
            up(dev, &self.v_cache)?,
        );
        let mut out = poisoned::<D, E>(dev, self.q.len())?;
        let mut ws = AttentionWorkspace::default();
        paged_attention(dev, &mut out, &q, &kc, &vc, &batch, &mut ws)?;
        Ok(to_f32(&down(dev, &out)?))
    }
}

fn abbreviate(v: &[usize]) -> String {
    if v.len() <= 6 {
        format!("{v:?}")
    } else {
        format!("{:?}.. ({} seqs)", &v[..4], v.len())
    }
}

/// (head_dim, KV heads, group, block size, one entry per sequence).
type Shape<S> = (usize, usize, usize, usize, Vec<S>);

/// Runs the cases of the kernels `want` accepts (by name), pushing each outcome.
pub fn run<D: Device, E: GpuElem>(
    dev: &D,
    quick: bool,
    want: &dyn Fn(&str, &str, &str) -> bool,
    push: &mut impl FnMut(Check),
) {
    let (decode_k, prefill_k, mixed_k) = (
        "paged_attention_decode",
        "paged_attention_prefill",
        "paged_attention",
    );
    let d = E::SUFFIX;
    // Whether any case of kernel `k` in this dtype is wanted (before building problems).
    let any = |k: &str| want(k, d, "");
    if ![decode_k, prefill_k, mixed_k].iter().any(|k| any(k)) {
        return;
    }
    let mut rng = Rng::new(11);
    // Decode: head dims, GQA ratios, block sizes, short and long contexts, split-K or not,
    // empty contexts (zeros), and enough blocks to fill the device without splitting.
    // (head_dim, KV heads, group, block size, per-sequence context)
    let mut sparse = vec![3; 110];
    sparse[0] = 0;
    sparse[57] = 0;
    let mut decode: Vec<Shape<usize>> = vec![
        (64, 3, 3, 16, vec![1, 17, 300, 64]),
        (128, 8, 4, 16, vec![2048; 4]),
        (128, 8, 4, 16, vec![256; 16]),
        (128, 2, 8, 8, vec![5000, 1, 33]),
        (256, 1, 1, 32, vec![700, 3]),
        (64, 4, 2, 256, vec![1000, 257, 256]),
        (64, 2, 2, 16, vec![0, 5, 300]),
        (64, 16, 1, 16, sparse),
    ];
    if !quick {
        decode.push((128, 8, 4, 16, vec![2048; 16]));
        decode.push((128, 8, 4, 16, vec![256; 64]));
        decode.push((128, 8, 4, 16, vec![32768]));
        decode.push((128, 4, 8, 64, vec![9000, 4096, 1, 100]));
        decode.push((64, 2, 5, 128, vec![3000; 8]));
    }
    let hds: &[usize] = if d == "f32" {
        &[64, 128]
    } else {
        &[64, 128, 256]
    };
    for (hd, kvh, g, bs, ctxs) in decode {
        let empty = ctxs.contains(&0);
        let seqs = ctxs.iter().map(|&c| (1, c)).collect();
        let p = Problem::<E>::new(&mut rng, hd, kvh, g, bs, seqs, false);
        let case = p.describe();
        let as_decode = want(decode_k, d, &case);
        // The prefill kernel must agree on decode rows too (it needs a context to attend to).
        let prefill_too = hds.contains(&hd) && !empty && want(prefill_k, d, &case);
        if !as_decode && !prefill_too {
            continue;
        }
        let reference = p.reference();
        if as_decode {
            push(p.check(dev, decode_k, Route::Split, &reference));
        }
        if prefill_too {
            push(p.check(dev, prefill_k, Route::PrefillOnly, &reference));
        }
    }
    // Mixed batches: prefill chunks with and without cached context, next to decodes (which
    // go to the decode kernel), and the same through the prefill kernel alone.
    let mut mixed: Vec<Shape<(usize, usize)>> = vec![
        (64, 3, 3, 16, vec![(7, 7), (1, 40), (33, 100), (300, 300)]),
        (128, 8, 4, 16, vec![(128, 128), (16, 700), (1, 1)]),
        (128, 2, 8, 1, vec![(50, 60), (5, 5)]),
        (
            64,
            1,
            1,
            8,
            vec![(1, 1), (2, 9), (31, 31), (32, 32), (33, 33)],
        ),
    ];
    if !quick {
        mixed.push((128, 8, 4, 16, vec![(128, 128), (16, 2000), (1, 1)]));
        mixed.push((128, 8, 4, 16, vec![(1024, 1024), (512, 3000)]));
        if d != "f32" {
            mixed.push((256, 2, 2, 32, vec![(100, 400), (9, 9)]));
        }
    }
    for (hd, kvh, g, bs, seqs) in mixed {
        let has_decode = seqs.iter().any(|s| s.0 == 1);
        let p = Problem::<E>::new(&mut rng, hd, kvh, g, bs, seqs, false);
        let case = p.describe();
        let as_prefill = want(prefill_k, d, &case);
        let as_mixed = has_decode && want(mixed_k, d, &case);
        if !as_prefill && !as_mixed {
            continue;
        }
        let reference = p.reference();
        if as_prefill {
            push(p.check(dev, prefill_k, Route::PrefillOnly, &reference));
        }
        if as_mixed {
            push(p.check(dev, mixed_k, Route::Split, &reference));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu;

    /// The GPU self-test's float64 reference agrees with the CPU kernel on the same pages, so
    /// a GPU failure points at the GPU kernel, not at the test's bookkeeping.
    #[test]
    fn the_f64_reference_agrees_with_the_cpu_kernel() {
        let mut rng = Rng::new(1);
        for (hd, kvh, g, bs, seqs) in [
            (64, 3, 3, 16, vec![(7, 7), (1, 40), (33, 100)]),
            (128, 2, 4, 1, vec![(5, 9), (1, 1)]),
        ] {
            let p = Problem::<half::bf16>::new(&mut rng, hd, kvh, g, bs, seqs, false);
            let reference = p.reference();
            let tables: Vec<Vec<u32>> = p
                .tables
                .chunks(p.max_blocks)
                .map(|t| t.iter().map(|&b| b as u32).collect())
                .collect();
            let mut chunks = Vec::new();
            let mut start = 0;
            for (s, &(qlen, ctx)) in p.seqs.iter().enumerate() {
                chunks.push(cpu::SeqChunk {
                    query_start: start,
                    query_len: qlen,
                    context_len: ctx,
                    block_table: &tables[s],
                });
                start += qlen;
            }
            let mut out = vec![0.0; p.q.len()];
            let (kc, vc) = (to_f32(&p.k_cache), to_f32(&p.v_cache));
            cpu::paged_attention(
                &mut out,
                &to_f32(&p.q),
                &kc,
                &vc,
                &p.layout,
                p.num_heads,
                &chunks,
                p.scale(),
            );
            let err = super::super::rel_err(&out, &reference);
            assert!(err < 1e-5, "{}: {err}", p.describe());
        }
    }
}
