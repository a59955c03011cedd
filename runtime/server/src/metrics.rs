//! Prometheus metrics: vLLM's names behind a prefix, plus the KV-cache fragmentation gauges no
//! peer exports (always `pagedrt:`).
//!
//! The prefix is `pagedrt:` unless the server is started with `--metrics-prefix vllm`
//! ([`use_prefix`]): then the names are vLLM's exactly (`vllm:num_requests_waiting`,
//! `vllm:kv_cache_usage_perc`, `vllm:cache_config_info`, ...) and every sample carries vLLM's
//! `model_name` label, for the routers and schedulers that read only those (vLLM's
//! production-stack router, the Kubernetes Gateway API inference extension).

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use engine::backend::Backend;
use engine::{EngineCore, StepReport};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
static NAMES: OnceLock<Names> = OnceLock::new();

/// The process-wide recorder (installed on first use) and its renderer.
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let h = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0,
            ])
            .and_then(|b| b.install_recorder())
            .unwrap_or_else(|_| {
                // Another recorder is installed: render an empty one rather than fail.
                PrometheusBuilder::new().build_recorder().handle()
            });
        describe();
        // Histogram samples are buffered until upkeep drains them into their buckets; without
        // it they grow without bound between scrapes (found by the soak test).
        let upkeep = h.clone();
        let _ = std::thread::Builder::new()
            .name("pagedrt-metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                upkeep.run_upkeep();
            });
        h
    })
}

/// Why a metrics prefix was refused.
#[derive(Debug, thiserror::Error)]
pub enum MetricsPrefixError {
    #[error("--metrics-prefix {0:?}: a Prometheus name starts with a letter or `_` and has only letters, digits and `_`")]
    Invalid(String),
    #[error("--metrics-prefix: the metric names were fixed already (the prefix is process-wide)")]
    AlreadySet,
}

/// Names every later metric `PREFIX:name` (`vllm`: vLLM's names, each sample labelled with
/// `model_name`). Process-wide, before the first metric is recorded.
pub fn use_prefix(prefix: &str, model_name: &str) -> Result<(), MetricsPrefixError> {
    let valid = prefix
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(MetricsPrefixError::Invalid(prefix.into()));
    }
    let model = (prefix == "vllm").then(|| model_name.to_string());
    NAMES
        .set(Names::new(prefix, model))
        .map_err(|_| MetricsPrefixError::AlreadySet)
}

/// The names in use (`pagedrt:` unless [`use_prefix`] said otherwise).
fn names() -> &'static Names {
    NAMES.get_or_init(|| Names::new("pagedrt", None))
}

/// Metric names made once (the recorder wants `'static` names to avoid a copy per sample).
struct Names {
    running: &'static str,
    waiting: &'static str,
    swapped: &'static str,
    usage: &'static str,
    prefix_queries: &'static str,
    prefix_hits: &'static str,
    preemptions: &'static str,
    prompt_tokens: &'static str,
    generation_tokens: &'static str,
    success: &'static str,
    ttft: &'static str,
    itl: &'static str,
    e2e: &'static str,
    queue_time: &'static str,
    iteration_tokens: &'static str,
    cache_config_info: &'static str,
    /// vLLM's `model_name` label on every sample (with the `vllm` prefix only).
    model_name: Option<&'static str>,
}

impl Names {
    fn new(prefix: &str, model_name: Option<String>) -> Self {
        let n = |name: &str| -> &'static str { Box::leak(format!("{prefix}:{name}").into()) };
        Names {
            running: n("num_requests_running"),
            waiting: n("num_requests_waiting"),
            swapped: n("num_requests_swapped"),
            usage: n("kv_cache_usage_perc"),
            prefix_queries: n("prefix_cache_queries_total"),
            prefix_hits: n("prefix_cache_hits_total"),
            preemptions: n("num_preemptions_total"),
            prompt_tokens: n("prompt_tokens_total"),
            generation_tokens: n("generation_tokens_total"),
            success: n("request_success_total"),
            ttft: n("time_to_first_token_seconds"),
            itl: n("inter_token_latency_seconds"),
            e2e: n("e2e_request_latency_seconds"),
            queue_time: n("request_queue_time_seconds"),
            iteration_tokens: n("iteration_tokens_total"),
            cache_config_info: n("cache_config_info"),
            model_name: model_name.map(|m| &*Box::leak(m.into_boxed_str())),
        }
    }

    /// The labels of every sample.
    fn labels(&self) -> Vec<(&'static str, &'static str)> {
        self.model_name
            .map(|m| vec![("model_name", m)])
            .unwrap_or_default()
    }
}

