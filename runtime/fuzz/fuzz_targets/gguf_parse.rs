//! Any bytes: the GGUF parser returns an error or a file whose tensors all lie inside it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use models::gguf::GgufFile;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = GgufFile::parse(std::path::Path::new("fuzz.gguf"), data) {
        for t in &g.tensors {
            assert!(g.tensor_bytes(t).is_ok());
        }
    }
});
