//! Reading GGUF files (llama.cpp's format): header, metadata, tensors, dequantization.

pub mod dequant;
pub mod reader;
pub mod types;
pub mod writer;

pub use reader::{GgufFile, TensorInfo, Value};
pub use types::GgmlType;
