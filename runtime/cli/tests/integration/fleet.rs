//! Beyond one machine: `pagedrt serve` replicas (child processes, the tiny model) publishing
//! their KV-cache events, a pyzmq + msgpack subscriber as vLLM's users write one, and
//! `vllm-router` 0.1.17 in front of two replicas (`.ci/run` installs the Python side into its
//! virtual environment; without it these tests say they skip, and fail when
//! PAGEDRT_REQUIRE_FLEET is set).

use crate::common;

use std::io::BufRead;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::fleet::{fleet_python, start_router, KillOnDrop, Replica};
use common::http::{http, tiny_model_config};
use common::{pagedrt, read_json, RunOk};
use serde_json::{json, Value};

/// `POST /v1/completions` of `prompt` (2 tokens, greedy, no EOS) on `port`; the body.
fn complete(port: u16, prompt: &str) -> Value {
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 2, "temperature": 0,
                      "ignore_eos": true});
    let (st, text) = http(
        port,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
        None,
    );
    assert_eq!(st, 200, "{text}");
    serde_json::from_str(&text).unwrap()
}

/// The token ids `/tokenize` gives for `prompt`.
fn tokenize(port: u16, prompt: &str) -> Vec<u64> {
    let (st, body) = http(
        port,
        "POST",
        "/tokenize",
        json!({ "prompt": prompt }).to_string().as_bytes(),
        None,
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect()
}

#[test]
fn a_pyzmq_subscriber_sees_block_stored_events_with_the_prompts_token_ids() {
    let Some(python) = fleet_python("a_pyzmq_subscriber_sees_block_stored_events") else {
        return;
    };
    let replica = Replica::start(&tiny_model_config(), true, &[]);
    let endpoint = replica.events.clone().unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kv_events_subscriber.py");
    let child = std::process::Command::new(&python)
        .arg(script)
        .args([&endpoint, "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = KillOnDrop(child);
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.0.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(line, "connected");
    // A PUB socket drops what it sends before the subscription has reached it: probe with
    // throw-away prompts until the subscriber hears something.
    let started = Instant::now();
    let mut probe = 0;
    loop {
        probe += 1;
        complete(
            replica.port,
            &format!("probe {probe}: a prompt of two pages at least....."),
        );
        if rx.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no events");
    }
    while rx.recv_timeout(Duration::from_millis(300)).is_ok() {}
    let prompt = "The KV events of this prompt: six full pages of sixteen tokens each (the \
                  tokenizer is byte-level), and a tail.";
    let tokens = tokenize(replica.port, prompt);
    assert!(tokens.len() > 80, "{}", tokens.len());
    complete(replica.port, prompt);
    // Every event the subscriber sees from now on, until the prompt's pages have been seen.
    let full = tokens.len() / 16 * 16;
    let mut stored: Vec<u64> = Vec::new();
    let mut last_seq = None;
    let started = Instant::now();
    while stored.len() < full {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("only {stored:?} of {tokens:?} seen"));
        let m: Value = serde_json::from_str(&line).unwrap();
        // vLLM's frames: topic (empty), an 8-byte big-endian sequence number, the payload.
        assert_eq!(m["frames"], 3, "{m}");
        assert_eq!(m["topic"], "", "{m}");
        let seq = m["seq"].as_i64().unwrap();
        assert!(
            last_seq.is_none_or(|l| seq == l + 1),
            "{seq} after {last_seq:?}"
        );
        last_seq = Some(seq);
        // EventBatch [ts, events]: a timestamp in seconds since the epoch.
        let batch = m["batch"].as_array().unwrap();
        assert_eq!(batch.len(), 2, "{m}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!((batch[0].as_f64().unwrap() - now).abs() < 60.0, "{m}");
        for e in batch[1].as_array().unwrap() {
            if e["type"] != "BlockStored" {
                continue;
            }
            assert_eq!(e["block_size"], 16);
            assert_eq!(e["medium"], "GPU");
            assert!(e["lora_id"].is_null() && e["lora_name"].is_null());
            let ids: Vec<u64> = e["token_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap())
                .collect();
            assert_eq!(ids.len(), 16 * e["block_hashes"].as_array().unwrap().len());
            // The prompt's first page starts a chain (no parent); the others continue it.
            if e["parent_block_hash"].is_null() && ids[..16] == tokens[..16] {
                stored = ids;
            } else if !stored.is_empty() {
                stored.extend(ids);
            }
        }
        assert!(started.elapsed() < Duration::from_secs(30));
    }
    assert_eq!(
        stored[..full],
        tokens[..full],
        "the stored pages hold the prompt"
    );
}

/// Counters of one replica, for deltas.
struct Served {
    prompt_tokens: f64,
    generated: f64,
    hits: f64,
}

fn served(r: &Replica) -> Served {
    Served {
        prompt_tokens: r.metric("pagedrt:prompt_tokens_total"),
        generated: r.metric("pagedrt:generation_tokens_total"),
        hits: r.metric("pagedrt:prefix_cache_hits_total"),
    }
}

/// Requests of groups A (116 tokens) and B (136 tokens) a replica served since `before`,
/// and its prefix-cache hit tokens: each request generates 2 tokens, so the counters
/// tell the two groups apart.
fn split(r: &Replica, before: &Served) -> (i64, i64, i64) {
    let now = served(r);
    let n = ((now.generated - before.generated) / 2.0).round() as i64;
    let tokens = (now.prompt_tokens - before.prompt_tokens).round() as i64;
    let b = (tokens - 116 * n) / 20;
    assert_eq!(
        116 * (n - b) + 136 * b,
        tokens,
        "{n} requests of {tokens} tokens"
    );
    (n - b, b, (now.hits - before.hits).round() as i64)
}

#[test]
fn kv_aware_routing_follows_the_replicas_caches_and_round_robin_spreads_the_groups() {
    let Some(python) = fleet_python("kv_aware_routing_follows_the_replicas_caches") else {
        return;
    };
    let config = tiny_model_config();
    let (r1, r2) = (
        Replica::start(&config, true, &[]),
        Replica::start(&config, true, &[]),
    );
    let mut kv_args: Vec<String> = vec!["--kv-event-block-size".into(), "16".into()];
    kv_args.extend(["--kv-event-model".into(), "tiny".into()]);
    for r in [&r1, &r2] {
        kv_args.push("--kv-event-source".into());
        kv_args.push(format!("{}={}", r.url(), r.events.as_ref().unwrap()));
    }
    let (kv_port, _kv_router) = start_router(&python, &[&r1, &r2], "kv_aware", &kv_args);
    // The router's subscriptions must be in place before the caches fill.
    std::thread::sleep(Duration::from_millis(1500));
    // Two prefix groups of 96 tokens (6 pages; the tiny model's tokenizer is byte-level),
    // each put into one replica's cache directly: only the KV events tell the router.
    let prefix =
        |c: char| format!("{c}{}", "shared prefix of one group, ".repeat(4))[..96].to_string();
    let (pa, pb) = (prefix('A'), prefix('B'));
    let request = |p: &str, i: usize| {
        let own = if p == pa { 20 } else { 40 };
        format!("{p}{}", format!("request {i:04} ").repeat(4))[..96 + own].to_string()
    };
    assert_eq!(tokenize(r1.port, &request(&pa, 0)).len(), 116);
    assert_eq!(tokenize(r1.port, &request(&pb, 0)).len(), 136);
    complete(r1.port, &request(&pa, 9999));
    complete(r2.port, &request(&pb, 9999));
    std::thread::sleep(Duration::from_millis(1000));

    let (b1, b2) = (served(&r1), served(&r2));
    for i in 0..8 {
        complete(kv_port, &request(&pa, i));
        complete(kv_port, &request(&pb, i));
    }
    // Every request of a group went to the replica holding its prefix, and hit it there.
    assert_eq!(split(&r1, &b1), (8, 0, 8 * 96), "replica 1 under kv_aware");
    assert_eq!(split(&r2, &b2), (0, 8, 8 * 96), "replica 2 under kv_aware");

    // Round-robin in front of the same replicas spreads each group over both.
    let (rr_port, _rr_router) = start_router(&python, &[&r1, &r2], "round_robin", &[]);
    let (b1, b2) = (served(&r1), served(&r2));
    for i in 0..4 {
        for (j, p) in [&pa, &pa, &pb, &pb].into_iter().enumerate() {
            complete(rr_port, &request(p, 100 + 4 * i + j));
        }
    }
    let (s1, s2) = (split(&r1, &b1), split(&r2, &b2));
    assert_eq!((s1.0, s1.1, s2.0, s2.1), (4, 4, 4, 4), "{s1:?} {s2:?}");

    // 100 requests through the kv-aware router from the load generator, some at once, of
    // completions and chat: none fails.
    let out = common::tmp("fleet-bench").join("out.json");
    let trace = out.with_file_name("trace.jsonl");
    for (endpoint, n) in [("/v1/completions", 80), ("/v1/chat/completions", 20)] {
        pagedrt()
            .args(["bench", "serve", "--base-url"])
            .arg(format!("http://127.0.0.1:{kv_port}"))
            .args(["--endpoint", endpoint, "--num-prompts", &n.to_string()])
            .args(["--request-rate", "200", "--dataset", "prefix-sharing"])
            .args([
                "--prefix-groups",
                "4",
                "--prefix-len",
                "24",
                "--input-len",
                "8",
            ])
            .args([
                "--output-len",
                "4",
                "--ignore-eos",
                "--seed",
                "3",
                "--quiet",
            ])
            .arg("--save-result")
            .arg(&out)
            .arg("--save-trace")
            .arg(&trace)
            .run_ok();
        let v = read_json(&out);
        assert_eq!(
            (v["completed"].as_u64(), v["failed"].as_u64()),
            (Some(n), Some(0))
        );
        // The trace keeps each prompt's prefix group, so the fleet simulator replays the
        // same sharing (every group drawn, none outside 0..4).
        let groups: std::collections::BTreeSet<u64> = std::fs::read_to_string(&trace)
            .unwrap()
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["prefix_group"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), [0, 1, 2, 3]);
    }
}

#[test]
fn metrics_prefix_vllm_gives_vllms_names_with_the_model_label() {
    let replica = Replica::start(&tiny_model_config(), false, &["--metrics-prefix", "vllm"]);
    complete(replica.port, "a request, so that every metric has a sample");
    let m = replica.metrics();
    for name in [
        "vllm:num_requests_running{model_name=\"tiny\"} 0",
        "vllm:num_requests_waiting{model_name=\"tiny\"} 0",
        "vllm:kv_cache_usage_perc{model_name=\"tiny\"} 0",
        "vllm:prompt_tokens_total{model_name=\"tiny\"} 44",
        "vllm:generation_tokens_total{model_name=\"tiny\"} 2",
        "vllm:time_to_first_token_seconds_count{model_name=\"tiny\"} 1",
        "vllm:e2e_request_latency_seconds_count{model_name=\"tiny\"} 1",
        "vllm:request_queue_time_seconds_count{model_name=\"tiny\"} 1",
    ] {
        assert!(m.lines().any(|l| l == name), "{name} not in:\n{m}");
    }
    let info = m
        .lines()
        .find(|l| l.starts_with("vllm:cache_config_info{"))
        .unwrap_or_else(|| panic!("no cache_config_info in:\n{m}"));
    for label in [
        "block_size=\"16\"",
        "num_gpu_blocks=\"512\"",
        "enable_prefix_caching=\"True\"",
        "model_name=\"tiny\"",
    ] {
        assert!(info.contains(label), "{label} not in {info}");
    }
    assert!(info.ends_with(" 1"), "{info}");
    assert!(
        !m.lines().any(|l| l.starts_with("pagedrt:num_requests")),
        "no pagedrt: names for vLLM's metrics:\n{m}"
    );
    // A name that Prometheus would refuse is refused at start-up.
    pagedrt()
        .args(["serve", "--metrics-prefix", "9x", "--model"])
        .arg(format!("dummy:{}", tiny_model_config().display()))
        .run_fails_with("--metrics-prefix");
}
