//! The numbers of a load test: latency distributions, throughputs, goodput and failures.

use std::collections::BTreeMap;

use scheduler::sim::{RequestRecord, Slo, Summary};
use serde::Serialize;

use super::run::Outcome;

/// What `--save-result` writes.
#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub num_prompts: usize,
    pub request_rate: f64,
    pub burstiness: f64,
    pub max_concurrency: Option<usize>,
    pub duration_s: f64,
    pub completed: usize,
    pub failed: usize,
    /// Failure reasons and how many requests each ended.
    pub errors: BTreeMap<String, usize>,
    pub total_input_tokens: usize,
    pub total_output_tokens: usize,
    /// How the completed requests' output tokens were counted ("usage", "tokenizer",
    /// "stream events") and for how many requests each way.
    pub output_tokens_counted_by: BTreeMap<&'static str, usize>,
    pub request_throughput: f64,
    pub output_throughput: f64,
    pub total_token_throughput: f64,
    /// Completed requests per second that met every `--goodput` objective.
    pub goodput: Option<f64>,
    pub ttft_s: Summary,
    pub tpot_s: Summary,
    pub itl_s: Summary,
    pub e2e_s: Summary,
}

impl BenchResult {
    pub fn of(
        outcomes: &[Outcome],
        duration_s: f64,
        slo: &Slo,
        request_rate: f64,
        burstiness: f64,
        max_concurrency: Option<usize>,
    ) -> Self {
        let ok: Vec<&Outcome> = outcomes.iter().filter(|o| o.ok()).collect();
        let mut errors = BTreeMap::new();
        for o in outcomes {
            if let Some(e) = &o.error {
                *errors.entry(e.clone()).or_insert(0) += 1;
            }
        }
        let d = duration_s.max(f64::MIN_POSITIVE);
        let (tin, tout): (usize, usize) = (
            ok.iter().map(|o| o.prompt_tokens).sum(),
            ok.iter().map(|o| o.output_tokens).sum(),
        );
        let mut itls: Vec<f64> = ok.iter().flat_map(|o| o.itls_s.iter().copied()).collect();
        let record = |o: &Outcome| RequestRecord {
            id: 0,
            arrival_s: o.sent_s,
            prompt_len: o.prompt_tokens,
            output_len: o.output_tokens,
            n: 1,
            first_scheduled_s: None,
            first_token_s: o.ttft_s.map(|t| o.sent_s + t),
            finish_s: Some(o.sent_s + o.e2e_s),
            preemptions: 0,
            rejected: None,
        };
        let goodput = slo
            .is_set()
            .then(|| ok.iter().filter(|o| slo.met(&record(o))).count() as f64 / d);
        BenchResult {
            num_prompts: outcomes.len(),
            request_rate,
            burstiness,
            max_concurrency,
            duration_s,
            completed: ok.len(),
            failed: outcomes.len() - ok.len(),
            errors,
            total_input_tokens: tin,
            total_output_tokens: tout,
            output_tokens_counted_by: ok.iter().fold(BTreeMap::new(), |mut m, o| {
                *m.entry(o.counted_by.as_str()).or_insert(0) += 1;
                m
            }),
            request_throughput: ok.len() as f64 / d,
            output_throughput: tout as f64 / d,
            total_token_throughput: (tin + tout) as f64 / d,
            goodput,
            ttft_s: Summary::of(&mut ok.iter().filter_map(|o| o.ttft_s).collect::<Vec<_>>()),
            tpot_s: Summary::of(&mut ok.iter().filter_map(|o| o.tpot_s()).collect::<Vec<_>>()),
            itl_s: Summary::of(&mut itls),
            e2e_s: Summary::of(&mut ok.iter().map(|o| o.e2e_s).collect::<Vec<_>>()),
        }
    }

    /// The summary table, as vLLM's `bench serve` prints it.
    pub fn table(&self) -> String {
        let mut o = format!(
            "============ Serving Benchmark Result ============\n\
             {:<40}{:>10}\n{:<40}{:>10}\n{:<40}{:>10.2}\n{:<40}{:>10}\n{:<40}{:>10}\n\
             {:<40}{:>10.2}\n{:<40}{:>10.2}\n{:<40}{:>10.2}\n",
            "Successful requests:",
            self.completed,
            "Failed requests:",
            self.failed,
            "Benchmark duration (s):",
            self.duration_s,
            "Total input tokens:",
            self.total_input_tokens,
            "Total generated tokens:",
            self.total_output_tokens,
            "Request throughput (req/s):",
            self.request_throughput,
            "Output token throughput (tok/s):",
            self.output_throughput,
            "Total token throughput (tok/s):",
            self.total_token_throughput
        );
        if let Some(g) = self.goodput {
            o += &format!("{:<40}{:>10.2}\n", "Request goodput (req/s):", g);
        }
        if self.output_tokens_counted_by.keys().any(|&k| k != "usage") {
            let how: Vec<String> = self
                .output_tokens_counted_by
                .iter()
                .map(|(k, n)| format!("{k}: {n}"))
                .collect();
            o += &format!(
                "{:<40}{:>10}\n",
                "Output tokens counted by:",
                how.join(", ")
            );
        }
        for (name, s) in [
            ("TTFT", &self.ttft_s),
            ("TPOT", &self.tpot_s),
            ("ITL", &self.itl_s),
            ("E2E latency", &self.e2e_s),
        ] {
            o += &format!(
                "{:-^50}\n{:<40}{:>10.2}\n{:<40}{:>10.2}\n{:<40}{:>10.2}\n{:<40}{:>10.2}\n{:<40}{:>10.2}\n",
                format!(" {name} "),
                format!("Mean {name} (ms):"),
                1e3 * s.mean,
                format!("Median {name} (ms):"),
                1e3 * s.median,
                format!("Std {name} (ms):"),
                1e3 * s.std,
                format!("P90 {name} (ms):"),
                1e3 * s.p90,
                format!("P99 {name} (ms):"),
                1e3 * s.p99
            );
        }
        for (e, n) in &self.errors {
            o += &format!("failed ({n}): {e}\n");
        }
        o + "==================================================\n"
    }
}
