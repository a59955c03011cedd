//! The KV-cache fragmentation study: one workload replayed through paged and contiguous
//! allocators under the same memory budget, scheduler rules and cost model, with every token
//! slot of the budget accounted for at every step (see [`Breakdown`]).

mod arena;
mod breakdown;
mod contiguous;
mod paged;

pub use arena::{Arena, Fit};
pub use breakdown::{Averager, Breakdown, Fractions};
pub use contiguous::{final_len, Reservation};
pub use paged::breakdown as paged_breakdown;

use crate::sim::{CostModel, RequestRecord, SimError, SimRequest, Summary};
use serde::Serialize;

/// The settings every allocator of a study shares.
#[derive(Debug, Clone)]
pub struct FragConfig {
    /// KV memory, in token slots.
    pub budget_tokens: usize,
    pub max_model_len: usize,
    /// Every request's `max_tokens`: outputs are capped at it, and Orca "Max" reserves it.
    pub max_tokens: usize,
    pub max_num_seqs: usize,
    pub max_num_batched_tokens: usize,
    pub enable_chunked_prefill: bool,
    /// Share of pages the paged scheduler keeps free when admitting.
    pub watermark: f64,
    pub cost_model: CostModel,
    /// Length of the shared system prompt of requests with a `prefix_group`.
    pub shared_prefix_len: usize,
    /// At most this many points of each allocator's time series are kept.
    pub series_points: usize,
}

/// One allocator of the study.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorSpec {
    /// The block manager with pages of `block_size`; `sharing` turns prefix caching on
    /// (`n > 1` samples always share their prompt pages).
    Paged {
        block_size: usize,
        sharing: bool,
    },
    Contiguous {
        reservation: Reservation,
        fit: Fit,
    },
}

/// The block sizes of the default sweep.
pub const BLOCK_SIZES: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

impl AllocatorSpec {
    /// `paged-16`, `paged-16-noshare`, `contiguous-max-len`, `contiguous-max-tokens`,
    /// `contiguous-oracle` (best-fit placement adds `-best-fit`).
    pub fn name(&self) -> String {
        match *self {
            AllocatorSpec::Paged {
                block_size,
                sharing,
            } => format!(
                "paged-{block_size}{}",
                if sharing { "" } else { "-noshare" }
            ),
            AllocatorSpec::Contiguous { reservation, fit } => format!(
                "contiguous-{}{}",
                reservation.name(),
                if fit == Fit::Best { "-best-fit" } else { "" }
            ),
        }
    }

    /// Parses a [`name`](Self::name).
    pub fn parse(s: &str) -> Result<Self, SimError> {
        let bad = || {
            SimError::BadSpec(format!(
                "unknown allocator '{s}' (paged-BS, paged-BS-noshare, contiguous-max-len, \
                 contiguous-max-tokens, contiguous-oracle, each contiguous one with -best-fit)"
            ))
        };
        if let Some(rest) = s.strip_prefix("paged-") {
            let (bs, sharing) = match rest.strip_suffix("-noshare") {
                Some(bs) => (bs, false),
                None => (rest, true),
            };
            let block_size: usize = bs.parse().map_err(|_| bad())?;
            if block_size == 0 {
                return Err(SimError::BadSpec(format!(
                    "{s}: the block size must be positive"
                )));
            }
            return Ok(AllocatorSpec::Paged {
                block_size,
                sharing,
            });
        }
        let rest = s.strip_prefix("contiguous-").ok_or_else(bad)?;
        let (rest, fit) = match rest.strip_suffix("-best-fit") {
            Some(r) => (r, Fit::Best),
            None => (rest, Fit::First),
        };
        let reservation = match rest {
            "max-len" => Reservation::MaxModelLen,
            "max-tokens" => Reservation::MaxTokens,
            "oracle" => Reservation::Oracle,
            _ => return Err(bad()),
        };
        Ok(AllocatorSpec::Contiguous { reservation, fit })
    }

    /// Every paged block size with sharing, paged-16 without, and the three contiguous
    /// reservations placed with `fit`.
    pub fn default_set(fit: Fit) -> Vec<AllocatorSpec> {
        let mut v: Vec<AllocatorSpec> = BLOCK_SIZES
            .iter()
            .map(|&block_size| AllocatorSpec::Paged {
                block_size,
                sharing: true,
            })
            .collect();
        v.push(AllocatorSpec::Paged {
            block_size: 16,
            sharing: false,
        });
        for reservation in [
            Reservation::MaxModelLen,
            Reservation::MaxTokens,
            Reservation::Oracle,
        ] {
            v.push(AllocatorSpec::Contiguous { reservation, fit });
        }
        v
    }
}

/// The budget's partition during one step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Moment {
    /// When the step ends.
    pub t_s: f64,
    pub dt_s: f64,
    #[serde(flatten)]
    pub breakdown: Breakdown,
}

