//! pagedrt's tools around the engine: the load generator (`loadgen`, behind `pagedrt bench
//! serve`), calibration of the simulator's cost model and checks of step logs against it,
//! fits and plots, the fragmentation study's driver, the simulator's file inputs, synthetic
//! steps for benchmarks, the no-KV-cache reference, and backend parity checks.
//!
//! Knows nothing of the server's internals: it talks to servers over HTTP like any client.

pub mod calibrate;
pub mod engines;
mod error;
pub mod fit;
pub mod frag_study;
pub mod loadgen;
pub mod no_cache;
pub mod parity;
pub mod plot;
pub mod sim_inputs;
pub mod step_check;
pub mod synthetic;

pub use error::ToolError;
