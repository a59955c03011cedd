//! `pagedrt bench throughput`: offline throughput, in the spirit of vLLM's
//! `benchmark_throughput`: every request queued at once, the engine run to completion.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::engine_args::{with_engine, EngineArgs};
use engine::backend::Backend;
use engine::sampler::SamplingParams;
use engine::EngineCore;
use engine::GenerateRequest;

#[derive(Args, Debug, Clone)]
pub struct ThroughputArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    input_len: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Generate exactly --output-len tokens (do not stop at EOS).
    #[arg(long)]
    ignore_eos: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
    /// Write each step's shape and duration as JSON lines (as `serve --step-log`), to see
    /// where a run's time goes (prefill vs decode steps) or to check a cost model against it.
    #[arg(long)]
    step_log: Option<PathBuf>,
}

pub fn run(a: ThroughputArgs) -> anyhow::Result<()> {
    let (any, _tok) = a.engine.build()?;
    with_engine!(any, engine => run_on(a, engine))
}

fn run_on<B: Backend>(a: ThroughputArgs, mut engine: EngineCore<B>) -> anyhow::Result<()> {
    if let Some(path) = &a.step_log {
        let f =
            std::fs::File::create(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        engine.set_step_log(Box::new(std::io::BufWriter::new(f)));
    }
    let vocab = engine.model().config().vocab_size as u32;
    let mut rng = StdRng::seed_from_u64(a.seed);
    // Random prompts over ordinary tokens (the first ids are special tokens in most vocabularies).
    let low = 100.min(vocab - 1);
    for i in 0..a.num_prompts {
        let prompt = (0..a.input_len)
            .map(|_| rng.random_range(low..vocab))
            .collect();
        let params = SamplingParams {
            max_tokens: a.output_len,
            ignore_eos: a.ignore_eos,
            seed: Some(a.seed + i as u64),
            ..SamplingParams::default()
        };
        let request = engine.request_limits().validate(prompt, params)?;
        engine.add_request(GenerateRequest {
            id: i as u64,
            request,
        })?;
    }
    let bar = super::progress_bar(
        a.num_prompts,
        a.quiet,
        "[{bar:40}] {pos}/{len} requests ({elapsed}, {msg})",
    )?;
    let start = Instant::now();
    let (mut steps, mut out_tokens, mut finished, mut peak_usage) = (0u64, 0usize, 0u64, 0f64);
    while engine.has_unfinished() {
        let outs = engine.step()?.outputs;
        steps += 1;
        out_tokens += outs.len();
        finished += outs.iter().filter(|o| o.finish.is_some()).count() as u64;
        peak_usage = peak_usage.max(engine.scheduler().kv_stats().usage());
        bar.set_position(finished);
        bar.set_message(format!(
            "{:.0} tok/s out",
            out_tokens as f64 / start.elapsed().as_secs_f64()
        ));
    }
    bar.finish_and_clear();
    let el = start.elapsed().as_secs_f64();
    let prompt_tokens = a.num_prompts * a.input_len;
    let r = json!({
        "num_prompts": a.num_prompts,
        "input_len": a.input_len,
        "output_len": a.output_len,
        "elapsed_s": el,
        "requests_per_s": a.num_prompts as f64 / el,
        "prompt_tokens_per_s": prompt_tokens as f64 / el,
        "output_tokens_per_s": out_tokens as f64 / el,
        "total_tokens_per_s": (prompt_tokens + out_tokens) as f64 / el,
        "steps": steps,
        "mean_step_s": el / steps.max(1) as f64,
        "peak_kv_usage": peak_usage,
        "preemptions": engine.scheduler().counters().preemptions,
    });
    println!(
        "{} requests ({} prompt + {} output tokens) in {el:.2} s: {:.2} req/s, {:.1} prompt tok/s, \
         {:.1} output tok/s, {:.1} total tok/s; {steps} steps ({:.1} ms mean); peak KV usage {:.1} %",
        a.num_prompts,
        prompt_tokens,
        out_tokens,
        r["requests_per_s"].as_f64().unwrap_or(0.0),
        r["prompt_tokens_per_s"].as_f64().unwrap_or(0.0),
        r["output_tokens_per_s"].as_f64().unwrap_or(0.0),
        r["total_tokens_per_s"].as_f64().unwrap_or(0.0),
        1e3 * el / steps.max(1) as f64,
        100.0 * peak_usage
    );
    if let Some(p) = &a.json {
        std::fs::write(
            p,
            serde_json::to_string_pretty(&r).unwrap_or_default() + "\n",
        )
        .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    Ok(())
}
