//! `pagedrt simulate`: the scheduler on a virtual clock, with reports.

use clap::Args;
use scheduler::sim::{simulate, SimConfig, SimResult, Slo};
use scheduler::SchedulerConfig;

use crate::choices::{Policy, Preemption};
use std::io::Write;
use std::path::PathBuf;

use super::workload_args::WorkloadArgs;
use tools::plot::{cdf, line_chart, Line};

#[derive(Args, Debug, Clone)]
pub struct SimulateArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// A preset (h100-llama3-8b, cpu-smollm2-135m) or a JSON file.
    #[arg(long, default_value = "h100-llama3-8b")]
    cost_model: String,
    /// Multiply every step's time by this factor: the same model on a machine that much
    /// slower (above 1) or faster. `pagedrt bench check-steps` measures the factor a real
    /// run had against the model (its `ratio`).
    #[arg(long, default_value_t = 1.0, value_parser = parse_scale)]
    cost_scale: f64,
    /// One policy or a comma-separated list.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "fcfs")]
    policy: Vec<Policy>,
    #[arg(long, value_enum, default_value_t = Preemption::Recompute)]
    preemption_mode: Preemption,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Device KV pages (default: the cost model's capacity).
    #[arg(long)]
    num_blocks: Option<usize>,
    /// Host swap pages.
    #[arg(long, default_value_t = 0)]
    swap_blocks: usize,
    #[arg(long, default_value_t = 0.01)]
    watermark: f64,
    #[arg(long)]
    no_prefix_caching: bool,
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 8192)]
    max_num_batched_tokens: usize,
    #[arg(long)]
    long_prefill_threshold: Option<usize>,
    #[arg(long)]
    no_chunked_prefill: bool,
    #[arg(long)]
    max_model_len: Option<usize>,
    /// SLOs for goodput, in milliseconds: ttft:MS tpot:MS e2el:MS.
    #[arg(long, num_args = 1..)]
    goodput: Vec<String>,
    /// Run once per rate (comma-separated), for every policy given.
    #[arg(long, value_delimiter = ',')]
    sweep_rates: Vec<f64>,
    /// Write the summary as JSON (an array for sweeps).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per request.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write the time series (running/waiting/swapped, KV usage, fragmentation) as CSV.
    #[arg(long)]
    series_csv: Option<PathBuf>,
    /// Write SVG plots (latency CDFs, KV usage over time, rate sweeps) into this folder.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

/// `--cost-scale`: a positive, finite factor.
fn parse_scale(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f.is_finite() && f > 0.0 => Ok(f),
        _ => Err(format!("`{s}`: expected a positive number")),
    }
}

fn config(a: &SimulateArgs, policy: &str, prefix_len: usize) -> anyhow::Result<SimConfig> {
    let mut cost_model = tools::sim_inputs::load_cost_model(&a.cost_model)?;
    if a.cost_scale != 1.0 {
        cost_model = cost_model.scaled(a.cost_scale);
    }
    let num_blocks = match (a.num_blocks, cost_model.kv_capacity_tokens) {
        (Some(n), _) => n,
        (None, Some(t)) => t / a.block_size.max(1),
        (None, None) => {
            return Err(anyhow::anyhow!(
                "the cost model names no KV capacity: pass --num-blocks"
            ))
        }
    };
    Ok(SimConfig {
        scheduler: SchedulerConfig {
            max_num_batched_tokens: a.max_num_batched_tokens,
            max_num_seqs: a.max_num_seqs,
            long_prefill_threshold: a.long_prefill_threshold,
            enable_chunked_prefill: !a.no_chunked_prefill,
            preemption_mode: a.preemption_mode.mode(),
            max_model_len: a.max_model_len,
            ..SchedulerConfig::default()
        },
        policy: policy.to_string(),
        block_size: a.block_size,
        num_blocks,
        num_host_blocks: a.swap_blocks,
        watermark: a.watermark,
        enable_prefix_caching: !a.no_prefix_caching,
        cost_model,
        shared_prefix_len: prefix_len,
        slo: Slo::parse(&a.goodput)?,
        series_every: 1,
    })
}

