//! `pagedrt bench context-scaling`: the time of one decode step against context length t,
//! with the KV cache (the new token's projections plus one row of attention over t cached
//! keys: linear in t) and without it (the whole sequence recomputed: quadratic in t).
//!
//! Cached steps run over caches filled with synthetic K/V (the values do not change the
//! work, and prefilling 16 × 8192 real tokens would take minutes here); uncached steps
//! recompute real sequences and are capped at `--uncached-max-tokens` tokens per step.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use kernels::KvDtype;
use serde::Serialize;

use engine::backend::Backend;
use engine::model::{KvSpec, LlamaModel, Model, ModelConfig};
use models::resolve::resolve_source;
use tools::engines::cpu_model;
use tools::fit::{fit_relative, Fit};
use tools::no_cache::NoCacheRunner;
use tools::plot::{log_log_chart, Line};
use tools::synthetic::synthetic_step;

#[derive(Args, Debug, Clone)]
pub struct ContextScalingArgs {
    /// A model directory, a pulled model's name, dummy:<preset>, or nothing (default model).
    #[arg(long)]
    model: Option<String>,
    /// Context lengths (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4,8,16,32,64,128,256,512,1024,2048,4096,8192"
    )]
    contexts: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch_sizes: Vec<usize>,
    /// Skip uncached points whose step would recompute more than this many tokens
    /// (batch × (t + 1)): they grow quadratically.
    #[arg(long, default_value_t = 2100)]
    uncached_max_tokens: usize,
    /// Timed repetitions per point (the median is reported); slow points run once.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    #[arg(long, default_value_t = 16)]
    block_size: usize,
    /// Storage of the cached K and V (f32 or f16); the uncached baseline stays f32.
    #[arg(long, default_value_t = KvDtype::F32)]
    kv_cache_dtype: KvDtype,
    #[arg(long)]
    json: Option<PathBuf>,
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Write context_scaling.svg here.
    #[arg(long)]
    svg_dir: Option<PathBuf>,
}

/// One timed point.
#[derive(Debug, Clone, Serialize)]
struct Point {
    cached: bool,
    batch: usize,
    context: usize,
    step_s: f64,
    flops: f64,
    gflops_per_s: f64,
}

/// A fit of one (mode, batch) curve.
#[derive(Debug, Clone, Serialize)]
struct CurveFit {
    cached: bool,
    batch: usize,
    /// `a + b·t` (cached) or `a + b·t + c·t²` (uncached), seconds.
    fit: Fit,
    /// Cached only: K/V bytes per context token per step over the t-coefficient, GB/s.
    kv_read_gb_per_s: Option<f64>,
}

#[derive(Serialize)]
struct Report {
    model: String,
    kv_bytes_per_token: usize,
    points: Vec<Point>,
    fits: Vec<CurveFit>,
    /// Per batch size: the first measured t where the uncached step is slower.
    crossover: Vec<(usize, Option<usize>)>,
}

/// FLOPs of one decode step at context `t` for `batch` sequences.
fn step_flops(c: &ModelConfig, batch: usize, t: usize, cached: bool) -> f64 {
    let lm_head = 2.0 * (c.hidden_size * c.vocab_size) as f64;
    let layers = c.flops_per_token() - lm_head;
    // QKᵀ and PV: 2 · head_dim FLOPs each per (query, key) pair, every head and layer.
    let per_pair = 4.0 * (c.num_layers * c.num_heads * c.head_dim) as f64;
    let n = (t + 1) as f64;
    let per_seq = if cached {
        layers + lm_head + per_pair * n
    } else {
        n * layers + lm_head + per_pair * n * (n + 1.0) / 2.0
    };
    batch as f64 * per_seq
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Times `f` `reps` times after one warm-up (once if a run takes over 3 s).
pub(super) fn time(reps: usize, mut f: impl FnMut()) -> f64 {
    let t0 = Instant::now();
    f();
    let first = t0.elapsed().as_secs_f64();
    if first > 3.0 {
        return first;
    }
    median(
        (0..reps.max(1))
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64()
            })
            .collect(),
    )
}

