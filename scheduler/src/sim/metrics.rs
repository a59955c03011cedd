//! Per-request records and the statistics the simulator (and the load generator) report.

use serde::Serialize;

/// Mean, spread and percentiles of one latency metric, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Summary {
    pub count: usize,
    pub mean: f64,
    pub std: f64,
    pub median: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Summary {
    /// Summarises `values` (reordered in place). Percentiles interpolate linearly between
    /// order statistics (numpy's default).
    pub fn of(values: &mut [f64]) -> Summary {
        let n = values.len();
        if n == 0 {
            return Summary::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let mean = values.iter().sum::<f64>() / n as f64;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64;
        Summary {
            count: n,
            mean,
            std: var.sqrt(),
            median: percentile_sorted(values, 50.0),
            p90: percentile_sorted(values, 90.0),
            p99: percentile_sorted(values, 99.0),
            max: values[n - 1],
        }
    }
}

/// The `p`-th percentile of sorted values, interpolating linearly.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

/// Service-level objectives for goodput: a request counts when it meets every one given.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Slo {
    pub ttft_s: Option<f64>,
    pub tpot_s: Option<f64>,
    pub e2e_s: Option<f64>,
}

impl Slo {
    /// Parses `ttft:MS tpot:MS e2el:MS` items (milliseconds), as vLLM's `--goodput`.
    pub fn parse(items: &[String]) -> Result<Slo, super::SimError> {
        let bad = |m: String| super::SimError::BadSpec(m);
        let mut slo = Slo::default();
        for item in items {
            let (k, v) = item
                .split_once(':')
                .ok_or_else(|| bad(format!("goodput '{item}': expected NAME:MILLISECONDS")))?;
            let ms: f64 = v
                .parse()
                .map_err(|_| bad(format!("goodput '{item}': '{v}' is not a number")))?;
            if ms.is_nan() || ms <= 0.0 {
                return Err(bad(format!("goodput '{item}': must be positive")));
            }
            let s = Some(ms / 1000.0);
            match k {
                "ttft" => slo.ttft_s = s,
                "tpot" => slo.tpot_s = s,
                "e2el" | "e2e" => slo.e2e_s = s,
                _ => {
                    return Err(bad(format!(
                        "goodput '{item}': unknown metric (ttft, tpot, e2el)"
                    )))
                }
            }
        }
        Ok(slo)
    }

    pub fn is_set(&self) -> bool {
        self.ttft_s.is_some() || self.tpot_s.is_some() || self.e2e_s.is_some()
    }

    pub fn met(&self, r: &RequestRecord) -> bool {
        let ok = |limit: Option<f64>, v: Option<f64>| match (limit, v) {
            (Some(l), Some(v)) => v <= l,
            (Some(_), None) => false,
            (None, _) => true,
        };
        ok(self.ttft_s, r.ttft()) && ok(self.tpot_s, r.tpot()) && ok(self.e2e_s, r.e2e())
    }
}

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    pub id: u64,
    pub arrival_s: f64,
    pub prompt_len: usize,
    /// Tokens generated, summed over the request's `n` sequences.
    pub output_len: usize,
    /// Parallel samples.
    pub n: usize,
    pub first_scheduled_s: Option<f64>,
    pub first_token_s: Option<f64>,
    pub finish_s: Option<f64>,
    pub preemptions: u32,
    /// Why the request was refused, if it was.
    pub rejected: Option<String>,
}

impl RequestRecord {
    /// The record of request `id` before anything happened to it.
    pub fn new(id: u64, r: &super::SimRequest) -> Self {
        RequestRecord {
            id,
            arrival_s: r.arrival_s,
            prompt_len: r.prompt_len,
            output_len: 0,
            n: r.n.max(1),
            first_scheduled_s: None,
            first_token_s: None,
            finish_s: None,
            preemptions: 0,
            rejected: None,
        }
    }
    pub fn ttft(&self) -> Option<f64> {
        Some(self.first_token_s? - self.arrival_s)
    }
    pub fn e2e(&self) -> Option<f64> {
        Some(self.finish_s? - self.arrival_s)
    }
    pub fn queue(&self) -> Option<f64> {
        Some(self.first_scheduled_s? - self.arrival_s)
    }
    /// Time per output token after the first, per sequence.
    pub fn tpot(&self) -> Option<f64> {
        let per_seq = self.output_len / self.n.max(1);
        (per_seq > 1)
            .then(|| Some((self.finish_s? - self.first_token_s?) / (per_seq - 1) as f64))
            .flatten()
    }
}
