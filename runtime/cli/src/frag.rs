//! `pagedrt frag`: the KV-cache fragmentation study (paged vs contiguous allocators under one
//! budget), with a markdown table, JSON, CSV and SVG charts.

use clap::Args;
use scheduler::frag::{
    final_len, prepare_workload, AllocatorReport, AllocatorSpec, Fit, FragConfig,
};
use scheduler::sim::SimRequest;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::engine_args::parse_bytes;
use super::workload_args::WorkloadArgs;
use models::dummy::dummy_config;
use tools::plot::{line_chart, stacked_bars, Line};

#[derive(Args, Debug, Clone)]
pub struct FragArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// KV memory: a token count (200000) or bytes with a unit (24GiB, converted with the
    /// shape of --model and --kv-dtype).
    #[arg(long, default_value = "200000")]
    memory: String,
    /// Model preset whose K/V shape converts bytes to tokens (llama-3-8b, llama-3.2-1b,
    /// qwen2-0.5b, smollm2-135m, tiny, or a config.json).
    #[arg(long, default_value = "llama-3-8b")]
    model: String,
    /// Bytes per K/V element: f32, bf16 or f16.
    #[arg(long, default_value = "bf16")]
    kv_dtype: String,
    /// Comma-separated allocators (default: paged-1 ... paged-256, paged-16-noshare and the
    /// three contiguous reservations). Names: paged-BS, paged-BS-noshare,
    /// contiguous-max-len, contiguous-max-tokens, contiguous-oracle (+ -best-fit).
    #[arg(long, value_delimiter = ',')]
    allocators: Vec<String>,
    /// Placement of the default contiguous allocators: first or best.
    #[arg(long, default_value = "first")]
    fit: String,
    #[arg(long, default_value_t = 4096)]
    max_model_len: usize,
    /// Every request's max_tokens: outputs are capped at it; Orca "Max" reserves it.
    #[arg(long, default_value_t = 1024)]
    max_tokens: usize,
    #[arg(long, default_value_t = 256)]
    max_num_seqs: usize,
    #[arg(long, default_value_t = 8192)]
    max_num_batched_tokens: usize,
    #[arg(long)]
    no_chunked_prefill: bool,
    #[arg(long, default_value_t = 0.01)]
    watermark: f64,
    /// Step times: a preset (h100-llama3-8b, cpu-smollm2-135m) or a JSON file.
    #[arg(long, default_value = "h100-llama3-8b")]
    cost_model: String,
    /// Write the results as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write one CSV row per allocator.
    #[arg(long)]
    csv: Option<PathBuf>,
    /// Write each allocator's partition over time as CSV.
    #[arg(long)]
    series_csv: Option<PathBuf>,
    /// Write the markdown report to this file as well as stdout.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write SVG charts (Figure-2-style bars, block-size sweep, usage over time) here.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
    #[arg(long)]
    quiet: bool,
}

/// The JSON document.
#[derive(Serialize)]
struct Study<'a> {
    workload: &'a str,
    requests: usize,
    dropped_too_long: usize,
    memory_tokens: usize,
    max_model_len: usize,
    max_tokens: usize,
    cost_model: &'a str,
    mean_prompt_len: f64,
    mean_output_len: f64,
    allocators: &'a [AllocatorReport],
}

/// K/V bytes per token of a model preset.
fn kv_bytes_per_token(model: &str, dtype: &str) -> anyhow::Result<usize> {
    let c = dummy_config(model)?;
    let elem = match dtype {
        "f32" => 4,
        "bf16" | "f16" => 2,
        d => return Err(anyhow::anyhow!("--kv-dtype '{d}': one of f32, bf16, f16")),
    };
    Ok(2 * c.num_layers * c.num_kv_heads * c.head_dim * elem)
}

/// `--memory` in tokens.
fn memory_tokens(a: &FragArgs) -> anyhow::Result<usize> {
    let m = a.memory.trim();
    if let Ok(tokens) = m.parse::<usize>() {
        return Ok(tokens);
    }
    let bytes = parse_bytes(m).map_err(anyhow::Error::msg)?;
    Ok(bytes / kv_bytes_per_token(&a.model, &a.kv_dtype)?)
}

