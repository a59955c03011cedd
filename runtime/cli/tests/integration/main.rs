//! The runtime's integration tests, linked into one test binary.
//!
//! Every test file under `tests/` is its own executable that links the whole runtime (about
//! 200 MB each with debug info), so sixteen of them filled CI's disk. Tests that need a
//! process to themselves stay separate: `server_load` reads process-wide Prometheus gauges
//! that another test's server would move, and `soak` measures the process's RSS.

#[macro_use]
#[path = "../common/mod.rs"]
mod common;

mod cli_doctor;
mod cli_frag;
mod cli_simulate;
mod engine_golden;
mod engine_handle;
mod engine_parity;
mod engine_parity_emulated;
mod fleet;
mod gguf_convert;
mod golden_logits;
mod hub_pull;
mod loadgen;
mod no_kv_cache;
mod openai_client;
mod openapi;
mod request_caps;
mod server;
mod server_shutdown;
mod structured_tools;
mod tokenizer;
