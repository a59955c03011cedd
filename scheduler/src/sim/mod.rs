//! A discrete-event simulator: the real scheduler and block manager on a virtual clock, with
//! step times from a cost model. For load-testing scheduling policies at scale without
//! hardware.

mod cost_model;
mod error;
mod metrics;
mod run;
mod workload;

pub use cost_model::CostModel;
pub use error::SimError;
pub use metrics::{percentile_sorted, RequestRecord, Slo, Summary};
pub use run::{simulate, simulate_observed, SimConfig, SimResult, StepView, TimePoint};
pub use workload::{parse_trace, prompt_tokens, Arrivals, LenDist, SimRequest, WorkloadSpec};