fn specs(a: &FragArgs) -> anyhow::Result<Vec<AllocatorSpec>> {
    let fit = match a.fit.as_str() {
        "first" => Fit::First,
        "best" => Fit::Best,
        f => return Err(anyhow::anyhow!("--fit '{f}': first or best")),
    };
    if a.allocators.is_empty() {
        return Ok(AllocatorSpec::default_set(fit));
    }
    a.allocators
        .iter()
        .map(|s| Ok(AllocatorSpec::parse(s.trim())?))
        .collect()
}

pub fn run(a: FragArgs) -> anyhow::Result<()> {
    let specs = specs(&a)?;
    let (raw, prefix_len) = a.workload.generate(a.workload.request_rate)?;
    let cfg = FragConfig {
        budget_tokens: memory_tokens(&a)?,
        max_model_len: a.max_model_len,
        max_tokens: a.max_tokens,
        max_num_seqs: a.max_num_seqs,
        max_num_batched_tokens: a.max_num_batched_tokens,
        enable_chunked_prefill: !a.no_chunked_prefill,
        watermark: a.watermark,
        cost_model: tools::sim_inputs::load_cost_model(&a.cost_model)?,
        shared_prefix_len: prefix_len,
        series_points: 2000,
    };
    let (reqs, dropped) = prepare_workload(&cfg, &raw);
    if reqs.is_empty() {
        return Err(anyhow::anyhow!(
            "no request fits max_model_len with its max_tokens"
        ));
    }
    let bar = super::progress_bar(
        reqs.len() * specs.len(),
        a.quiet,
        "{msg} [{bar:40}] {pos}/{len} request replays ({elapsed}, eta {eta})",
    )?;
    bar.set_message(format!("{} allocators", specs.len()));
    let reports = tools::frag_study::run_study(&cfg, &specs, &reqs, &|d| bar.inc(d as u64))?;
    bar.finish_and_clear();
    let mean = |f: &dyn Fn(&SimRequest) -> usize| {
        reqs.iter().map(|r| f(r) as f64).sum::<f64>() / reqs.len() as f64
    };
    let study = Study {
        workload: &a.workload.workload,
        requests: reqs.len(),
        dropped_too_long: dropped,
        memory_tokens: cfg.budget_tokens,
        max_model_len: cfg.max_model_len,
        max_tokens: cfg.max_tokens,
        cost_model: &cfg.cost_model.name,
        mean_prompt_len: mean(&|r| r.prompt_len),
        mean_output_len: mean(&|r| r.output_len),
        allocators: &reports,
    };
    let md = markdown(&study, &reqs);
    print!("{md}");
    if let Some(p) = &a.markdown {
        write(p, &md)?;
    }
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&study)?;
        write(p, &(j + "\n"))?;
    }
    if let Some(p) = &a.csv {
        write(p, &csv(&reports))?;
    }
    if let Some(p) = &a.series_csv {
        write_series(p, &reports)?;
    }
    if let Some(d) = &a.svg_dir {
        plots(d, &reports)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// The table and one sentence per contiguous allocator on why it lands where it does.
fn markdown(s: &Study<'_>, reqs: &[SimRequest]) -> String {
    let mut o = String::new();
    o += &format!(
        "KV-cache fragmentation study: {} requests ({}; mean prompt {:.0}, mean output {:.0} \
         tokens), {} token slots of KV memory, max_model_len {}, max_tokens {}, cost model {}.\n\
         Shares are time averages over the run, of the whole budget; \"useful of allocated\" is \
         the share of memory taken by sequences that holds token states.\n\n",
        s.requests,
        s.workload,
        s.mean_prompt_len,
        s.mean_output_len,
        s.memory_tokens,
        s.max_model_len,
        s.max_tokens,
        s.cost_model
    );
    o += "| allocator | useful % | reserved % | internal % | external % | free % | useful of allocated % | peak useful % | shared % | max concurrency | req/s | mean TTFT s | median e2e s | preemptions |\n";
    o += "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n";
    for r in s.allocators {
        let m = &r.mean;
        o += &format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.2} | {} |\n",
            r.name,
            pct(m.useful_frac),
            pct(m.reserved_frac),
            pct(m.internal_frac),
            pct(m.external_frac),
            pct(m.free_frac),
            pct(m.useful_of_allocated),
            pct(r.peak.useful_frac),
            pct(m.shared_frac),
            r.max_concurrency,
            r.request_throughput,
            r.ttft_s.mean,
            r.e2e_s.median,
            r.preemptions
        );
    }
    let n = reqs.len() as f64;
    let final_mean = reqs.iter().map(|r| final_len(r) as f64).sum::<f64>() / n;
    let prompt_mean = s.mean_prompt_len;
    let explain = |name: &str| -> Option<String> {
        let r = s.allocators.iter().find(|r| r.name.starts_with(name))?;
        let u = pct(r.mean.useful_of_allocated);
        Some(match name {
            "contiguous-max-len" => format!(
                "- **{}** ({u} % useful): every sequence reserves max_model_len = {} slots \
                 while a request ends with {final_mean:.0} states on average, so at most \
                 {:.1} % of a reservation can ever hold tokens, and less while it is still \
                 being generated.\n",
                r.name,
                s.max_model_len,
                100.0 * final_mean / s.max_model_len as f64
            ),
            "contiguous-max-tokens" => format!(
                "- **{}** ({u} % useful): a reservation is prompt + max_tokens − 1 ≈ {:.0} \
                 slots against {final_mean:.0} used at the end; the gap (internal) is the \
                 answer length the client allowed but the model did not use, and the part \
                 not yet generated shows as reserved.\n",
                r.name,
                prompt_mean + s.max_tokens as f64 - 1.0
            ),
            "contiguous-oracle" => format!(
                "- **{}** ({u} % useful): it knows each final length, so nothing is internal; \
                 what remains is the part of each reservation still waiting for its tokens \
                 (on average half the output, held from admission) and holes left by \
                 finished requests between live ones.\n",
                r.name
            ),
            _ => String::new(),
        })
    };
    o += "\n";
    for name in [
        "contiguous-max-len",
        "contiguous-max-tokens",
        "contiguous-oracle",
    ] {
        if let Some(line) = explain(name) {
            o += &line;
        }
    }
    if let Some(r) = s.allocators.iter().find(|r| r.name == "paged-16") {
        o += &format!(
            "- **paged-16** ({} % useful): pages are taken as tokens arrive, so the only \
             waste is the unfilled part of each sequence's last page (under 16 slots per \
             sequence) and no reservation or hole exists.\n",
            pct(r.mean.useful_of_allocated)
        );
    }
    o
}

