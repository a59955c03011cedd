//! Continuous-batching scheduler for pagedrt, and the simulator that load-tests it.
//!
//! The scheduler decides, every step, which tokens of which sequences run, under a token
//! budget and a sequence cap, preempting when the block manager runs out of pages. It is pure
//! and deterministic (time is passed in), so [`sim`] runs the same code on a virtual clock.

mod config;
mod core;
mod error;
mod plan;
pub mod policy;
mod sequence;
mod step_counts;

pub use crate::core::{Scheduler, SchedulerCounters};
pub use config::{PreemptionCosts, PreemptionMode, SchedulerConfig};
pub use error::SchedulerError;
pub use plan::{ScheduledSeq, StepPlan, StepResult};
pub use policy::Policy;
pub use step_counts::StepCounts;
pub mod frag;
pub mod sim;
pub use sequence::{FinishReason, OrderKey, Request, SeqStatus, Sequence};
