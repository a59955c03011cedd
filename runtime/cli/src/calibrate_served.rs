//! `pagedrt bench calibrate` by default: serve a calibration load and time the steps the
//! server really ran.
//!
//! Why serving and not designed steps timed alone: on a CPU engine the HTTP, tokenizer and
//! streaming threads share the cores with the engine, and a step the engine runs while they
//! work takes longer than the same step timed alone (20-25 % on the 2-core machines here,
//! benches/RESULTS.md, issue 7); a cost model fitted to isolated steps predicts a served run
//! that much too fast, and queueing magnifies it (issue 27: +18 % throughput, -55 % median
//! TTFT). So the engine is served in-process (`pagedrt serve` with its step log) and driven
//! by the load generator over HTTP with three loads that cover what serving meets: sparse
//! arrivals of mixed lengths, a busier mix, and a burst whose decode batches run from large
//! to one over a spread of contexts (so per-sequence and per-context costs are told apart).

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use scheduler::sim::LenDist;
use std::sync::Mutex;
use tools::calibrate::{read_step_log, StepCounts};
use tools::loadgen::arrivals::{arrival_times, Ramp};
use tools::loadgen::dataset::{build, DatasetSpec};
use tools::loadgen::exact_len::{fit_lengths, Tokens};
use tools::loadgen::http::Endpoint;
use tools::loadgen::run::{run as run_load, Target};

use engine::backend::cpu::CpuBackend;
use engine::model::Model;
use engine::{EngineConfig, KvDtype};
use models::resolve::ModelSource;
use scheduler::SchedulerConfig;

/// The step log, in memory.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// (requests, rate, prompt lengths, output lengths, seed) of the calibration loads.
const LOADS: [(usize, f64, &str, &str, u64); 3] = [
    (30, 0.7, "uniform:8:400", "uniform:4:96", 7),
    (50, 4.0, "uniform:8:600", "uniform:4:48", 8),
    (48, f64::INFINITY, "uniform:8:128", "uniform:32:160", 9),
];

/// Serves `source` on 127.0.0.1 as `pagedrt serve` would (`kv_bytes` of cache in pages of
/// `block_size`, its default scheduler) and returns the steps the calibration loads made it
/// run.
pub fn served_steps(
    source: &ModelSource,
    block_size: usize,
    kv_bytes: usize,
    kv_dtype: KvDtype,
) -> anyhow::Result<Vec<(StepCounts, f64)>> {
    let (model, tok) = tools::engines::cpu_model(source, 0)?;
    let spec = model.kv_spec(kv_dtype);
    let cfg = EngineConfig {
        block_size,
        num_blocks: kv_bytes / spec.bytes_per_block(block_size),
        kv_dtype,
        scheduler: SchedulerConfig {
            max_num_batched_tokens: 2048,
            max_num_seqs: 256,
            ..SchedulerConfig::default()
        },
        ..EngineConfig::default()
    };
    let mut core = tools::engines::engine_over(CpuBackend, model, &tok, cfg)?;
    let log = Lines::default();
    core.set_step_log(Box::new(log.clone()));
    let state = server::state_for(core, None, tok.clone(), "calibration".into(), None);
    let max_len = state.limits.max_model_len;
    let engine = state.engine.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let port = listener.local_addr()?.port();
    let server = rt.spawn(server::serve_with_grace(
        listener,
        state,
        Duration::from_secs(1),
    ));
    let target = Arc::new(Target {
        endpoint: Endpoint::parse(&format!("http://127.0.0.1:{port}"))?,
        path: "/v1/completions".into(),
        model: "calibration".into(),
        api_key: None,
        ignore_eos: true,
        timeout: Duration::from_secs(600),
        tokenizer: None,
    });
    let tokens = Tokens::Local(tok);
    let mut failed = 0;
    for (i, &(n, rate, input, output, seed)) in LOADS.iter().enumerate() {
        eprintln!(
            "calibration load {}/{}: {n} requests at {rate} req/s, {input} in, {output} out",
            i + 1,
            LOADS.len()
        );
        let mut reqs = build(&DatasetSpec {
            name: "random".into(),
            num_prompts: n,
            input_len: match LenDist::parse(input)? {
                // Room for the longest output within the model's context.
                LenDist::Uniform(lo, hi) => {
                    LenDist::Uniform(lo, hi.min(max_len.saturating_sub(161)).max(lo))
                }
                d => d,
            },
            output_len: LenDist::parse(output)?,
            prefix_groups: 0,
            prefix_len: 0,
            seed,
        })?;
        // Exactly the lengths asked for, in this model's tokens (a word is five of a
        // byte-level tokenizer's).
        rt.block_on(fit_lengths(&mut reqs, &tokens, seed))?;
        let arrivals = arrival_times(n, rate, 1.0, Ramp::Constant, seed)?;
        let (outcomes, _) = rt.block_on(run_load(
            target.clone(),
            reqs,
            arrivals,
            None,
            Arc::new(|| {}),
        ));
        failed += outcomes.iter().filter(|o| !o.ok()).count();
    }
    engine.shutdown();
    server.abort();
    if failed > 0 {
        return Err(anyhow::anyhow!(
            "{failed} calibration requests failed: the served engine is not usable"
        ));
    }
    let text = match log.0.lock() {
        Ok(v) => String::from_utf8_lossy(&v).into_owned(),
        Err(_) => return Err(anyhow::anyhow!("the step log was poisoned by a panic")),
    };
    Ok(read_step_log(&text)?)
}
