//! Synthetic workloads and trace replay for the simulator. Everything is seeded.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp, Gamma, LogNormal};
use serde::{Deserialize, Serialize};

use super::error::SimError;

/// One request of a workload: when it arrives and how much work it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimRequest {
    pub arrival_s: f64,
    pub prompt_len: usize,
    pub output_len: usize,
    /// Requests of one group share a system prompt (its length is the workload's).
    #[serde(default)]
    pub prefix_group: Option<u32>,
    #[serde(default)]
    pub priority: i32,
    /// Parallel samples (`n`): sequences forked from the prompt, each `output_len` long.
    #[serde(default = "one")]
    pub n: usize,
}

fn one() -> usize {
    1
}

/// Inter-arrival times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrivals {
    /// Everything at time 0 (request rate "inf").
    AllAtOnce,
    /// Poisson process at `rate` requests/s.
    Poisson { rate: f64 },
    /// Gamma-distributed gaps with mean 1/rate; `burstiness` < 1 is burstier than Poisson,
    /// 1 is Poisson, > 1 more regular (vLLM's convention: shape = burstiness).
    Gamma { rate: f64, burstiness: f64 },
}

/// A length distribution, in tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LenDist {
    Fixed(usize),
    /// Uniform in `lo..=hi`.
    Uniform(usize, usize),
    /// Lognormal with this mean and log-space sigma, clamped to `1..=max`.
    LogNormal {
        mean: f64,
        sigma: f64,
        max: usize,
    },
}

impl LenDist {
    /// ShareGPT-like prompt lengths: mean about 202 tokens with a long tail.
    pub const SHAREGPT_PROMPT: LenDist = LenDist::LogNormal {
        mean: 202.0,
        sigma: 1.0,
        max: 2048,
    };
    /// ShareGPT-like output lengths: mean about 179 tokens.
    pub const SHAREGPT_OUTPUT: LenDist = LenDist::LogNormal {
        mean: 179.0,
        sigma: 0.9,
        max: 2048,
    };

    /// One length drawn from `rng`.
    pub fn sample(&self, rng: &mut StdRng) -> Result<usize, SimError> {
        Ok(match *self {
            LenDist::Fixed(n) => n,
            LenDist::Uniform(lo, hi) => rng.random_range(lo..=hi),
            LenDist::LogNormal { mean, sigma, max } => {
                // E[X] = exp(mu + sigma^2 / 2).
                let mu = mean.ln() - sigma * sigma / 2.0;
                let d = LogNormal::new(mu, sigma)
                    .map_err(|e| SimError::BadSpec(format!("lognormal:{mean}:{sigma}: {e}")))?;
                (d.sample(rng).round() as usize).clamp(1, max)
            }
        })
    }

    /// Parses `N`, `fixed:N`, `uniform:LO:HI` or `lognormal:MEAN:SIGMA[:MAX]`.
    pub fn parse(s: &str) -> Result<LenDist, SimError> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = |m: String| SimError::BadSpec(m);
        let num = |i: usize| -> Result<f64, SimError> {
            parts
                .get(i)
                .ok_or_else(|| bad(format!("'{s}': missing field {i}")))?
                .parse::<f64>()
                .map_err(|e| bad(format!("'{s}': {e}")))
        };
        match parts[0] {
            "fixed" => Ok(LenDist::Fixed(num(1)? as usize)),
            "uniform" => {
                let (lo, hi) = (num(1)? as usize, num(2)? as usize);
                if lo > hi || lo == 0 {
                    return Err(bad(format!("'{s}': need 1 <= lo <= hi")));
                }
                Ok(LenDist::Uniform(lo, hi))
            }
            "lognormal" => Ok(LenDist::LogNormal {
                mean: num(1)?,
                sigma: num(2)?,
                max: if parts.len() > 3 {
                    num(3)? as usize
                } else {
                    8192
                },
            }),
            _ => s.parse::<usize>().map(LenDist::Fixed).map_err(|_| {
                bad(format!(
                    "'{s}': expected N, fixed:N, uniform:LO:HI or lognormal:MEAN:SIGMA"
                ))
            }),
        }
    }
}

/// A synthetic workload.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkloadSpec {
    pub num_requests: usize,
    pub arrivals: Arrivals,
    pub prompt_len: LenDist,
    pub output_len: LenDist,
    /// `Some((k, len))`: each request starts with one of `k` shared system prompts of `len`
    /// tokens (chosen uniformly), followed by its own prompt.
    pub shared_prefix: Option<(u32, usize)>,
    /// Priorities drawn uniformly from `0..levels` (1 = everyone equal).
    pub priority_levels: u32,
    /// Parallel samples per request (`n`).
    pub parallel_samples: usize,
    pub seed: u64,
}

impl WorkloadSpec {
    /// ShareGPT-like lengths with Poisson arrivals.
    pub fn sharegpt_like(num_requests: usize, rate: f64, seed: u64) -> Self {
        WorkloadSpec {
            num_requests,
            arrivals: if rate.is_finite() {
                Arrivals::Poisson { rate }
            } else {
                Arrivals::AllAtOnce
            },
            prompt_len: LenDist::SHAREGPT_PROMPT,
            output_len: LenDist::SHAREGPT_OUTPUT,
            shared_prefix: None,
            priority_levels: 1,
            parallel_samples: 1,
            seed,
        }
    }