/// What an allocator's replay produced besides its memory.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub records: Vec<RequestRecord>,
    pub duration_s: f64,
    /// Most sequences running in one step.
    pub max_concurrency: usize,
    pub preemptions: u64,
}

/// One allocator's results.
#[derive(Debug, Clone, Serialize)]
pub struct AllocatorReport {
    pub name: String,
    pub kind: &'static str,
    pub block_size: Option<usize>,
    pub fit: Option<&'static str>,
    /// Time averages over the steps, as fractions of the budget (they add up to 1).
    #[serde(flatten)]
    pub mean: Fractions,
    /// The step with the most memory allocated.
    pub peak: Fractions,
    pub max_concurrency: usize,
    pub request_throughput: f64,
    pub output_token_throughput: f64,
    pub completed: usize,
    pub rejected: usize,
    pub preemptions: u64,
    pub duration_s: f64,
    pub ttft_s: Summary,
    pub tpot_s: Summary,
    pub e2e_s: Summary,
    #[serde(skip)]
    pub series: Vec<Moment>,
}

/// Caps outputs at `max_tokens` and drops requests whose prompt plus `max_tokens` exceed
/// `max_model_len` (a server refuses them), so every allocator sees the same requests.
/// Returns the requests kept and the number dropped.
pub fn prepare_workload(cfg: &FragConfig, requests: &[SimRequest]) -> (Vec<SimRequest>, usize) {
    let kept: Vec<SimRequest> = requests
        .iter()
        .filter(|r| r.prompt_len + cfg.max_tokens <= cfg.max_model_len)
        .map(|r| SimRequest {
            output_len: r.output_len.min(cfg.max_tokens),
            ..r.clone()
        })
        .collect();
    let dropped = requests.len() - kept.len();
    (kept, dropped)
}

/// Replays `requests` (prepared, sorted by arrival) through one allocator, calling
/// `observe` at every step.
pub fn run_allocator(
    spec: AllocatorSpec,
    cfg: &FragConfig,
    requests: &[SimRequest],
    progress: &mut dyn FnMut(usize),
    observe: &mut dyn FnMut(&Moment),
) -> Result<AllocatorReport, SimError> {
    if cfg.max_tokens == 0 || cfg.budget_tokens == 0 {
        return Err(SimError::Config(
            "the memory budget and max_tokens must be positive".into(),
        ));
    }
    let mut avg = Averager::default();
    let mut series = Vec::new();
    let mut record = |m: &Moment| {
        avg.add(&m.breakdown, m.dt_s);
        series.push(*m);
        observe(m);
    };
    let out = match spec {
        AllocatorSpec::Paged {
            block_size,
            sharing,
        } => paged::run(cfg, block_size, sharing, requests, progress, &mut record)?,
        AllocatorSpec::Contiguous { reservation, fit } => {
            contiguous::run(cfg, reservation, fit, requests, progress, &mut record)?
        }
    };
    let stride = series.len().div_ceil(cfg.series_points.max(1)).max(1);
    let series: Vec<Moment> = series.into_iter().step_by(stride).collect();
    let completed: Vec<&RequestRecord> = out
        .records
        .iter()
        .filter(|r| r.finish_s.is_some())
        .collect();
    let collect = |f: &dyn Fn(&RequestRecord) -> Option<f64>| -> Vec<f64> {
        completed.iter().filter_map(|r| f(r)).collect()
    };
    let duration = out.duration_s.max(f64::MIN_POSITIVE);
    let out_tokens: usize = completed.iter().map(|r| r.output_len).sum();
    Ok(AllocatorReport {
        name: spec.name(),
        kind: match spec {
            AllocatorSpec::Paged { .. } => "paged",
            AllocatorSpec::Contiguous { .. } => "contiguous",
        },
        block_size: match spec {
            AllocatorSpec::Paged { block_size, .. } => Some(block_size),
            AllocatorSpec::Contiguous { .. } => None,
        },
        fit: match spec {
            AllocatorSpec::Paged { .. } => None,
            AllocatorSpec::Contiguous { fit, .. } => Some(fit.name()),
        },
        mean: avg.mean(cfg.budget_tokens),
        peak: Fractions::of(&avg.peak(), cfg.budget_tokens),
        max_concurrency: out.max_concurrency,
        request_throughput: completed.len() as f64 / duration,
        output_token_throughput: out_tokens as f64 / duration,
        completed: completed.len(),
        rejected: out.records.iter().filter(|r| r.rejected.is_some()).count(),
        preemptions: out.preemptions,
        duration_s: out.duration_s,
        ttft_s: Summary::of(&mut collect(&|r| r.ttft())),
        tpot_s: Summary::of(&mut collect(&|r| r.tpot())),
        e2e_s: Summary::of(&mut collect(&|r| r.e2e())),
        series,
    })
}
