//! Continuous-batching scheduler for pagedrt, and the simulator that load-tests it.
//!
//! The scheduler decides, every step, which tokens of which sequences run, under a token
//! budget and a sequence cap, preempting when the block manager runs out of pages. It is pure
//! and deterministic (time is passed in), so [`sim`] runs the same code on a virtual clock.
//!
//! Owns: sequence state, queues, the token budget, chunked prefill, preemption, policies,
//! `StepPlan` and `StepCounts`; the simulator (workloads, traces and cost models parsed from
//! text); the fragmentation study's allocator models. Knows nothing of: tensors, devices,
//! HTTP, files, threads or clocks (`tests/tests/architecture.rs` checks the last four).

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