    pub fn generate(&self) -> Result<Vec<SimRequest>, SimError> {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut t = 0.0;
        let gap: Box<dyn Fn(&mut StdRng) -> f64> = match self.arrivals {
            Arrivals::AllAtOnce => Box::new(|_| 0.0),
            Arrivals::Poisson { rate } => {
                let d = Exp::new(rate)
                    .map_err(|e| SimError::BadSpec(format!("request rate {rate}: {e}")))?;
                Box::new(move |r| d.sample(r))
            }
            Arrivals::Gamma { rate, burstiness } => {
                let d = Gamma::new(burstiness, 1.0 / (rate * burstiness)).map_err(|e| {
                    SimError::BadSpec(format!("rate {rate}, burstiness {burstiness}: {e}"))
                })?;
                Box::new(move |r| d.sample(r))
            }
        };
        let mut out = Vec::with_capacity(self.num_requests);
        for _ in 0..self.num_requests {
            let (group, prefix) = match self.shared_prefix {
                Some((k, len)) if k > 0 => (Some(rng.random_range(0..k)), len),
                _ => (None, 0),
            };
            let own = self.prompt_len.sample(&mut rng)?;
            let output_len = self.output_len.sample(&mut rng)?;
            let priority = if self.priority_levels > 1 {
                rng.random_range(0..self.priority_levels) as i32
            } else {
                0
            };
            out.push(SimRequest {
                arrival_s: t,
                prompt_len: prefix + own,
                output_len,
                prefix_group: group,
                priority,
                n: self.parallel_samples.max(1),
            });
            t += gap(&mut rng);
        }
        Ok(out)
    }
}

/// Parses a trace: JSONL with [`SimRequest`] fields, or (`is_csv`) CSV with a header naming
/// `arrival_s,prompt_len,output_len` and optionally `prefix_group,priority,n`. Errors name
/// `source_name` (the file the text came from) and the line.
pub fn parse_trace(
    text: &str,
    is_csv: bool,
    source_name: &str,
) -> Result<Vec<SimRequest>, SimError> {
    let bad_trace = |problem: String| SimError::BadTrace {
        source_name: source_name.to_string(),
        problem,
    };
    let mut out = Vec::new();
    if is_csv {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines
            .next()
            .ok_or_else(|| bad_trace("empty trace".into()))?;
        let cols: Vec<&str> = header.split(',').map(str::trim).collect();
        let col = |name: &str| cols.iter().position(|c| *c == name);
        let (a, p, o) = match (col("arrival_s"), col("prompt_len"), col("output_len")) {
            (Some(a), Some(p), Some(o)) => (a, p, o),
            _ => {
                return Err(bad_trace(
                    "the header must name arrival_s, prompt_len, output_len".into(),
                ))
            }
        };
        let (g, pr) = (col("prefix_group"), col("priority"));
        for (i, line) in lines {
            if line.trim().is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            let bad = |what: &str| bad_trace(format!("line {}: bad {what}", i + 1));
            let get = |c: usize| f.get(c).copied().unwrap_or("");
            out.push(SimRequest {
                arrival_s: get(a).parse().map_err(|_| bad("arrival_s"))?,
                prompt_len: get(p).parse().map_err(|_| bad("prompt_len"))?,
                output_len: get(o).parse().map_err(|_| bad("output_len"))?,
                prefix_group: match g.map(get) {
                    Some(v) if !v.is_empty() => Some(v.parse().map_err(|_| bad("prefix_group"))?),
                    _ => None,
                },
                priority: match pr.map(get) {
                    Some(v) if !v.is_empty() => v.parse().map_err(|_| bad("priority"))?,
                    _ => 0,
                },
                n: match col("n").map(get) {
                    Some(v) if !v.is_empty() => v.parse().map_err(|_| bad("n"))?,
                    _ => 1,
                },
            });
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let r: SimRequest = serde_json::from_str(line)
                .map_err(|e| bad_trace(format!("line {}: {e}", i + 1)))?;
            out.push(r);
        }
    }
    for (i, r) in out.iter().enumerate() {
        if r.prompt_len == 0
            || r.output_len == 0
            || r.n == 0
            || r.arrival_s.is_nan()
            || r.arrival_s < 0.0
        {
            return Err(bad_trace(format!(
                "request {}: prompt_len, output_len and n must be positive, arrival_s >= 0",
                i + 1
            )));
        }
    }
    out.sort_by(|x, y| x.arrival_s.total_cmp(&y.arrival_s));
    Ok(out)
}

/// Token ids of a request's prompt: the shared prefix of its group (if any), then tokens of
/// its own. Deterministic, so that shared prefixes really hit the prefix cache.
pub fn prompt_tokens(req: &SimRequest, index: u64, prefix_len: usize) -> Vec<u32> {
    let mix = |a: u64, b: u64| -> u32 {
        let mut x = a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
        x ^= x >> 31;
        (x % 32_000) as u32
    };
    let shared = req
        .prefix_group
        .map_or(0, |_| prefix_len.min(req.prompt_len));
    let mut t = Vec::with_capacity(req.prompt_len);
    if let Some(g) = req.prefix_group {
        t.extend((0..shared as u64).map(|i| mix(g as u64 + 1, i)));
    }
    t.extend((shared as u64..req.prompt_len as u64).map(|i| mix((index + 1) << 20, i)));
    t
}
