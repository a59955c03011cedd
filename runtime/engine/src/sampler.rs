//! Turning logits into tokens: penalties, temperature, top-k, top-p, min-p, greedy, and the
//! log-probabilities a client can ask for. Each request owns its RNG, seeded from its `seed`,
//! and draws exactly one number per sampled token, so the same seed gives the same output
//! whatever else shares the batch.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::constraint::TokenMask;

/// How a request wants its tokens chosen (OpenAI and vLLM semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy.
    pub temperature: f32,
    /// Nucleus: smallest set of tokens whose probability reaches `top_p` (1 = off).
    pub top_p: f32,
    /// Only the `top_k` most likely tokens (0 = off).
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` × the most likely one (0 = off).
    pub min_p: f32,
    /// Divides positive logits (multiplies negative ones) of tokens seen in prompt or output.
    pub repetition_penalty: f32,
    /// Subtracted from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted once per earlier occurrence in the output.
    pub frequency_penalty: f32,
    pub seed: Option<u64>,
    pub max_tokens: usize,
    pub stop_token_ids: Vec<u32>,
    /// Strings that end generation; never part of the returned text.
    pub stop: Vec<String>,
    pub ignore_eos: bool,
    /// Parallel samples.
    pub n: usize,
    /// Return the log-probabilities of this many top tokens at each step (`None`: none).
    pub logprobs: Option<usize>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: None,
            max_tokens: 16,
            stop_token_ids: vec![],
            stop: vec![],
            ignore_eos: false,
            n: 1,
            logprobs: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_tokens: usize) -> Self {
        SamplingParams {
            temperature: 0.0,
            max_tokens,
            ..Self::default()
        }
    }
}

/// The chosen token and, if asked, log-probabilities.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    pub token: u32,
    /// Log-probability of the chosen token under the (penalised) distribution.
    pub logprob: f32,
    /// (token, log-probability) of the most likely tokens, best first.
    pub top: Vec<(u32, f32)>,
}

fn log_softmax_of(logits: &[f32], ids: impl Iterator<Item = u32>) -> Vec<(u32, f32)> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = max + kernels::cpu::softmax::exp_sum(logits, max, 1.0).ln();
    ids.map(|i| (i, logits[i as usize] - lse)).collect()
}

/// The random generator of sample `index` of `request`: seeded from the request's seed
/// (or its id) plus the sample index, so every sample is reproducible on its own, whatever
/// else is in the batch. The engine and the no-cache reference both draw from it.
pub fn sample_rng(params: &SamplingParams, request: u64, index: usize) -> StdRng {
    let seed = params
        .seed
        .unwrap_or_else(|| request.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(index as u64);
    StdRng::seed_from_u64(seed)
}

/// Samples one token from `logits` (modified in place by the penalties and, if given, the
/// structured-output `mask`: a token it does not allow is never drawn, and log-probabilities
/// are those of the masked distribution).
pub fn sample(
    logits: &mut [f32],
    p: &SamplingParams,
    prompt: &[u32],
    output: &[u32],
    mask: Option<&TokenMask>,
    rng: &mut StdRng,
) -> Sampled {
    if let Some(m) = mask {
        m.apply(logits);
    }
    apply_penalties(logits, p, prompt, output);
    let token = if p.temperature <= 0.0 {
        argmax(logits)
    } else {
        sample_random(logits, p, rng)
    };
    let top = match p.logprobs {
        Some(k) if k > 0 => log_softmax_of(logits, top_k_indices(logits, k).into_iter()),
        _ => vec![],
    };
    let logprob = log_softmax_of(logits, std::iter::once(token))[0].1;
    Sampled {
        token,
        logprob,
        top,
    }
}

/// The `k` highest logits' ids, best first (ties by id).
fn top_k_indices(logits: &[f32], k: usize) -> Vec<u32> {
    let better = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut idx: Vec<u32> = (0..logits.len() as u32).collect();
    let k = k.min(idx.len());
    if k < idx.len() {
        idx.select_nth_unstable_by(k - 1, better);
        idx.truncate(k);
    }
    idx.sort_unstable_by(better);
    idx
}

pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Plain temperature sampling over the whole vocabulary: no sort. The first pass sums the
/// weights of each chunk of the vocabulary, the second walks the chunk sums to the drawn
/// chunk and then that chunk's weights (recomputed bit-for-bit as in the first pass).
fn sample_full(logits: &[f32], temperature: f32, rng: &mut StdRng) -> u32 {
    use kernels::cpu::softmax::exp_weights;
    const CHUNK: usize = 512;
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let inv_t = 1.0 / temperature;
    let mut buf = [0f32; CHUNK];
    let chunk_sums: Vec<f32> = logits
        .chunks(CHUNK)
        .map(|c| exp_weights(&mut buf[..c.len()], c, max, inv_t))
        .collect();
    let total: f32 = chunk_sums.iter().sum();
    let mut r = rng.random::<f32>() * total;
    for (ci, &cs) in chunk_sums.iter().enumerate() {
        if r > cs && ci + 1 < chunk_sums.len() {
            r -= cs;
            continue;
        }
        let chunk = &logits[ci * CHUNK..(ci * CHUNK + CHUNK).min(logits.len())];
        let w = &mut buf[..chunk.len()];
        exp_weights(w, chunk, max, inv_t);
        let mut last = None;
        for (i, &x) in w.iter().enumerate() {
            if x > 0.0 {
                last = Some(i);
            }
            r -= x;
            if r <= 0.0 && x > 0.0 {
                return (ci * CHUNK + i) as u32;
            }
        }
        // Rounding left a sliver of r: the chunk's last token with any weight.
        if let Some(i) = last {
            return (ci * CHUNK + i) as u32;
        }
    }
    argmax(logits)
}

fn apply_penalties(logits: &mut [f32], p: &SamplingParams, prompt: &[u32], output: &[u32]) {
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; logits.len()];
        for &t in prompt.iter().chain(output) {
            if let Some(s) = seen.get_mut(t as usize) {
                *s = true;
            }
        }
        for (l, s) in logits.iter_mut().zip(seen) {
            if s {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in output {
            *counts.entry(t).or_default() += 1;
        }
        for (t, c) in counts {
            if let Some(l) = logits.get_mut(t as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * c as f32;
            }
        }
    }
}

fn sample_random(logits: &[f32], p: &SamplingParams, rng: &mut StdRng) -> u32 {
    if p.top_k == 0 && p.top_p >= 1.0 && p.min_p <= 0.0 {
        return sample_full(logits, p.temperature, rng);
    }
    // Candidates sorted by logit, best first, cut by top-k.
    let k = if p.top_k > 0 { p.top_k } else { logits.len() };
    let idx = top_k_indices(logits, k);
    let max = logits[idx[0] as usize];
    let mut probs: Vec<f32> = idx
        .iter()
        .map(|&i| ((logits[i as usize] - max) / p.temperature).exp())
        .collect();
    let z: f32 = probs.iter().sum();
    probs.iter_mut().for_each(|x| *x /= z);
    // min-p: relative to the most likely token.
    let mut keep = probs.len();
    if p.min_p > 0.0 {
        let floor = p.min_p * probs[0];
        keep = probs.iter().take_while(|&&x| x >= floor).count().max(1);
    }
    // top-p: the smallest prefix reaching top_p.
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut n = 0;
        for &x in &probs[..keep] {
            acc += x;
            n += 1;
            if acc >= p.top_p {
                break;
            }
        }
        keep = n.max(1);
    }
    let total: f32 = probs[..keep].iter().sum();
    let mut r = rng.random::<f32>() * total;
    for (i, &x) in probs[..keep].iter().enumerate() {
        r -= x;
        if r <= 0.0 {
            return idx[i];
        }
    }
    idx[keep - 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> StdRng {
        StdRng::seed_from_u64(7)
    }

    #[test]
    fn greedy_takes_the_argmax_and_reports_logprobs() {
        let mut l = vec![0.0, 3.0, 1.0, 2.0];
        let p = SamplingParams {
            logprobs: Some(2),
            ..SamplingParams::greedy(1)
        };
        let s = sample(&mut l, &p, &[], &[], None, &mut rng());
        assert_eq!(s.token, 1);
        assert_eq!(s.top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3]);
        let z: f32 = [0.0f32, 3.0, 1.0, 2.0].iter().map(|x| x.exp()).sum();
        assert!((s.logprob - (3f32.exp() / z).ln()).abs() < 1e-6);
    }

    #[test]
    fn top_k_1_and_tiny_top_p_are_greedy() {
        let logits = vec![0.5, 2.0, 1.9, -1.0];
        for p in [
            SamplingParams {
                top_k: 1,
                ..SamplingParams::default()
            },
            SamplingParams {
                top_p: 1e-6,
                ..SamplingParams::default()
            },
            SamplingParams {
                min_p: 0.99,
                ..SamplingParams::default()
            },
        ] {
            let mut r = rng();
            for _ in 0..50 {
                assert_eq!(
                    sample(&mut logits.clone(), &p, &[], &[], None, &mut r).token,
                    1
                );
            }
        }
    }

    #[test]
    fn a_mask_is_never_sampled_outside_of() {
        let logits = vec![5.0, 0.0, 4.0, 1.0, 3.0];
        let mut mask = TokenMask::none(5);
        mask.allow(1);
        mask.allow(3);
        let greedy = SamplingParams {
            logprobs: Some(5),
            ..SamplingParams::greedy(1)
        };
        let s = sample(
            &mut logits.clone(),
            &greedy,
            &[],
            &[],
            Some(&mask),
            &mut rng(),
        );
        assert_eq!(s.token, 3);
        // The masked distribution: only ids 1 and 3 carry probability.
        let z = 1f32.exp() + 1.0;
        assert!((s.logprob - (1f32.exp() / z).ln()).abs() < 1e-6);
        assert!(s.top.iter().skip(2).all(|&(_, lp)| lp == f32::NEG_INFINITY));
        let mut r = rng();
        let p = SamplingParams::default();
        for _ in 0..2000 {
            let t = sample(&mut logits.clone(), &p, &[], &[], Some(&mask), &mut r).token;
            assert!(t == 1 || t == 3, "{t}");
        }
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p = softmax([ln 1, ln 3]) = [0.25, 0.75].
        let logits = vec![0.0, 3f32.ln()];
        let p = SamplingParams::default();
        let mut r = rng();
        let ones = (0..20_000)
            .filter(|_| sample(&mut logits.clone(), &p, &[], &[], None, &mut r).token == 1)
            .count();
        assert!((ones as f64 / 20_000.0 - 0.75).abs() < 0.02, "{ones}");
    }

    #[test]
    fn penalties_push_repeated_tokens_down() {
        let mut l = vec![2.0, 2.0, -1.0];
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            ..SamplingParams::greedy(1)
        };
        let s = sample(&mut l, &p, &[2], &[0, 0], None, &mut rng());
        assert_eq!(s.token, 1);
        assert_eq!(l[0], 2.0 / 2.0 - 0.5 - 0.5);
        assert_eq!(l[2], -2.0);
    }
}
