//! Models: GGUF import, the default model's pull, and (next) loading Hugging Face directories.

pub mod config;
pub mod convert;
pub mod dummy;
pub mod error;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod llama;
pub mod pull;
pub mod resolve;
mod scratch;
pub mod tokenizer;
pub mod weights;

pub use error::ModelError;
