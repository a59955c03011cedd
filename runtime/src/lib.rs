//! The pagedrt runtime: the command line and its tools (simulator front end, plots); models,
//! engine and server come next (see `../shared/DESIGN.md`).

pub mod backend;
pub mod calibrate;
pub mod cli;
pub mod engine;
pub mod fit;
pub mod loadgen;
pub mod model;
pub mod plot;
pub mod sampler;
pub mod server;
