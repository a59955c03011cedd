//! `pagedrt bench structured`: what structured outputs cost. N requests under a JSON schema
//! against the same N requests free, offline (all queued at once, run to completion), in
//! interleaved rounds; reports output tokens/s of each, their ratio, and the mask time per
//! token (the helper thread's, and the part the step waited for after its forward).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::engine_args::{with_engine, EngineArgs};
use engine::backend::Backend;
use engine::sampler::SamplingParams;
use engine::structured::{GrammarCompiler, StructuredOutput};
use engine::{EngineCore, GenerateRequest};
use models::tokenizer::{ChatMessage, Tokenizer};

#[derive(Args, Debug, Clone)]
pub struct StructuredArgs {
    #[command(flatten)]
    engine: EngineArgs,
    #[arg(long, default_value_t = 64)]
    num_prompts: usize,
    #[arg(long, default_value_t = 128)]
    output_len: usize,
    /// Rounds of (free, constrained) runs; medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// The JSON schema file (default: a list of at least 40 people, so that every request
    /// runs to --output-len as the free ones do and the two compare token for token).
    #[arg(long)]
    schema: Option<PathBuf>,
    /// Write the result as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// One run's measurements.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    seconds: f64,
    tokens: usize,
    steps: usize,
    masks: usize,
    mask_seconds: f64,
    wait_seconds: f64,
}

fn default_schema() -> serde_json::Value {
    json!({"type": "object", "properties": {"people": {"type": "array", "minItems": 40, "items": {
        "type": "object", "properties": {
            "name": {"type": "string", "maxLength": 24},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"type": "string", "maxLength": 24},
            "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 4},
        }, "required": ["name", "age", "city", "hobbies"], "additionalProperties": false}}},
        "required": ["people"], "additionalProperties": false})
}

pub fn run(a: StructuredArgs) -> anyhow::Result<()> {
    let (any, tok) = a.engine.build()?;
    with_engine!(any, engine => run_on(&a, engine, tok))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn run_on<B: Backend>(
    a: &StructuredArgs,
    mut engine: EngineCore<B>,
    tok: Arc<Tokenizer>,
) -> anyhow::Result<()> {
    let schema = match &a.schema {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)?,
        None => default_schema(),
    };
    let vocab = engine.model().config().vocab_size;
    let compiler = GrammarCompiler::new(tok.token_env(vocab)?, vocab)?;
    let spec = StructuredOutput::JsonSchema {
        schema,
        any_whitespace: false,
    };
    let t0 = Instant::now();
    compiler.compile(&spec)?;
    let compile_s = t0.elapsed().as_secs_f64();
    let mut next_id = 0u64;
    let mut one =
        |engine: &mut EngineCore<B>, round: usize, constrained: bool| -> anyhow::Result<Run> {
            for i in 0..a.num_prompts {
                let msgs = [ChatMessage::new(
                    "user",
                    // Free and constrained prompts differ (no prefix-cache hits between them).
                    format!(
                        "Request {round}-{i}-{}: list some people as JSON.",
                        if constrained { "json" } else { "free" }
                    ),
                )];
                let prompt = tok.encode(&tok.apply_chat_template(&msgs, true)?)?;
                let params = SamplingParams {
                    max_tokens: a.output_len,
                    ignore_eos: !constrained,
                    seed: Some(i as u64),
                    ..SamplingParams::default()
                };
                let c = constrained.then(|| compiler.compile(&spec)).transpose()?;
                let request = engine
                    .request_limits()
                    .validate_constrained(prompt, params, c)?;
                engine.add_request(GenerateRequest {
                    id: next_id,
                    request,
                })?;
                next_id += 1;
            }
            let start = Instant::now();
            let mut r = Run::default();
            while engine.has_unfinished() {
                let rep = engine.step()?;
                r.steps += 1;
                r.tokens += rep.outputs.len();
                r.masks += rep.masks;
                r.mask_seconds += rep.mask_seconds;
                r.wait_seconds += rep.mask_wait_seconds;
            }
            r.seconds = start.elapsed().as_secs_f64();
            Ok(r)
        };
    let (mut free, mut constrained) = (vec![], vec![]);
    for round in 0..a.rounds {
        // Alternate which goes first, so a drift of the machine's speed cancels.
        if round % 2 == 0 {
            free.push(one(&mut engine, round, false)?);
            constrained.push(one(&mut engine, round, true)?);
        } else {
            constrained.push(one(&mut engine, round, true)?);
            free.push(one(&mut engine, round, false)?);
        }
        let (f, c) = (free[round], constrained[round]);
        eprintln!(
            "round {round}: free {:.1} tok/s, json {:.1} tok/s ({} tokens), mask {:.1} us/token, waited {:.2} ms/step",
            f.tokens as f64 / f.seconds,
            c.tokens as f64 / c.seconds,
            c.tokens,
            1e6 * c.mask_seconds / c.masks.max(1) as f64,
            1e3 * c.wait_seconds / c.steps.max(1) as f64,
        );
    }
    let rate = |v: &[Run]| median(v.iter().map(|r| r.tokens as f64 / r.seconds).collect());
    let (free_tps, json_tps) = (rate(&free), rate(&constrained));
    let ratios: Vec<f64> = free
        .iter()
        .zip(&constrained)
        .map(|(f, c)| (c.tokens as f64 / c.seconds) / (f.tokens as f64 / f.seconds))
        .collect();
    let mask_us = median(
        constrained
            .iter()
            .map(|c| 1e6 * c.mask_seconds / c.masks.max(1) as f64)
            .collect(),
    );
    let wait_ms = median(
        constrained
            .iter()
            .map(|c| 1e3 * c.wait_seconds / c.steps.max(1) as f64)
            .collect(),
    );
    let r = json!({
        "num_prompts": a.num_prompts, "output_len": a.output_len, "rounds": a.rounds,
        "free_output_tokens_per_s": free_tps, "json_output_tokens_per_s": json_tps,
        "json_over_free_median_ratio": median(ratios.clone()), "ratios": ratios,
        "mask_us_per_token": mask_us, "mask_wait_ms_per_step": wait_ms,
        "first_compile_s": compile_s, "cache": compiler.cache_stats(),
    });
    println!(
        "{} requests x {} tokens, {} rounds: free {free_tps:.1} tok/s, json schema {json_tps:.1} \
         tok/s (median ratio {:.3}); mask {mask_us:.1} us per token on the helper thread, \
         {wait_ms:.2} ms per step waited after the forward; first compile {:.1} ms",
        a.num_prompts,
        a.output_len,
        a.rounds,
        median(ratios),
        1e3 * compile_s
    );
    if let Some(p) = &a.json {
        std::fs::write(p, serde_json::to_string_pretty(&r)? + "\n")?;
    }
    Ok(())
}