fn run_one(a: &SimulateArgs, policy: &str, rate: f64) -> anyhow::Result<SimResult> {
    let (reqs, prefix_len) = a.workload.generate(rate)?;
    let cfg = config(a, policy, prefix_len)?;
    let bar = super::progress_bar(
        reqs.len(),
        a.quiet,
        "{msg} [{bar:40}] {pos}/{len} requests ({elapsed})",
    )?;
    bar.set_message(format!("{policy} @ {rate} req/s"));
    let r = simulate(&cfg, &reqs, &mut |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    Ok(r)
}

pub fn run(a: SimulateArgs) -> anyhow::Result<()> {
    let policies: Vec<&str> = a.policy.iter().map(|p| p.name()).collect();
    let rates = if a.sweep_rates.is_empty() {
        vec![a.workload.request_rate]
    } else {
        a.sweep_rates.clone()
    };
    let mut results = Vec::new();
    for p in &policies {
        for &rate in &rates {
            let r = run_one(&a, p, rate)?;
            print_summary(&r, rate);
            results.push((p.to_string(), rate, r));
        }
    }
    if let Some(path) = &a.json {
        let json = if results.len() == 1 {
            serde_json::to_string_pretty(&results[0].2)
        } else {
            serde_json::to_string_pretty(&results.iter().map(|x| &x.2).collect::<Vec<_>>())
        }?;
        std::fs::write(path, json + "\n")
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    }
    if let Some(path) = &a.csv {
        write_requests_csv(path, &results)?;
    }
    if let Some(path) = &a.series_csv {
        write_series_csv(path, &results)?;
    }
    if let Some(dir) = &a.svg_dir {
        write_plots(dir, &results, rates.len() > 1)?;
    }
    Ok(())
}

fn print_summary(r: &SimResult, rate: f64) {
    println!(
        "== {} @ {rate} req/s, cost model {}: {} requests ({} completed, {} rejected) in {:.2} s \
         simulated, {} steps",
        r.policy, r.cost_model, r.requests, r.completed, r.rejected, r.duration_s, r.steps
    );
    println!(
        "   throughput {:.2} req/s, {:.1} output tok/s, {:.1} total tok/s; preemptions {}; \
         prefix hit rate {:.1} %; KV usage mean {:.1} % peak {:.1} %",
        r.request_throughput,
        r.output_token_throughput,
        r.total_token_throughput,
        r.preemptions,
        100.0 * r.prefix_hit_rate,
        100.0 * r.mean_kv_usage,
        100.0 * r.peak_kv_usage
    );
    if let Some(g) = r.goodput {
        println!("   goodput {g:.2} req/s");
    }
    println!(
        "   {:<6} {:>10} {:>10} {:>10} {:>10} (ms)",
        "", "mean", "median", "p90", "p99"
    );
    for (name, s) in [
        ("TTFT", &r.ttft_s),
        ("TPOT", &r.tpot_s),
        ("ITL", &r.itl_s),
        ("E2E", &r.e2e_s),
        ("queue", &r.queue_s),
    ] {
        println!(
            "   {:<6} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            1e3 * s.mean,
            1e3 * s.median,
            1e3 * s.p90,
            1e3 * s.p99
        );
    }
}

fn create(path: &PathBuf) -> anyhow::Result<std::io::BufWriter<std::fs::File>> {
    std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn write_requests_csv(path: &PathBuf, results: &[(String, f64, SimResult)]) -> anyhow::Result<()> {
    let mut f = create(path)?;
    let io = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    writeln!(f, "policy,rate,id,arrival_s,prompt_len,output_len,ttft_s,tpot_s,e2e_s,queue_s,preemptions,rejected")
        .map_err(io)?;
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.6}"));
    for (p, rate, r) in results {
        for q in &r.records {
            writeln!(
                f,
                "{p},{rate},{},{:.6},{},{},{},{},{},{},{},{}",
                q.id,
                q.arrival_s,
                q.prompt_len,
                q.output_len,
                opt(q.ttft()),
                opt(q.tpot()),
                opt(q.e2e()),
                opt(q.queue()),
                q.preemptions,
                q.rejected.as_deref().unwrap_or("").replace(',', ";")
            )
            .map_err(io)?;
        }
    }
    f.flush().map_err(io)
}

fn write_series_csv(path: &PathBuf, results: &[(String, f64, SimResult)]) -> anyhow::Result<()> {
    let mut f = create(path)?;
    let io = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    writeln!(f, "policy,rate,t_s,running,waiting,swapped,step_tokens,kv_usage,kv_internal_fragmentation,kv_shared_tokens,kv_cached_free_blocks")
        .map_err(io)?;
    for (p, rate, r) in results {
        for s in &r.series {
            writeln!(
                f,
                "{p},{rate},{:.6},{},{},{},{},{:.6},{:.6},{},{}",
                s.t_s,
                s.running,
                s.waiting,
                s.swapped,
                s.step_tokens,
                s.kv_usage,
                s.kv_internal_fragmentation,
                s.kv_shared_tokens,
                s.kv_cached_free_blocks
            )
            .map_err(io)?;
        }
    }
    f.flush().map_err(io)
}

fn write_plots(
    dir: &PathBuf,
    results: &[(String, f64, SimResult)],
    sweep: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let label = |p: &str, rate: f64| format!("{p} @ {rate} req/s");
    let cdf_lines = |f: &dyn Fn(&SimResult) -> Vec<f64>| -> Vec<Line> {
        results
            .iter()
            .map(|(p, rate, r)| {
                let mut v = f(r);
                v.sort_unstable_by(f64::total_cmp);
                Line {
                    name: label(p, *rate),
                    points: cdf(&v, 2000),
                }
            })
            .collect()
    };
    let ms = |v: Option<f64>| v.map(|x| x * 1e3);
    line_chart(
        &dir.join("ttft_cdf.svg"),
        "TTFT CDF",
        "time to first token (ms)",
        "fraction of requests",
        &cdf_lines(&|r| r.records.iter().filter_map(|q| ms(q.ttft())).collect()),
    )?;
    line_chart(
        &dir.join("tpot_cdf.svg"),
        "TPOT CDF",
        "time per output token (ms)",
        "fraction of requests",
        &cdf_lines(&|r| r.records.iter().filter_map(|q| ms(q.tpot())).collect()),
    )?;
    line_chart(
        &dir.join("itl_cdf.svg"),
        "Inter-token latency CDF",
        "inter-token latency (ms)",
        "fraction of tokens",
        &cdf_lines(&|r| r.itls.iter().map(|x| x * 1e3).collect()),
    )?;
    line_chart(
        &dir.join("e2e_cdf.svg"),
        "End-to-end latency CDF",
        "end-to-end latency (s)",
        "fraction of requests",
        &cdf_lines(&|r| r.records.iter().filter_map(|q| q.e2e()).collect()),
    )?;
    let thin = |r: &SimResult, f: &dyn Fn(&scheduler::sim::TimePoint) -> f64| {
        let step = (r.series.len() / 2000).max(1);
        r.series
            .iter()
            .step_by(step)
            .map(|s| (s.t_s, f(s)))
            .collect()
    };
    line_chart(
        &dir.join("kv_usage.svg"),
        "KV cache usage over time",
        "time (s)",
        "used pages (%)",
        &results
            .iter()
            .map(|(p, rate, r)| Line {
                name: label(p, *rate),
                points: thin(r, &|s| 100.0 * s.kv_usage),
            })
            .collect::<Vec<_>>(),
    )?;
    line_chart(
        &dir.join("queues.svg"),
        "Running and waiting requests over time",
        "time (s)",
        "requests",
        &results
            .iter()
            .flat_map(|(p, rate, r)| {
                [
                    Line {
                        name: format!("running, {}", label(p, *rate)),
                        points: thin(r, &|s| s.running as f64),
                    },
                    Line {
                        name: format!("waiting, {}", label(p, *rate)),
                        points: thin(r, &|s| s.waiting as f64),
                    },
                ]
            })
            .collect::<Vec<_>>(),
    )?;
    if sweep {
        let by_policy = |f: &dyn Fn(&SimResult) -> f64| -> Vec<Line> {
            let mut names: Vec<&String> = results.iter().map(|x| &x.0).collect();
            names.dedup();
            names
                .into_iter()
                .map(|p| Line {
                    name: p.clone(),
                    points: results
                        .iter()
                        .filter(|x| &x.0 == p)
                        .map(|x| (x.1, f(&x.2)))
                        .collect(),
                })
                .collect()
        };
        line_chart(
            &dir.join("sweep_throughput.svg"),
            "Output throughput vs request rate",
            "request rate (req/s)",
            "output tokens/s",
            &by_policy(&|r| r.output_token_throughput),
        )?;
        line_chart(
            &dir.join("sweep_p99_ttft.svg"),
            "p99 TTFT vs request rate",
            "request rate (req/s)",
            "p99 TTFT (ms)",
            &by_policy(&|r| 1e3 * r.ttft_s.p99),
        )?;
        line_chart(
            &dir.join("sweep_p99_tpot.svg"),
            "p99 TPOT vs request rate",
            "request rate (req/s)",
            "p99 TPOT (ms)",
            &by_policy(&|r| 1e3 * r.tpot_s.p99),
        )?;
    }
    Ok(())
}
