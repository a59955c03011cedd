//! Prometheus metrics: vLLM's names with a `pagedrt:` prefix (dashboards port by renaming),
//! plus the KV-cache fragmentation gauges no peer exports.

use std::sync::OnceLock;

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use engine::backend::Backend;
use engine::{EngineCore, StepReport};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

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

fn describe() {
    describe_gauge!(
        "pagedrt:num_requests_running",
        "Sequences in the running set."
    );
    describe_gauge!(
        "pagedrt:num_requests_waiting",
        "Sequences waiting to be scheduled."
    );
    describe_gauge!(
        "pagedrt:num_requests_swapped",
        "Sequences swapped out to the host pool."
    );
    describe_gauge!(
        "pagedrt:kv_cache_usage_perc",
        "Fraction of KV pages in use (0-1)."
    );
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
    describe_counter!(
        "pagedrt:prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache."
    );
    describe_counter!(
        "pagedrt:prefix_cache_hits_total",
        "Prompt tokens found in the prefix cache."
    );
    describe_counter!(
        "pagedrt:num_preemptions_total",
        "Preemptions (recompute or swap)."
    );
    describe_counter!(
        "pagedrt:prompt_tokens_total",
        "Prompt tokens of admitted requests."
    );
    describe_counter!("pagedrt:generation_tokens_total", "Generated tokens.");
    describe_counter!(
        "pagedrt:request_success_total",
        "Finished requests by finish reason."
    );
    describe_histogram!(
        "pagedrt:time_to_first_token_seconds",
        "Time to first token."
    );
    describe_histogram!(
        "pagedrt:inter_token_latency_seconds",
        "Time between tokens of a stream."
    );
    describe_histogram!(
        "pagedrt:e2e_request_latency_seconds",
        "Request latency, end to end."
    );
    describe_histogram!(
        "pagedrt:request_queue_time_seconds",
        "Time a request waited before its first step."
    );
    describe_histogram!(
        "pagedrt:iteration_tokens_total",
        "Tokens computed per engine step."
    );
}

/// Called by the engine thread after every step (with its report), and when the engine
/// went idle (`None`: only the gauges change).
pub fn record_step<B: Backend>(core: &EngineCore<B>, report: Option<&StepReport>) {
    let _ = handle();
    let s = core.scheduler();
    let kv = s.kv_stats();
    gauge!("pagedrt:num_requests_running").set(s.num_running() as f64);
    gauge!("pagedrt:num_requests_waiting").set(s.num_waiting() as f64);
    gauge!("pagedrt:num_requests_swapped").set(s.num_swapped() as f64);
    gauge!("pagedrt:kv_cache_usage_perc").set(kv.usage());
    gauge!("pagedrt:kv_internal_fragmentation_perc").set(kv.internal_fragmentation());
    gauge!("pagedrt:kv_shared_tokens").set(kv.shared_tokens() as f64);
    gauge!("pagedrt:kv_cached_free_blocks").set(kv.device.cached_free_blocks as f64);
    counter!("pagedrt:prefix_cache_queries_total").absolute(kv.prefix_queries);
    counter!("pagedrt:prefix_cache_hits_total").absolute(kv.prefix_hits);
    counter!("pagedrt:num_preemptions_total").absolute(s.counters().preemptions);
    let Some(report) = report else {
        return;
    };
    for &q in &report.queue_times_s {
        histogram!("pagedrt:request_queue_time_seconds").record(q);
    }
    counter!("pagedrt:generation_tokens_total").increment(report.outputs.len() as u64);
    histogram!("pagedrt:iteration_tokens_total").record(report.num_tokens as f64);
    for o in report.outputs.iter().filter(|o| o.index == 0) {
        if let Some(f) = o.finish {
            counter!("pagedrt:request_success_total", "finished_reason" => f.as_str()).increment(1);
        }
    }
}
