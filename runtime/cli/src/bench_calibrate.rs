//! `pagedrt bench calibrate`: time the real engine's forward pass over a designed set of step
//! shapes and fit the simulator's cost model to them (`pagedrt simulate --cost-model F`).

use std::path::PathBuf;

use clap::Args;
use kernels::KvDtype;
use scheduler::sim::CostModel;

use super::bench_context::time;
use super::engine_args::parse_bytes;
use engine::model::{KvSpec, Model};
use models::resolve::{resolve_source, ModelSource};
use tools::calibrate::{choose_knee, design, fit_cost_model, load_step_log, StepCounts};
use tools::engines::cpu_model;
use tools::synthetic::synthetic_step;

#[derive(Args, Debug, Clone)]
pub struct CalibrateArgs {
    /// A model directory, a pulled model's name, dummy:<preset>, or nothing (default model).
    #[arg(long)]
    model: Option<String>,
    /// Where to write the cost model (JSON).
    #[arg(long)]
    out: PathBuf,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// The KV cache the served engine will have (sets the model's capacity in tokens).
    #[arg(long, default_value = "2GiB")]
    kv_cache_memory: String,
    /// The served engine's --kv-cache-dtype (its bytes per token and capacity).
    #[arg(long, default_value_t = KvDtype::F32)]
    kv_cache_dtype: KvDtype,
    /// Timed repetitions per shape (median); slow shapes run once.
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Steps of at most this many rows follow the small-batch law: `auto` picks the knee
    /// that best predicts held-out steps; 0 fits one law for all steps.
    #[arg(long, default_value = "auto", value_parser = parse_knee)]
    knee: Knee,
    /// Fit to the steps a server recorded (`pagedrt serve --step-log FILE`) instead of
    /// timing designed steps: the cost then includes what serving adds to each step (HTTP
    /// and streaming threads sharing the cores).
    #[arg(long)]
    from_steps: Option<PathBuf>,
}

/// `--knee`: a row count, or `auto`.
#[derive(Debug, Clone, Copy)]
enum Knee {
    Auto,
    Rows(usize),
}

fn parse_knee(s: &str) -> Result<Knee, String> {
    if s == "auto" {
        return Ok(Knee::Auto);
    }
    s.parse()
        .map(Knee::Rows)
        .map_err(|_| format!("`{s}`: expected `auto` or a number of rows"))
}

/// Times every designed step shape on the CPU backend.
fn time_design(
    model: &engine::model::LlamaModel<engine::backend::cpu::CpuBackend>,
    a: &CalibrateArgs,
) -> anyhow::Result<Vec<(StepCounts, f64)>> {
    let b = engine::backend::cpu::CpuBackend;
    let mut samples = Vec::new();
    for shape in design() {
        let (mut cache, batch) = synthetic_step(
            &b,
            model.config(),
            shape.decodes,
            shape.context,
            shape.prefill,
            a.block_size,
            a.kv_cache_dtype,
        )?;
        let s = time(a.reps, || {
            let _ = model.forward(&b, &batch, &mut cache);
        });
        eprintln!(
            "decodes {:>3} @ context {:>5} + prefill {:>5}: {:>9.2} ms",
            shape.decodes,
            shape.context,
            shape.prefill,
            s * 1e3
        );
        samples.push((shape.counts(), s));
    }
    Ok(samples)
}

pub fn run(a: CalibrateArgs) -> anyhow::Result<()> {
    let source = resolve_source(a.model.as_deref(), &mut |l| eprintln!("{l}"))?;
    let (cfg, samples) = match &a.from_steps {
        Some(path) => {
            let samples = load_step_log(path)?;
            eprintln!("{} steps from {}", samples.len(), path.display());
            let cfg = match &source {
                ModelSource::Dir(dir) => {
                    models::config::from_file(&models::config::config_path(dir))
                }
                ModelSource::Dummy(spec) => models::dummy::dummy_config(spec),
            }?;
            (cfg, samples)
        }
        None => {
            let (model, _) = cpu_model(&source, 0)?;
            let samples = time_design(&model, &a)?;
            (model.config().clone(), samples)
        }
    };
    let cfg = &cfg;
    let dtype = a.kv_cache_dtype;
    let spec = KvSpec::of(cfg, dtype);
    let kv = spec.bytes_per_token() as f64;
    let bytes = parse_bytes(&a.kv_cache_memory).map_err(anyhow::Error::msg)?;
    let blocks = bytes / spec.bytes_per_block(a.block_size);
    let name = format!(
        "calibrated:{}",
        a.model.as_deref().unwrap_or(models::pull::DEFAULT_MODEL)
    );
    // The step coefficients are all fitted; the rest describes this machine's KV cache.
    let base = CostModel {
        name,
        // Swapping on the CPU is a memory copy: ~10 GB/s here.
        per_swap_byte_s: 1.0 / 10e9,
        kv_bytes_per_token: kv,
        kv_capacity_tokens: Some(blocks * a.block_size),
        ..CostModel::constant(0.0)
    };
    let knee = match a.knee {
        Knee::Rows(k) => k,
        Knee::Auto => {
            let (k, err) = choose_knee(&samples, &base)?;
            println!(
                "knee: {k} rows (leave-one-out relative error RMS {:.1} %)",
                100.0 * err
            );
            k
        }
    };
    let (cm, fit) = fit_cost_model(&samples, &base, knee)?;
    if a.from_steps.is_none() {
        println!("| decodes | context tokens | prefill | measured ms | model ms | error |");
        println!("|---:|---:|---:|---:|---:|---:|");
        for (c, y) in &samples {
            let p = fit.predict(&c.features(knee));
            println!(
                "| {} | {} | {} | {:.2} | {:.2} | {:+.1} % |",
                c.decode_seqs,
                c.context_tokens,
                c.prefill_tokens,
                y * 1e3,
                p * 1e3,
                100.0 * (p - y) / y
            );
        }
    }
    println!(
        "\nstep = {:.3e} + (rows <= {}: {:.3e}·rows; else {:.3e} + {:.3e}·prefill_tokens + \
         {:.3e}·decode_seqs) + {:.3e}·context_tokens + {:.3e}·prefill_pairs s; relative error \
         RMS {:.1} %, max {:.1} %",
        cm.step_overhead_s,
        cm.small_batch_rows,
        cm.small_batch_per_row_s,
        cm.gemm_switch_s,
        cm.per_prefill_token_s,
        cm.per_decode_seq_s,
        cm.per_context_token_s,
        cm.per_prefill_attention_pair_s,
        100.0 * fit.rms_rel_residual,
        100.0 * fit.max_rel_residual
    );
    let j = serde_json::to_string_pretty(&cm)?;
    std::fs::write(&a.out, j + "\n").map_err(|e| anyhow::anyhow!("{}: {e}", a.out.display()))?;
    println!("wrote {}", a.out.display());
    Ok(())
}
