//! Models: GGUF import, the default model's pull, and (next) loading Hugging Face directories.

pub mod convert;
pub mod error;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod pull;
pub mod tokenizer;

pub use error::ModelError;
