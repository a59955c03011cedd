//! The pagedrt runtime: models, the engine and its backends, the OpenAI-compatible server,
//! the load generator, and the command line with its tools (simulator front end,
//! calibration, plots); see `../shared/DESIGN.md`.

pub mod backend;
pub mod calibrate;
pub mod cli;
pub mod engine;
pub mod fit;
pub mod frag_study;
pub mod loadgen;
pub mod model;
pub mod plot;
pub mod sampler;
pub mod server;
pub mod sim_inputs;
pub mod step_check;
