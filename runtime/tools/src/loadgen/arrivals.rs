//! When each request of a load test is sent: all at once, a Poisson process, gamma-distributed
//! gaps (burstiness), or a rate ramped from a start to an end value. Seeded.

use crate::error::ToolError;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, Gamma};

/// How the request rate changes over the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Ramp {
    /// `rate` throughout.
    Constant,
    /// From `start` to `end` requests/s, linearly in the request index.
    Linear { start: f64, end: f64 },
    /// From `start` to `end`, geometrically in the request index.
    Exponential { start: f64, end: f64 },
}

/// Send times (seconds from the start) of `n` requests at `rate` requests/s (infinite = all
/// at once) with gamma-distributed gaps of shape `burstiness` (1 = Poisson, < 1 burstier).
pub fn arrival_times(
    n: usize,
    rate: f64,
    burstiness: f64,
    ramp: Ramp,
    seed: u64,
) -> Result<Vec<f64>, ToolError> {
    if !(burstiness > 0.0 && burstiness.is_finite()) {
        return Err(ToolError::Input(format!(
            "--burstiness must be positive, got {burstiness}"
        )));
    }
    let rate_of = |i: usize| -> f64 {
        let f = if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            0.0
        };
        match ramp {
            Ramp::Constant => rate,
            Ramp::Linear { start, end } => start + (end - start) * f,
            Ramp::Exponential { start, end } => start * (end / start).powf(f),
        }
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let mut t = 0.0;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(t);
        let r = rate_of(i);
        if r.is_infinite() {
            continue;
        }
        if r.is_nan() || r <= 0.0 {
            return Err(ToolError::Input(format!(
                "request rates must be positive, got {r}"
            )));
        }
        let gap = Gamma::new(burstiness, 1.0 / (r * burstiness))
            .map_err(|e| ToolError::Input(format!("rate {r}, burstiness {burstiness}: {e}")))?;
        t += gap.sample(&mut rng);
    }
    Ok(out)
}
