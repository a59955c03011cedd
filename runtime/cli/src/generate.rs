//! `pagedrt generate`: one prompt streamed to the terminal, or a file of prompts as one batch.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use serde_json::json;

use super::engine_args::{with_engine, EngineArgs};
use engine::backend::Backend;
use engine::sampler::SamplingParams;
use engine::EngineCore;
use engine::{EngineError, GenerateRequest};
use models::tokenizer::{ChatMessage, Tokenizer};

#[derive(Args, Debug, Clone)]
pub struct GenerateArgs {
    #[command(flatten)]
    engine: EngineArgs,
    /// The prompt.
    #[arg(long, conflicts_with = "prompts_file")]
    prompt: Option<String>,
    /// One prompt per line (the two characters \n inside a line stand for a newline).
    #[arg(long)]
    prompts_file: Option<PathBuf>,
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    #[arg(long)]
    seed: Option<u64>,
    /// Stop strings.
    #[arg(long)]
    stop: Vec<String>,
    #[arg(long)]
    ignore_eos: bool,
    /// Wrap each prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// One JSON object per prompt, in order.
    #[arg(long)]
    json: bool,
    /// Keep no KV cache: every step recomputes the whole sequence (the reference for the
    /// cache, and the slow baseline of `bench context-scaling`). No stop strings.
    #[arg(long)]
    no_kv_cache: bool,
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let prompts: Vec<String> = match (&a.prompt, &a.prompts_file) {
        (Some(p), None) => vec![p.clone()],
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.replace("\\n", "\n"))
            .collect(),
        _ => return Err(anyhow::anyhow!("give --prompt or --prompts-file")),
    };
    let (any, tok) = a.engine.build()?;
    with_engine!(any, engine => run_on(a, prompts, engine, &tok))
}

fn run_on<B: Backend>(
    a: GenerateArgs,
    prompts: Vec<String>,
    mut engine: EngineCore<B>,
    tok: &Tokenizer,
) -> anyhow::Result<()> {
    let params = SamplingParams {
        temperature: a.temperature,
        top_p: a.top_p,
        top_k: a.top_k,
        seed: a.seed,
        max_tokens: a.max_tokens,
        stop: a.stop.clone(),
        ignore_eos: a.ignore_eos,
        ..SamplingParams::default()
    };
    let mut prompt_ids = vec![];
    for (i, p) in prompts.iter().enumerate() {
        let text = if a.chat {
            let msgs = [ChatMessage::new("user", p.clone())];
            tok.apply_chat_template(&msgs, true)?
        } else {
            p.clone()
        };
        let ids = tok.encode(&text)?;
        if a.no_kv_cache {
            prompt_ids.push(ids);
            continue;
        }
        engine
            .request_limits()
            .validate(ids.clone(), params.clone())
            .map_err(EngineError::from)
            .and_then(|request| {
                engine.add_request(GenerateRequest {
                    id: i as u64,
                    request,
                })
            })
            .map_err(|e| anyhow::anyhow!("prompt {}: {e}", i + 1))?;
        prompt_ids.push(ids);
    }
    if a.no_kv_cache {
        return run_without_cache(&a, &engine, &prompts, &prompt_ids, &params, tok);
    }
    let stream = prompts.len() == 1 && !a.json;
    let start = Instant::now();
    let mut done: BTreeMap<u64, (Vec<u32>, String, String, f64)> = BTreeMap::new();
    let mut first: BTreeMap<u64, f64> = BTreeMap::new();
    let mut stdout = std::io::stdout();
    while engine.has_unfinished() {
        for t in engine.step()?.outputs {
            let el = start.elapsed().as_secs_f64();
            first.entry(t.request).or_insert(el);
            let e = done.entry(t.request).or_default();
            e.0.push(t.token);
            e.1.push_str(&t.text);
            if stream {
                print!("{}", t.text);
                let _ = stdout.flush();
            }
            if let Some(f) = t.finish {
                e.2 = f.as_str().to_string();
                e.3 = el;
            }
        }
    }
    if stream {
        println!();
        return Ok(());
    }
    for (i, p) in prompts.iter().enumerate() {
        let (ids, text, finish, end) = done.remove(&(i as u64)).unwrap_or_default();
        let out = Generated {
            prompt: p,
            prompt_ids: &prompt_ids[i],
            ids: &ids,
            text: &text,
            finish: &finish,
            ttft_s: first.get(&(i as u64)).copied(),
            e2e_s: end,
        };
        out.print(a.json, i, "");
    }
    Ok(())
}

/// `--no-kv-cache`: the same model and sampler, recomputing everything each step.
fn run_without_cache<B: engine::backend::Backend>(
    a: &GenerateArgs,
    engine: &engine::EngineCore<B>,
    prompts: &[String],
    prompt_ids: &[Vec<u32>],
    params: &SamplingParams,
    tok: &models::tokenizer::Tokenizer,
) -> anyhow::Result<()> {
    if !params.stop.is_empty() {
        return Err(anyhow::anyhow!(
            "--no-kv-cache does not support stop strings"
        ));
    }
    let start = Instant::now();
    let mut runner = tools::no_cache::NoCacheRunner::new(engine.backend(), engine.model());
    let outs = runner.generate(prompt_ids, params, &tok.eos_ids)?;
    let secs = start.elapsed().as_secs_f64();
    for (i, (p, ids)) in prompts.iter().zip(&outs).enumerate() {
        let text = tok.decode(ids, true)?;
        let finish = if ids.len() >= params.max_tokens {
            "length"
        } else {
            "stop"
        };
        let out = Generated {
            prompt: p,
            prompt_ids: &prompt_ids[i],
            ids,
            text: &text,
            finish,
            ttft_s: None,
            e2e_s: secs,
        };
        out.print(a.json, i, " (no KV cache)");
    }
    Ok(())
}

/// One prompt's result, as a JSON line or as text.
struct Generated<'a> {
    prompt: &'a str,
    prompt_ids: &'a [u32],
    ids: &'a [u32],
    text: &'a str,
    finish: &'a str,
    ttft_s: Option<f64>,
    e2e_s: f64,
}

impl Generated<'_> {
    fn print(&self, as_json: bool, index: usize, note: &str) {
        if as_json {
            let o = json!({
                "prompt": self.prompt,
                "prompt_token_ids": self.prompt_ids,
                "generated_token_ids": self.ids,
                "text": self.text,
                "finish_reason": self.finish,
                "ttft_s": self.ttft_s,
                "e2e_s": self.e2e_s,
            });
            println!("{o}");
        } else {
            println!(
                "=== prompt {}: {:?}{note}\n{}\n[{}]",
                index + 1,
                self.prompt,
                self.text,
                self.finish
            );
        }
    }
}