fn csv(reports: &[AllocatorReport]) -> String {
    let mut o = String::from(
        "name,kind,block_size,fit,useful_frac,reserved_frac,internal_frac,external_frac,\
         free_frac,shared_frac,useful_of_allocated,peak_useful_frac,max_concurrency,\
         request_throughput,output_token_throughput,completed,rejected,preemptions,\
         duration_s,mean_ttft_s,median_e2e_s\n",
    );
    for r in reports {
        let m = &r.mean;
        o += &format!(
            "{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{:.6},{},{:.4},{:.2},{},{},{},{:.4},{:.4},{:.4}\n",
            r.name,
            r.kind,
            r.block_size.map_or(String::new(), |b| b.to_string()),
            r.fit.unwrap_or(""),
            m.useful_frac,
            m.reserved_frac,
            m.internal_frac,
            m.external_frac,
            m.free_frac,
            m.shared_frac,
            m.useful_of_allocated,
            r.peak.useful_frac,
            r.max_concurrency,
            r.request_throughput,
            r.output_token_throughput,
            r.completed,
            r.rejected,
            r.preemptions,
            r.duration_s,
            r.ttft_s.mean,
            r.e2e_s.median
        );
    }
    o
}

fn write_series(path: &Path, reports: &[AllocatorReport]) -> anyhow::Result<()> {
    let io = |e: std::io::Error| anyhow::anyhow!("{}: {e}", path.display());
    let mut f = std::fs::File::create(path)
        .map(std::io::BufWriter::new)
        .map_err(io)?;
    writeln!(
        f,
        "allocator,t_s,useful,reserved,internal,external,free,shared"
    )
    .map_err(io)?;
    for r in reports {
        for m in &r.series {
            let b = m.breakdown;
            writeln!(
                f,
                "{},{:.6},{},{},{},{},{},{}",
                r.name, m.t_s, b.useful, b.reserved, b.internal, b.external, b.free, b.shared
            )
            .map_err(io)?;
        }
    }
    f.flush().map_err(io)
}

