//! The files `pagedrt bench serve --dataset FILE` and `pagedrt simulate --workload trace:FILE`
//! read: any bytes as a ShareGPT `.json`, a trace `.jsonl` or a trace `.csv` give requests or
//! an error naming the file, never a panic; parsed traces are sorted and positive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scheduler::sim::{parse_trace, LenDist};
use tools::loadgen::dataset::{build, DatasetSpec};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let ext = ["json", "jsonl", "csv"][kind as usize % 3];
    if let Ok(text) = std::str::from_utf8(body) {
        if let Ok(reqs) = parse_trace(text, ext == "csv", "fuzz") {
            assert!(reqs.windows(2).all(|w| w[0].arrival_s <= w[1].arrival_s));
            assert!(reqs
                .iter()
                .all(|r| r.prompt_len > 0 && r.output_len > 0 && r.n > 0));
        }
    }
    let dir = std::env::temp_dir().join(format!("pagedrt-fuzz-data-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("d.{ext}"));
    if std::fs::write(&path, body).is_err() {
        return;
    }
    let spec = DatasetSpec {
        name: path.display().to_string(),
        num_prompts: 4,
        input_len: LenDist::Fixed(8),
        output_len: LenDist::Fixed(8),
        prefix_groups: 0,
        prefix_len: 0,
        seed: 0,
    };
    match build(&spec) {
        Ok(reqs) => assert_eq!(reqs.len(), 4),
        Err(e) => assert!(e.to_string().contains("d."), "{e}"),
    }
});
