//! The workload options shared by `simulate`, `frag` and `bench serve`: a generator or a
//! trace, arrival process, lengths, sharing, and the seed.

use clap::Args;
use scheduler::sim::{Arrivals, LenDist, SimRequest, WorkloadSpec};
use tools::sim_inputs::load_trace;

#[derive(Args, Debug, Clone)]
pub struct WorkloadArgs {
    /// sharegpt-like, fixed, prefix-sharing, or trace:PATH (.csv or .jsonl).
    #[arg(long, default_value = "sharegpt-like")]
    pub workload: String,
    #[arg(long, default_value_t = 1000)]
    pub num_requests: usize,
    /// Requests per second ("inf": all at once).
    #[arg(long, default_value = "inf")]
    pub request_rate: f64,
    /// Gamma shape of inter-arrival gaps: 1 = Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Prompt lengths: N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX] (not for sharegpt-like).
    #[arg(long, default_value = "128")]
    pub input_len: String,
    /// Output lengths, same forms as --input-len.
    #[arg(long, default_value = "128")]
    pub output_len: String,
    /// prefix-sharing: number of distinct system prompts.
    #[arg(long, default_value_t = 4)]
    pub prefix_groups: u32,
    /// prefix-sharing: system prompt length in tokens.
    #[arg(long, default_value_t = 512)]
    pub prefix_len: usize,
    /// Parallel samples per request (n), forked from the prompt with copy-on-write.
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Priorities drawn uniformly from 0..N.
    #[arg(long, default_value_t = 1)]
    pub priority_levels: u32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl WorkloadArgs {
    /// The requests at `rate` (requests/s, infinite = all at once) and the length of the
    /// shared system prompt of prefix-sharing workloads.
    pub fn generate(&self, rate: f64) -> anyhow::Result<(Vec<SimRequest>, usize)> {
        let a = self;
        let arrivals = if !rate.is_finite() {
            Arrivals::AllAtOnce
        } else if rate <= 0.0 {
            return Err(anyhow::anyhow!(
                "--request-rate must be positive, got {rate}"
            ));
        } else if (a.burstiness - 1.0).abs() > 1e-12 {
            Arrivals::Gamma {
                rate,
                burstiness: a.burstiness,
            }
        } else {
            Arrivals::Poisson { rate }
        };
        let mut spec = WorkloadSpec {
            num_requests: a.num_requests,
            arrivals,
            prompt_len: LenDist::parse(&a.input_len)?,
            output_len: LenDist::parse(&a.output_len)?,
            shared_prefix: None,
            priority_levels: a.priority_levels.max(1),
            parallel_samples: a.n.max(1),
            seed: a.seed,
        };
        let mut prefix_len = 0;
        match a.workload.as_str() {
            "sharegpt-like" => {
                spec.prompt_len = LenDist::SHAREGPT_PROMPT;
                spec.output_len = LenDist::SHAREGPT_OUTPUT;
            }
            "fixed" => {}
            "prefix-sharing" => {
                spec.shared_prefix = Some((a.prefix_groups, a.prefix_len));
                prefix_len = a.prefix_len;
            }
            w => {
                let path = w.strip_prefix("trace:").ok_or_else(|| {
                    anyhow::anyhow!(
                        "unknown workload '{w}' (sharegpt-like, fixed, prefix-sharing, trace:PATH)"
                    )
                })?;
                return Ok((load_trace(path.as_ref())?, a.prefix_len));
            }
        }
        Ok((spec.generate()?, prefix_len))
    }
}
