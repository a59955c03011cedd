//! A latency histogram of fixed size: what lets the fleet simulator report percentiles of a
//! million requests (and a hundred million inter-token latencies) in bounded memory.
//!
//! Buckets are logarithmic, `RESOLUTION` apart in relative terms, from 1 µs to about 28 hours;
//! a percentile is the geometric middle of its bucket, so it is within `RESOLUTION / 2` of
//! the exact order statistic. Mean, maximum and count are exact.

use super::metrics::Summary;

/// Relative width of a bucket.
const RESOLUTION: f64 = 0.002;
const MIN_S: f64 = 1e-6;
const BUCKETS: usize = 12_000;

#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    counts: Vec<u32>,
    n: u64,
    sum: f64,
    sum_sq: f64,
    max: f64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS],
            n: 0,
            sum: 0.0,
            sum_sq: 0.0,
            max: 0.0,
        }
    }
}

fn bucket(v: f64) -> usize {
    if v <= MIN_S {
        return 0;
    }
    (((v / MIN_S).ln() / RESOLUTION.ln_1p()) as usize + 1).min(BUCKETS - 1)
}

/// The geometric middle of bucket `i` (its lower edge for bucket 0).
fn value(i: usize) -> f64 {
    if i == 0 {
        return MIN_S;
    }
    MIN_S * ((i as f64 - 0.5) * RESOLUTION.ln_1p()).exp()
}

impl LatencyHistogram {
    pub fn record(&mut self, v: f64) {
        self.counts[bucket(v)] += 1;
        self.n += 1;
        self.sum += v;
        self.sum_sq += v * v;
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.n
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, o: &LatencyHistogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.n += o.n;
        self.sum += o.sum;
        self.sum_sq += o.sum_sq;
        self.max = self.max.max(o.max);
    }

    /// The value below which `p` percent of the samples lie (nearest rank).
    pub fn percentile(&self, p: f64) -> f64 {
        if self.n == 0 {
            return f64::NAN;
        }
        let rank = ((p / 100.0) * (self.n - 1) as f64).round() as u64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c as u64;
            if seen > rank {
                // The top bucket holds everything beyond the range: its maximum is exact.
                return if i == BUCKETS - 1 {
                    self.max
                } else {
                    value(i).min(self.max)
                };
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        if self.n == 0 {
            return Summary::default();
        }
        let n = self.n as f64;
        let mean = self.sum / n;
        Summary {
            count: self.n as usize,
            mean,
            std: (self.sum_sq / n - mean * mean).max(0.0).sqrt(),
            median: self.percentile(50.0),
            p90: self.percentile(90.0),
            p99: self.percentile(99.0),
            max: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_resolution_of_the_exact_ones() {
        let mut h = LatencyHistogram::default();
        let mut exact: Vec<f64> = (1..=10_000).map(|i| 1e-4 * (i as f64).powf(1.7)).collect();
        for &v in &exact {
            h.record(v);
        }
        let s = Summary::of(&mut exact);
        let got = h.summary();
        assert_eq!(got.count, 10_000);
        assert!((got.mean / s.mean - 1.0).abs() < 1e-12);
        assert!((got.std / s.std - 1.0).abs() < 1e-9);
        assert_eq!(got.max, s.max);
        for (a, b) in [(got.median, s.median), (got.p90, s.p90), (got.p99, s.p99)] {
            assert!((a / b - 1.0).abs() < RESOLUTION, "{a} vs {b}");
        }
        let mut twice = h.clone();
        twice.merge(&h);
        assert_eq!(twice.count(), 20_000);
        assert!((twice.percentile(50.0) / got.median - 1.0).abs() < RESOLUTION);
        assert!(LatencyHistogram::default().percentile(50.0).is_nan());
        // Out of range values land in the end buckets and never exceed the maximum.
        let mut edge = LatencyHistogram::default();
        edge.record(0.0);
        edge.record(1e9);
        assert_eq!(edge.percentile(0.0), MIN_S);
        assert_eq!(edge.percentile(100.0), 1e9);
    }
}
