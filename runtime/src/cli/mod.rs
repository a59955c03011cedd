//! The `pagedrt` command line: one subcommand per module.

mod model_cmds;
mod simulate;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "pagedrt",
    version,
    about = "Paged-attention batching runtime for LLM serving"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the real scheduler and block manager on a virtual clock with a cost model.
    Simulate(Box<simulate::SimulateArgs>),
    /// Fetch and prepare a model in the local cache (default: SmolLM2-135M-Instruct).
    Pull(model_cmds::PullArgs),
    /// Import a GGUF file into a Hugging Face model directory.
    Convert(model_cmds::ConvertArgs),
}

/// Parses the arguments, runs the subcommand, and turns its error into a message and exit
/// code 1 (2 for bad arguments, as clap does).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Simulate(args) => simulate::run(*args),
        Command::Pull(args) => model_cmds::run_pull(args),
        Command::Convert(args) => model_cmds::run_convert(args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