fn plots(dir: &Path, reports: &[AllocatorReport]) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("{}: {e}", dir.display()))?;
    let allocated: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|r| {
            let m = &r.mean;
            let a = (m.useful_frac + m.reserved_frac + m.internal_frac).max(f64::MIN_POSITIVE);
            let share = |x: f64| 100.0 * x / a;
            (
                r.name.clone(),
                vec![
                    share(m.useful_frac),
                    share(m.reserved_frac),
                    share(m.internal_frac),
                ],
            )
        })
        .collect();
    stacked_bars(
        &dir.join("figure2_allocated.svg"),
        "Where allocated KV memory goes (time average)",
        "% of allocated KV memory",
        &["token states", "reserved", "internal fragmentation"],
        &allocated,
    )?;
    let budget: Vec<(String, Vec<f64>)> = reports
        .iter()
        .map(|r| {
            let m = &r.mean;
            (
                r.name.clone(),
                [
                    m.useful_frac,
                    m.reserved_frac,
                    m.internal_frac,
                    m.external_frac,
                    m.free_frac,
                ]
                .iter()
                .map(|x| 100.0 * x)
                .collect(),
            )
        })
        .collect();
    stacked_bars(
        &dir.join("budget_breakdown.svg"),
        "The whole KV budget (time average)",
        "% of KV memory",
        &["token states", "reserved", "internal", "external", "free"],
        &budget,
    )?;
    let paged: Vec<&AllocatorReport> = reports
        .iter()
        .filter(|r| r.kind == "paged" && r.name.ends_with(|c: char| c.is_ascii_digit()))
        .collect();
    if paged.len() > 1 {
        let sweep = |f: &dyn Fn(&AllocatorReport) -> f64| -> Vec<(f64, f64)> {
            paged
                .iter()
                .filter_map(|r| Some(((r.block_size? as f64).log2(), f(r))))
                .collect()
        };
        line_chart(
            &dir.join("block_size_useful.svg"),
            "Useful share of allocated memory vs block size",
            "log2(block size)",
            "% useful of allocated",
            &[Line {
                name: String::new(),
                points: sweep(&|r| 100.0 * r.mean.useful_of_allocated),
            }],
        )?;
        line_chart(
            &dir.join("block_size_throughput.svg"),
            "Request throughput vs block size",
            "log2(block size)",
            "requests/s",
            &[Line {
                name: String::new(),
                points: sweep(&|r| r.request_throughput),
            }],
        )?;
    }
    let over_time: Vec<Line> = reports
        .iter()
        .filter(|r| r.kind == "contiguous" || r.name == "paged-16")
        .map(|r| Line {
            name: r.name.clone(),
            points: r
                .series
                .iter()
                .map(|m| {
                    let b = m.breakdown;
                    (m.t_s, 100.0 * b.useful as f64 / b.total().max(1) as f64)
                })
                .collect(),
        })
        .collect();
    Ok(line_chart(
        &dir.join("useful_over_time.svg"),
        "KV memory holding token states over time",
        "time (s)",
        "% of KV memory",
        &over_time,
    )?)
}