fn describe() {
    let n = names();
    describe_gauge!(n.running, "Sequences in the running set.");
    describe_gauge!(n.waiting, "Sequences waiting to be scheduled.");
    describe_gauge!(n.swapped, "Sequences swapped out to the host pool.");
    describe_gauge!(n.usage, "Fraction of KV pages in use (0-1).");
    describe_gauge!(
        "pagedrt:kv_internal_fragmentation_perc",
        "Fraction of allocated KV token slots that hold no token (0-1)."
    );
    describe_gauge!(
        "pagedrt:kv_shared_tokens",
        "Token states served to a sequence by a page another sequence also holds."
    );
    describe_gauge!(
        "pagedrt:kv_cached_free_blocks",
        "Free KV pages still holding prefix-cache content."
    );
    describe_gauge!(
        n.cache_config_info,
        "The KV cache's configuration, in the labels (value 1)."
    );
    describe_counter!(
        n.prefix_queries,
        "Prompt tokens looked up in the prefix cache."
    );
    describe_counter!(n.prefix_hits, "Prompt tokens found in the prefix cache.");
    describe_counter!(n.preemptions, "Preemptions (recompute or swap).");
    describe_counter!(n.prompt_tokens, "Prompt tokens of admitted requests.");
    describe_counter!(n.generation_tokens, "Generated tokens.");
    describe_counter!(n.success, "Finished requests by finish reason.");
    describe_histogram!(n.ttft, "Time to first token.");
    describe_histogram!(n.itl, "Time between tokens of a stream.");
    describe_histogram!(n.e2e, "Request latency, end to end.");
    describe_histogram!(n.queue_time, "Time a request waited before its first step.");
    describe_histogram!(n.iteration_tokens, "Tokens computed per engine step.");
}

/// A request's prompt was admitted.
pub fn prompt_tokens(n: usize) {
    let names = names();
    counter!(names.prompt_tokens, &names.labels()).increment(n as u64);
}

/// A stream's first token arrived this long after its request.
pub fn time_to_first_token(s: f64) {
    let names = names();
    histogram!(names.ttft, &names.labels()).record(s);
}

/// A stream's next token arrived this long after the one before.
pub fn inter_token_latency(s: f64) {
    let names = names();
    histogram!(names.itl, &names.labels()).record(s);
}

/// A request ended this long after it arrived.
pub fn e2e_request_latency(s: f64) {
    let names = names();
    histogram!(names.e2e, &names.labels()).record(s);
}

/// Called by the engine thread after every step (with its report), and when the engine
/// went idle (`None`: only the gauges change).
pub fn record_step<B: Backend>(core: &EngineCore<B>, report: Option<&StepReport>) {
    let _ = handle();
    let n = names();
    let l = n.labels();
    let s = core.scheduler();
    let kv = s.kv_stats();
    static CONFIG: OnceLock<()> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let bm = s.block_manager().config();
        let mut labels: Vec<(&'static str, String)> = vec![
            ("block_size", kv.block_size.to_string()),
            ("num_gpu_blocks", kv.device.total_blocks.to_string()),
            ("num_cpu_blocks", kv.host.total_blocks.to_string()),
            ("cache_dtype", core.kv_dtype().to_string()),
            (
                "enable_prefix_caching",
                python_bool(bm.enable_prefix_caching),
            ),
        ];
        labels.extend(l.iter().map(|&(k, v)| (k, v.to_string())));
        gauge!(n.cache_config_info, &labels).set(1.0);
    });
    gauge!(n.running, &l).set(s.num_running() as f64);
    gauge!(n.waiting, &l).set(s.num_waiting() as f64);
    gauge!(n.swapped, &l).set(s.num_swapped() as f64);
    gauge!(n.usage, &l).set(kv.usage());
    gauge!("pagedrt:kv_internal_fragmentation_perc", &l).set(kv.internal_fragmentation());
    gauge!("pagedrt:kv_shared_tokens", &l).set(kv.shared_tokens() as f64);
    gauge!("pagedrt:kv_cached_free_blocks", &l).set(kv.device.cached_free_blocks as f64);
    counter!(n.prefix_queries, &l).absolute(kv.prefix_queries);
    counter!(n.prefix_hits, &l).absolute(kv.prefix_hits);
    counter!(n.preemptions, &l).absolute(s.counters().preemptions);
    let Some(report) = report else {
        return;
    };
    for &q in &report.queue_times_s {
        histogram!(n.queue_time, &l).record(q);
    }
    counter!(n.generation_tokens, &l).increment(report.outputs.len() as u64);
    histogram!(n.iteration_tokens, &l).record(report.num_tokens as f64);
    for o in report.outputs.iter().filter(|o| o.index == 0) {
        if let Some(f) = o.finish {
            let mut labels = vec![("finished_reason", f.as_str())];
            labels.extend(l.iter().copied());
            counter!(n.success, &labels).increment(1);
        }
    }
}

/// vLLM's info labels are Python values rendered as text.
fn python_bool(b: bool) -> String {
    if b { "True" } else { "False" }.into()
}
