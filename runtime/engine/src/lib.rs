//! The pagedrt engine: one step at a time over a paged KV cache (DESIGN.md, "One engine
//! step").
//!
//! Owns: the model seam (`model`: the `Model` trait, `KvSpec`, weights by Hugging Face name
//! from a `WeightSource`, the Llama family's forward pass), the backends behind one interface
//! (`backend`: CPU, CUDA), the sampler, `EngineCore` (schedule, copies, forward, sample,
//! update), structured outputs (`constraint`: the token-mask seam the sampler applies;
//! `structured`: its llguidance implementation, grammars from JSON schemas, regexes, choices
//! and Lark), `EngineHandle` (the core on its own thread, driven through channels) and the
//! publisher of its KV-cache events (`kv_events`).
//!
//! Knows nothing of: HTTP, file formats (config.json, safetensors, GGUF, tokenizer.json: the
//! `models` crate reads them and hands over a `WeightSource` and a `TokenDecoder`), the CLI.

pub mod backend;
pub mod constraint;
pub mod core;
pub mod detok;
mod error;
pub mod executor;
pub mod handle;
pub mod kv_events;
mod masks;
pub mod model;
mod report;
pub mod request;
mod run;
mod sample_state;
pub mod sampler;
pub mod stop;
pub mod structured;

pub use self::core::{EngineConfig, EngineCore, GenerateRequest, TokenOutput};
pub use constraint::{Constraint, TokenConstraint, TokenMask};
pub use error::EngineError;
pub use report::StepReport;
pub use request::{InvalidRequest, RequestLimits, ValidatedRequest};
pub use run::{run_to_completion, Completion};

/// Types of the crates below that every user of the engine handles.
pub use block_manager::BlockError;
pub use kernels::KvDtype;
pub use scheduler::{FinishReason, SchedulerError};
