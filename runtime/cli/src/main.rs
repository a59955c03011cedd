//! The `pagedrt` command line: one subcommand per module. Errors become messages here, at
//! the edge (`anyhow`); the library crates below return typed errors.

mod bench_calibrate;
mod bench_check_steps;
mod bench_context;
mod bench_kernels;
mod bench_serve;
mod bench_structured;
mod bench_throughput;
mod choices;
mod doctor;
mod engine_args;
mod frag;
mod generate;
mod model_cmds;
mod serve;
mod simulate;
mod workload_args;

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
    /// KV-cache fragmentation study: paged vs contiguous allocators on one workload.
    Frag(Box<frag::FragArgs>),
    /// The OpenAI-compatible server (default model, pulled on first use).
    Serve(Box<serve::ServeArgs>),
    /// Benchmarks: `throughput` (offline), `context-scaling` (KV cache vs none), `serve`
    /// (load generator for any OpenAI-compatible server).
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Generate text for one prompt (streamed) or a file of prompts (one batch).
    Generate(Box<generate::GenerateArgs>),
    /// Fetch and prepare a model in the local cache (default: SmolLM2-135M-Instruct).
    Pull(model_cmds::PullArgs),
    /// Import a GGUF file into a Hugging Face model directory.
    Convert(model_cmds::ConvertArgs),
    /// CUDA readiness: libraries, devices, kernel compilation (--compile-kernels) and the
    /// GPU self-test of every kernel (--selftest).
    Doctor(doctor::DoctorArgs),
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Offline throughput: all requests queued at once, run to completion.
    Throughput(Box<bench_throughput::ThroughputArgs>),
    /// One decode step's time vs context length, with and without the KV cache.
    ContextScaling(Box<bench_context::ContextScalingArgs>),
    /// Load-test any OpenAI-compatible server (TTFT, TPOT, ITL, throughput, goodput).
    Serve(Box<bench_serve::BenchServeArgs>),
    /// Fit the simulator's cost model to this engine's measured step times.
    Calibrate(Box<bench_calibrate::CalibrateArgs>),
    /// Cost a server's step log with a cost model: measured / predicted, in total and by
    /// class of step (a machine drift, or a model of the wrong shape).
    CheckSteps(bench_check_steps::CheckStepsArgs),
    /// CUDA kernel timings: copy bandwidth, decode attention, paging cost, prefill TFLOP/s.
    Kernels(bench_kernels::BenchKernelsArgs),
    /// Structured outputs' cost: requests under a JSON schema vs free ones, and the mask
    /// time per token.
    Structured(Box<bench_structured::StructuredArgs>),
}

/// A progress bar of `len` steps with `template` (hidden when `quiet`).
fn progress_bar(len: usize, quiet: bool, template: &str) -> anyhow::Result<indicatif::ProgressBar> {
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(len as u64)
    };
    bar.set_style(indicatif::ProgressStyle::with_template(template)?.progress_chars("=> "));
    Ok(bar)
}

/// Parses the arguments, runs the subcommand, and turns its error into a message and exit
/// code 1 (2 for bad arguments, as clap does).
fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.command {
        Command::Simulate(args) => simulate::run(*args),
        Command::Frag(args) => frag::run(*args),
        Command::Generate(args) => generate::run(*args),
        Command::Serve(args) => serve::run(*args),
        Command::Bench(BenchCommand::Throughput(args)) => bench_throughput::run(*args),
        Command::Bench(BenchCommand::ContextScaling(args)) => bench_context::run(*args),
        Command::Bench(BenchCommand::Serve(args)) => bench_serve::run(*args),
        Command::Bench(BenchCommand::Calibrate(args)) => bench_calibrate::run(*args),
        Command::Bench(BenchCommand::CheckSteps(args)) => bench_check_steps::run(args),
        Command::Pull(args) => model_cmds::run_pull(args),
        Command::Convert(args) => model_cmds::run_convert(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Bench(BenchCommand::Kernels(args)) => bench_kernels::run(args),
        Command::Bench(BenchCommand::Structured(args)) => bench_structured::run(*args),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