fn measure<B: Backend>(
    a: &ContextScalingArgs,
    b: &B,
    model: &LlamaModel<B>,
) -> anyhow::Result<Vec<Point>> {
    let cfg = &model.config;
    let mut points = Vec::new();
    let mut push = |cached: bool, batch: usize, t: usize, step_s: f64| {
        let flops = step_flops(cfg, batch, t, cached);
        let p = Point {
            cached,
            batch,
            context: t,
            step_s,
            flops,
            gflops_per_s: flops / step_s / 1e9,
        };
        eprintln!(
            "{:<8} batch {:>3}  t {:>5}: {:>10.2} ms  {:>7.1} GFLOP/s",
            if cached { "cached" } else { "uncached" },
            batch,
            t,
            step_s * 1e3,
            p.gflops_per_s
        );
        points.push(p);
    };
    // The step at context t places a token at position t: the longest context the model
    // takes is max_len − 1 (8191 for 8192 positions), so longer ones are clamped to it.
    let max_t = model.max_len().saturating_sub(1);
    let mut contexts: Vec<usize> = a.contexts.iter().map(|&t| t.min(max_t)).collect();
    contexts.dedup();
    if a.contexts.iter().any(|&t| t > max_t) {
        eprintln!("contexts above {max_t} (the model's positions − 1) are measured at {max_t}");
    }
    for &batch in &a.batch_sizes {
        for &t in &contexts {
            let (mut cache, input) =
                synthetic_step(b, cfg, batch, t, 0, a.block_size, a.kv_cache_dtype)?;
            let s = time(a.reps, || {
                let _ = model.forward(b, &input, &mut cache);
            });
            drop(cache);
            push(true, batch, t, s);
            if batch * (t + 1) <= a.uncached_max_tokens {
                let seq: Vec<u32> = (0..=t as u32).map(|i| 100 + i % 1000).collect();
                let seqs: Vec<&[u32]> = (0..batch).map(|_| seq.as_slice()).collect();
                let mut runner = NoCacheRunner::new(b, model);
                let s = time(a.reps.min(3), || {
                    let _ = runner.step(&seqs);
                });
                push(false, batch, t, s);
            }
        }
    }
    Ok(points)
}

fn fits(points: &[Point], kv_bytes: usize) -> Vec<CurveFit> {
    let mut out = Vec::new();
    let mut keys: Vec<(bool, usize)> = points.iter().map(|p| (p.cached, p.batch)).collect();
    keys.sort_by_key(|&(cached, batch)| (batch, !cached));
    keys.dedup();
    for (cached, batch) in keys {
        let pts: Vec<&Point> = points
            .iter()
            .filter(|p| p.cached == cached && p.batch == batch)
            .collect();
        let rows: Vec<Vec<f64>> = pts
            .iter()
            .map(|p| {
                let t = p.context as f64;
                if cached {
                    vec![1.0, t]
                } else {
                    vec![1.0, t, t * t]
                }
            })
            .collect();
        let y: Vec<f64> = pts.iter().map(|p| p.step_s).collect();
        if let Ok(fit) = fit_relative(&rows, &y) {
            let kv_read_gb_per_s = (cached && fit.coef[1] > 0.0)
                .then(|| (batch * kv_bytes) as f64 / fit.coef[1] / 1e9);
            out.push(CurveFit {
                cached,
                batch,
                fit,
                kv_read_gb_per_s,
            });
        }
    }
    out
}

fn markdown(r: &Report) -> String {
    let mut o = format!(
        "Decode step time vs context length t ({}; K/V cache {} bytes per token).\n\n\
         | batch | t | cached ms | cached GFLOP/s | uncached ms | uncached GFLOP/s | uncached / cached |\n\
         |---:|---:|---:|---:|---:|---:|---:|\n",
        r.model, r.kv_bytes_per_token
    );
    for c in r.points.iter().filter(|p| p.cached) {
        let u = r
            .points
            .iter()
            .find(|p| !p.cached && p.batch == c.batch && p.context == c.context);
        o += &format!(
            "| {} | {} | {:.2} | {:.1} | {} | {} | {} |\n",
            c.batch,
            c.context,
            c.step_s * 1e3,
            c.gflops_per_s,
            u.map_or("-".into(), |u| format!("{:.2}", u.step_s * 1e3)),
            u.map_or("-".into(), |u| format!("{:.1}", u.gflops_per_s)),
            u.map_or("-".into(), |u| format!("{:.1}×", u.step_s / c.step_s)),
        );
    }
    o += "\nFits (seconds; relative least squares):\n\n";
    for f in &r.fits {
        let c = &f.fit.coef;
        let form = if f.cached {
            format!("{:.3e} + {:.3e}·t", c[0], c[1])
        } else {
            format!("{:.3e} + {:.3e}·t + {:.3e}·t²", c[0], c[1], c[2])
        };
        o += &format!(
            "- {} batch {}: {form}; RMS relative residual {:.1} %, max {:.1} %{}\n",
            if f.cached { "cached" } else { "uncached" },
            f.batch,
            100.0 * f.fit.rms_rel_residual,
            100.0 * f.fit.max_rel_residual,
            f.kv_read_gb_per_s.map_or(String::new(), |g| format!(
                "; the t-coefficient reads the cached K/V at {g:.1} GB/s"
            )),
        );
    }
    for (batch, t) in &r.crossover {
        o += &format!(
            "- batch {batch}: {}\n",
            t.map_or(
                "the uncached step was never slower in the measured range".into(),
                |t| { format!("uncached is slower from t = {t} on") }
            )
        );
    }
    o
}

