//! `pagedrt bench kernels`: CUDA kernel timings on device 0 (see kernels::cuda::bench).

use std::path::PathBuf;

use clap::Args;
use kernels::cuda::{bench, Gpu};
use serde_json::json;

#[derive(Args, Debug)]
pub struct BenchKernelsArgs {
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

pub fn run(args: BenchKernelsArgs) -> anyhow::Result<()> {
    let gpu = Gpu::open(0).map_err(|e| anyhow::anyhow!("bench kernels needs a GPU: {e}"))?;
    println!(
        "{} ({}, {} SMs)",
        gpu.info().name,
        gpu.info().arch,
        gpu.info().multiprocessors
    );
    gpu.preload(&kernels::cuda::source::ALL)?;
    let mut copy_gb_s = None;
    let rows = bench::run_all(&gpu, |r| {
        let gb = r.gb_per_s();
        if copy_gb_s.is_none() {
            copy_gb_s = gb;
        }
        let frac = match (gb, copy_gb_s) {
            (Some(g), Some(c)) => format!("{:5.1} % of copy", 100.0 * g / c),
            _ => String::new(),
        };
        let rate = match (gb, r.tflop_per_s()) {
            (Some(g), _) => format!("{g:8.1} GB/s"),
            (None, Some(t)) => format!("{t:8.1} TFLOP/s"),
            _ => String::new(),
        };
        println!("  {:<72} {:>10.1} us {rate} {frac}", r.name, r.median_us);
    })?;
    if let Some(path) = &args.json {
        let out = json!({
            "device": gpu.info().name,
            "arch": gpu.info().arch.to_string(),
            "rows": rows.iter().map(|r| json!({"name": r.name, "median_us": r.median_us,
                "gb_per_s": r.gb_per_s(), "tflop_per_s": r.tflop_per_s()})).collect::<Vec<_>>(),
        });
        let text = serde_json::to_string_pretty(&out)?;
        std::fs::write(path, text)
            .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
