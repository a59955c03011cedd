//! `pagedrt bench serve`: load-tests any OpenAI-compatible server (pagedrt, vLLM, llama.cpp's
//! server ...) with options in the spirit of vLLM's `bench serve`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use scheduler::sim::{LenDist, Slo};

use tools::loadgen::arrivals::{arrival_times, Ramp};
use tools::loadgen::dataset::{build, DatasetSpec};
use tools::loadgen::exact_len::{fit_lengths, Tokens};
use tools::loadgen::http::Endpoint;
use tools::loadgen::report::BenchResult;
use tools::loadgen::run::{first_model, run as run_load, Outcome, Target};
use tools::plot::{cdf, line_chart, Line};

#[derive(Args, Debug, Clone)]
pub struct BenchServeArgs {
    /// The server's root URL (plain HTTP).
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    base_url: String,
    /// /v1/completions or /v1/chat/completions.
    #[arg(long, default_value = "/v1/completions")]
    endpoint: String,
    /// Model name to send (default: the first one GET /v1/models lists).
    #[arg(long)]
    model: Option<String>,
    #[arg(long, default_value_t = 1000)]
    num_prompts: usize,
    /// Requests per second ("inf": all at once); Poisson, or gamma with --burstiness.
    #[arg(long, default_value = "inf")]
    request_rate: f64,
    /// Gamma shape of the gaps between requests: 1 = Poisson, < 1 burstier.
    #[arg(long, default_value_t = 1.0)]
    burstiness: f64,
    /// At most this many requests in flight.
    #[arg(long)]
    max_concurrency: Option<usize>,
    /// Ramp the rate from --ramp-up-start-rps to --ramp-up-end-rps: linear or exponential.
    #[arg(long)]
    ramp_up: Option<String>,
    #[arg(long)]
    ramp_up_start_rps: Option<f64>,
    #[arg(long)]
    ramp_up_end_rps: Option<f64>,
    /// random, sharegpt-like, prefix-sharing, or a file (.jsonl/.csv trace of the simulator,
    /// or ShareGPT .json).
    #[arg(long, default_value = "random")]
    dataset: String,
    /// Prompt length in tokens: N, uniform:LO:HI or lognormal:MEAN:SIGMA[:MAX]. Exact for
    /// `random` when the tokenizer is known (--tokenizer, or the server's /tokenize), else
    /// in words (about one token each in BPE vocabularies), with a warning.
    #[arg(long, default_value = "1024")]
    input_len: String,
    /// max_tokens of each request, same forms as --input-len.
    #[arg(long, default_value = "128")]
    output_len: String,
    /// prefix-sharing: distinct shared prefixes.
    #[arg(long, default_value_t = 4)]
    prefix_groups: u32,
    /// prefix-sharing: words in each shared prefix.
    #[arg(long, default_value_t = 512)]
    prefix_len: usize,
    /// Ask the server to ignore end-of-sequence tokens (vLLM's and pagedrt's extension).
    #[arg(long)]
    ignore_eos: bool,
    /// Service-level objectives for goodput, in ms: ttft:MS tpot:MS e2el:MS.
    #[arg(long, num_args = 1..)]
    goodput: Vec<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Count output tokens with this tokenizer (a model directory or a pulled model name)
    /// when the server reports no `usage`; without it such streams count one token per event.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Give up on a request after this many seconds.
    #[arg(long, default_value_t = 600.0)]
    timeout_s: f64,
    /// Write the result as JSON (an array for sweeps).
    #[arg(long)]
    save_result: Option<PathBuf>,
    /// Run once per rate (comma-separated), overriding --request-rate.
    #[arg(long, value_delimiter = ',')]
    sweep_rates: Vec<f64>,
    /// Write the requests as sent (time, prompt and output tokens as the server counted them)
    /// as a trace for `pagedrt simulate --workload trace:PATH` (the last rate of a sweep).
    #[arg(long)]
    save_trace: Option<PathBuf>,
    /// Write SVG plots (latency CDFs; throughput and p99 TTFT/TPOT vs rate for sweeps).
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

fn ramp(a: &BenchServeArgs) -> anyhow::Result<Ramp> {
    let Some(kind) = &a.ramp_up else {
        return Ok(Ramp::Constant);
    };
    let (Some(start), Some(end)) = (a.ramp_up_start_rps, a.ramp_up_end_rps) else {
        return Err(anyhow::anyhow!(
            "--ramp-up needs --ramp-up-start-rps and --ramp-up-end-rps"
        ));
    };
    if !(start > 0.0 && end > 0.0 && start.is_finite() && end.is_finite()) {
        return Err(anyhow::anyhow!("ramp-up rates must be positive and finite"));
    }
    match kind.as_str() {
        "linear" => Ok(Ramp::Linear { start, end }),
        "exponential" => Ok(Ramp::Exponential { start, end }),
        k => Err(anyhow::anyhow!("--ramp-up '{k}': linear or exponential")),
    }
}

/// One run at `rate`.
fn run_once(
    a: &BenchServeArgs,
    rt: &tokio::runtime::Runtime,
    target: &Arc<Target>,
    tokens: Option<&Tokens>,
    rate: f64,
) -> anyhow::Result<(BenchResult, Vec<Outcome>)> {
    let mut reqs = build(&DatasetSpec {
        name: a.dataset.clone(),
        num_prompts: a.num_prompts,
        input_len: LenDist::parse(&a.input_len)?,
        output_len: LenDist::parse(&a.output_len)?,
        prefix_groups: a.prefix_groups,
        prefix_len: a.prefix_len,
        seed: a.seed,
    })?;
    if let Some(t) = tokens {
        let missed = rt.block_on(fit_lengths(&mut reqs, t, a.seed))?;
        if missed > 0 {
            eprintln!("warning: {missed} random prompts could not be made exactly --input-len tokens long");
        }
    }
    let arrivals = arrival_times(reqs.len(), rate, a.burstiness, ramp(a)?, a.seed)?;
    let bar = super::progress_bar(
        reqs.len(),
        a.quiet,
        "{msg} [{bar:40}] {pos}/{len} requests ({elapsed})",
    )?;
    bar.set_message(format!("{rate} req/s"));
    let b2 = bar.clone();
    let (outcomes, secs) = rt.block_on(run_load(
        target.clone(),
        reqs,
        arrivals,
        a.max_concurrency,
        Arc::new(move || b2.inc(1)),
    ));
    bar.finish_and_clear();
    let slo = Slo::parse(&a.goodput)?;
    let r = BenchResult::of(&outcomes, secs, &slo, rate, a.burstiness, a.max_concurrency);
    Ok((r, outcomes))
}

pub fn run(a: BenchServeArgs) -> anyhow::Result<()> {
    if a.num_prompts == 0 {
        return Err(anyhow::anyhow!("--num-prompts must be positive"));
    }
    if a.timeout_s.is_nan() || a.timeout_s <= 0.0 {
        return Err(anyhow::anyhow!("--timeout-s must be positive"));
    }
    let endpoint = Endpoint::parse(&a.base_url)?;
    if !matches!(
        a.endpoint.as_str(),
        "/v1/completions" | "/v1/chat/completions"
    ) {
        return Err(anyhow::anyhow!(
            "--endpoint {}: /v1/completions or /v1/chat/completions",
            a.endpoint
        ));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let model = match &a.model {
        Some(m) => m.clone(),
        None => rt.block_on(first_model(&endpoint, a.api_key.as_deref()))?,
    };
    let target = Arc::new(Target {
        endpoint,
        path: a.endpoint.clone(),
        model,
        api_key: a.api_key.clone(),
        ignore_eos: a.ignore_eos,
        timeout: Duration::from_secs_f64(a.timeout_s),
        tokenizer: match &a.tokenizer {
            Some(t) => Some(Arc::new(load_tokenizer(t)?)),
            None => None,
        },
    });
    let tokens = if a.dataset == "random" {
        random_lengths(&a, &rt, &target)
    } else {
        None
    };
    let rates = if a.sweep_rates.is_empty() {
        vec![a.request_rate]
    } else {
        a.sweep_rates.clone()
    };
    let mut runs = Vec::new();
    for &rate in &rates {
        let (r, outcomes) = run_once(&a, &rt, &target, tokens.as_ref(), rate)?;
        println!("request rate {rate} req/s, model {}", target.model);
        print!("{}", r.table());
        runs.push((rate, r, outcomes));
    }
    if let Some(p) = &a.save_result {
        let results: Vec<&BenchResult> = runs.iter().map(|x| &x.1).collect();
        let j = if results.len() == 1 {
            serde_json::to_string_pretty(results[0])
        } else {
            serde_json::to_string_pretty(&results)
        }?;
        std::fs::write(p, j + "\n").map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?;
    }
    if let (Some(p), Some((_, _, outcomes))) = (&a.save_trace, runs.last()) {
        write_trace(p, outcomes)?;
    }
    if let Some(d) = &a.svg_dir {
        plots(d, &runs)?;
    }
    Ok(())
}

/// The completed requests as simulator trace lines (JSONL), with each prompt's shared-prefix
/// group where the dataset has them (`simulate --prefix-len` then gives the prefix's length).
fn write_trace(path: &PathBuf, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let mut text = String::new();
    for o in outcomes.iter().filter(|o| o.ok()) {
        let mut line = serde_json::json!({
            "arrival_s": o.sent_s, "prompt_len": o.prompt_tokens, "output_len": o.output_tokens,
        });
        if let Some(g) = o.prefix_group {
            line["prefix_group"] = g.into();
        }
        text += &format!("{line}\n");
    }
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn plots(dir: &PathBuf, runs: &[(f64, BenchResult, Vec<Outcome>)]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let cdfs = |f: &dyn Fn(&Outcome) -> Vec<f64>| -> Vec<Line> {
        runs.iter()
            .map(|(rate, _, os)| {
                let mut v: Vec<f64> = os.iter().filter(|o| o.ok()).flat_map(f).collect();
                v.sort_by(f64::total_cmp);
                Line {
                    name: format!("{rate} req/s"),
                    points: cdf(&v, 2000),
                }
            })
            .collect()
    };
    let ms = 1e3;
    for (file, title, axis, f) in [
        (
            "ttft_cdf.svg",
            "TTFT CDF",
            "time to first token (ms)",
            &(|o: &Outcome| o.ttft_s.map(|x| x * ms).into_iter().collect())
                as &dyn Fn(&Outcome) -> Vec<f64>,
        ),
        (
            "tpot_cdf.svg",
            "TPOT CDF",
            "time per output token (ms)",
            &|o: &Outcome| o.tpot_s().map(|x| x * ms).into_iter().collect(),
        ),
        (
            "itl_cdf.svg",
            "Inter-token latency CDF",
            "inter-token latency (ms)",
            &|o: &Outcome| o.itls_s.iter().map(|x| x * ms).collect(),
        ),
        (
            "e2e_cdf.svg",
            "End-to-end latency CDF",
            "end-to-end latency (s)",
            &|o: &Outcome| vec![o.e2e_s],
        ),
    ] {
        line_chart(&dir.join(file), title, axis, "fraction", &cdfs(f))?;
    }
    if runs.len() > 1 {
        let sweep = |name: &str, f: &dyn Fn(&BenchResult) -> f64| Line {
            name: name.to_string(),
            points: runs.iter().map(|(rate, r, _)| (*rate, f(r))).collect(),
        };
        line_chart(
            &dir.join("sweep_throughput.svg"),
            "Throughput vs request rate",
            "request rate (req/s)",
            "tokens/s",
            &[sweep("output tok/s", &|r| r.output_throughput)],
        )?;
        line_chart(
            &dir.join("sweep_p99_latency.svg"),
            "p99 TTFT and TPOT vs request rate",
            "request rate (req/s)",
            "ms",
            &[
                sweep("p99 TTFT", &|r| 1e3 * r.ttft_s.p99),
                sweep("p99 TPOT", &|r| 1e3 * r.tpot_s.p99),
            ],
        )?;
    }
    Ok(())
}

/// What makes `random` prompts exactly `--input-len` tokens long: `--tokenizer`, else the
/// server's `/tokenize` (if it answers); without either the lengths are approximate, and
/// the user is told.
fn random_lengths(
    a: &BenchServeArgs,
    rt: &tokio::runtime::Runtime,
    target: &Target,
) -> Option<Tokens> {
    if let Some(t) = &target.tokenizer {
        return Some(Tokens::Local(t.clone()));
    }
    let server = Tokens::Server {
        endpoint: target.endpoint.clone(),
        api_key: a.api_key.clone(),
    };
    match rt.block_on(server.encode("probe")) {
        Ok(_) => Some(server),
        Err(e) => {
            eprintln!(
                "warning: random prompt lengths are approximate (one word is about one token in \
                 BPE vocabularies, five in a byte-level one): the server's /tokenize did not \
                 answer ({e}); give --tokenizer for exact lengths"
            );
            None
        }
    }
}

/// `--tokenizer`: a model directory or a pulled model's name.
fn load_tokenizer(spec: &str) -> anyhow::Result<models::tokenizer::Tokenizer> {
    let dir = match models::resolve::resolve_source(Some(spec), &mut |l| eprintln!("{l}"))
        .map_err(|e| anyhow::anyhow!("--tokenizer {spec}: {e}"))?
    {
        models::resolve::ModelSource::Dir(d) => d,
        models::resolve::ModelSource::Dummy(_) => {
            return Err(anyhow::anyhow!(
                "--tokenizer {spec}: give a model directory or name"
            ))
        }
    };
    models::tokenizer::Tokenizer::from_dir(&dir).map_err(|e| anyhow::anyhow!("--tokenizer: {e}"))
}
