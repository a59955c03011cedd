//! `pagedrt pull` and `pagedrt convert`.

use clap::Args;
use std::path::PathBuf;

use models::convert::{convert_gguf, OutDtype};
use models::pull::{pull, DEFAULT_MODEL};

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// The model to fetch.
    #[arg(default_value = DEFAULT_MODEL)]
    name: String,
}

pub fn run_pull(a: PullArgs) -> anyhow::Result<()> {
    let dir = pull(&a.name, &mut |line| eprintln!("{line}"))?;
    println!("{}", dir.display());
    Ok(())
}

#[derive(Args, Debug, Clone)]
pub struct ConvertArgs {
    /// The GGUF file to import.
    gguf: PathBuf,
    /// The model directory to write (must not exist).
    out_dir: PathBuf,
    /// Precision of the written weights: f32 or bf16.
    #[arg(long, default_value = "f32")]
    dtype: OutDtype,
}

pub fn run_convert(a: ConvertArgs) -> anyhow::Result<()> {
    convert_gguf(&a.gguf, &a.out_dir, a.dtype, &mut |done, total| {
        if done == total || done % 50 == 0 {
            eprintln!("converted {done}/{total} tensors");
        }
    })?;
    println!("{}", a.out_dir.display());
    Ok(())
}