pub fn run(a: ContextScalingArgs) -> anyhow::Result<()> {
    if a.contexts.is_empty() || a.batch_sizes.contains(&0) || a.block_size == 0 {
        return Err(anyhow::anyhow!(
            "give at least one context, and positive batch and block sizes"
        ));
    }
    let source = resolve_source(a.model.as_deref(), &mut |l| eprintln!("{l}"))?;
    let (model, _) = cpu_model(&source, 0)?;
    let b = engine::backend::cpu::CpuBackend;
    let points = measure(&a, &b, &model)?;
    let c = &model.config;
    // A page of one token: K and V of every layer.
    let kv_bytes = KvSpec::of(c, a.kv_cache_dtype).bytes_per_token();
    let crossover = a
        .batch_sizes
        .iter()
        .map(|&batch| {
            let t = points
                .iter()
                .filter(|u| !u.cached && u.batch == batch)
                .find(|u| {
                    points.iter().any(|p| {
                        p.cached
                            && p.batch == batch
                            && p.context == u.context
                            && u.step_s > p.step_s
                    })
                })
                .map(|u| u.context);
            (batch, t)
        })
        .collect();
    let report = Report {
        model: a
            .model
            .clone()
            .unwrap_or_else(|| models::pull::DEFAULT_MODEL.into()),
        kv_bytes_per_token: kv_bytes,
        fits: fits(&points, kv_bytes),
        points,
        crossover,
    };
    let md = markdown(&report);
    print!("{md}");
    let write = |p: &PathBuf, s: &str| {
        std::fs::write(p, s).map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))
    };
    if let Some(p) = &a.markdown {
        write(p, &md)?;
    }
    if let Some(p) = &a.json {
        let j = serde_json::to_string_pretty(&report)?;
        write(p, &(j + "\n"))?;
    }
    if let Some(d) = &a.svg_dir {
        std::fs::create_dir_all(d).map_err(|e| anyhow::anyhow!("{}: {e}", d.display()))?;
        plot(&d.join("context_scaling.svg"), &report)?;
    }
    Ok(())
}

fn plot(path: &std::path::Path, r: &Report) -> anyhow::Result<()> {
    let label = |cached: bool, batch: usize| {
        format!(
            "{} batch {batch}",
            if cached { "cached" } else { "uncached" }
        )
    };
    let mut measured = Vec::new();
    let mut fitted = Vec::new();
    for f in &r.fits {
        let pts: Vec<(f64, f64)> = r
            .points
            .iter()
            .filter(|p| p.cached == f.cached && p.batch == f.batch)
            .map(|p| (p.context as f64, p.step_s * 1e3))
            .collect();
        let (lo, hi) = (
            pts.first().map_or(1.0, |p| p.0),
            pts.last().map_or(1.0, |p| p.0),
        );
        let curve = (0..=40)
            .map(|i| {
                let t = lo * (hi / lo).powf(i as f64 / 40.0);
                let x = if f.cached {
                    vec![1.0, t]
                } else {
                    vec![1.0, t, t * t]
                };
                (t, f.fit.predict(&x) * 1e3)
            })
            .collect();
        measured.push(Line {
            name: label(f.cached, f.batch),
            points: pts,
        });
        fitted.push(Line {
            name: format!("fit, {}", label(f.cached, f.batch)),
            points: curve,
        });
    }
    Ok(log_log_chart(
        path,
        "One decode step vs context length",
        "context length t (tokens)",
        "step time (ms)",
        &measured,
        &fitted,
    )?)
}
