//! Any bytes as a model directory's model.safetensors: opening it reports an error naming the
//! file, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use models::weights::WeightFiles;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir().join(format!("pagedrt-fuzz-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    if std::fs::write(dir.join("model.safetensors"), data).is_ok() {
        if let Err(e) = WeightFiles::open(&dir) {
            assert!(e.to_string().contains("model.safetensors"));
        }
    }
});
