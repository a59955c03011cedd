//! Soak benchmark (not in the default run; about 10 s here):
//! `cargo test --release -p pagedrt --test soak -- --ignored --nocapture`.
//! 10,000 streaming requests from 32 clients, 20 % of them hung up mid-stream, against a
//! server on a tiny random-weight Llama: every completed request must be whole, no KV page
//! may leak, and the process's resident memory must stay flat after warm-up.

#[macro_use]
mod common;

use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::http::{metric, request, send_completion, sse_data, start, tiny_engine};
use rand::{Rng, SeedableRng};
use serde_json::json;

/// Requests in all ($PAGEDRT_SOAK_REQUESTS, default 10,000).
fn requests() -> usize {
    std::env::var("PAGEDRT_SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}
const CLIENTS: usize = 32;
const MAX_TOKENS: usize = 32;

fn rss_kib() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
#[ignore = "soak benchmark, about 10 s here: run with --ignored (see the file's docs)"]
fn soak_10k_requests_with_disconnects() {
    let total = requests();
    let port = start(tiny_engine(1024, 5), "tiny", None);
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let dropped = Arc::new(AtomicUsize::new(0));
    let mut rss = vec![];
    let started = std::time::Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (next, errors, dropped) = (next.clone(), errors.clone(), dropped.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let body = json!({"model": "tiny", "prompt": format!("soak {i}"),
                        "max_tokens": MAX_TOKENS, "ignore_eos": true, "stream": true,
                        "temperature": 0.8, "seed": i});
                    let mut s = send_completion(port, &body);
                    if rng.random_bool(0.2) {
                        let mut buf = [0u8; 256];
                        let _ = s.read(&mut buf);
                        dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut out = String::new();
                    let _ = s.read_to_string(&mut out);
                    let ok = out.starts_with("HTTP/1.1 200")
                        && out
                            .split_once("\r\n\r\n")
                            .is_some_and(|(_, b)| sse_data(b).len() == MAX_TOKENS + 1);
                    if !ok {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    while next.load(Ordering::Relaxed) < total {
        std::thread::sleep(std::time::Duration::from_millis(500));
        rss.push((next.load(Ordering::Relaxed), rss_kib()));
    }
    for c in clients {
        c.join().unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let mut m = String::new();
    for _ in 0..100 {
        m = request(port, "GET", "/metrics", b"", None).body;
        if metric(&m, "pagedrt:kv_cache_usage_perc") == Some(0.0)
            && metric(&m, "pagedrt:num_requests_running") == Some(0.0)
        {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let after_warmup: Vec<usize> = rss
        .iter()
        .filter(|(done, _)| *done >= total * 2 / 5)
        .map(|x| x.1)
        .collect();
    let (lo, hi) = (
        after_warmup.iter().min().copied().unwrap_or(0),
        after_warmup.iter().max().copied().unwrap_or(0),
    );
    println!("soak: RSS (requests started, KiB): {rss:?}");
    println!(
        "soak: {total} requests in {secs:.1} s, {} hung up, {} errors; RSS after warm-up \
         {lo}-{hi} KiB; kv_cache_usage_perc {:?}, num_requests_running {:?}",
        dropped.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        metric(&m, "pagedrt:kv_cache_usage_perc"),
        metric(&m, "pagedrt:num_requests_running"),
    );
    assert_eq!(errors.load(Ordering::Relaxed), 0);
    assert_eq!(metric(&m, "pagedrt:kv_cache_usage_perc"), Some(0.0));
    assert_eq!(metric(&m, "pagedrt:num_requests_running"), Some(0.0));
    assert!(
        hi - lo < 8 * 1024,
        "RSS grew from {lo} to {hi} KiB after warm-up"
    );
}
