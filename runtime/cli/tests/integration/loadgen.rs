//! The load generator against a mock server with known delays (measured TTFT and ITL match
//! what was injected, failures keep their reasons), its arrival processes' statistics, and
//! `pagedrt bench serve` end to end against `pagedrt`'s own server.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use common::http::{start, tiny_engine};
use common::{pagedrt, read_json, RunOk};
use tools::loadgen::arrivals::{arrival_times, Ramp};
use tools::loadgen::dataset::BenchRequest;
use tools::loadgen::http::Endpoint;
use tools::loadgen::run::{run, Target};

const TTFT_MS: u64 = 120;
const ITL_MS: u64 = 40;
const TOKENS: usize = 6;

/// Streams TOKENS chunks: the first after TTFT_MS, then one every ITL_MS; then usage.
async fn mock_completion(body: String) -> Response {
    if body.contains("\"max_tokens\":0") {
        return Response::builder()
            .status(400)
            .body(Body::from(
                r#"{"error": {"message": "max_tokens must be at least 1"}}"#,
            ))
            .unwrap();
    }
    // A prompt with NO_USAGE gets two-byte token texts and no usage chunk, like a server
    // that does not report usage.
    let no_usage = body.contains("NO_USAGE");
    let chunks = futures_util::stream::unfold(0usize, move |i| async move {
        if i > TOKENS + 1 {
            return None;
        }
        let data = if i < TOKENS {
            tokio::time::sleep(Duration::from_millis(if i == 0 { TTFT_MS } else { ITL_MS })).await;
            let text = if no_usage { "ab" } else { "x" };
            format!(
                r#"data: {{"choices": [{{"index": 0, "text": "{text}", "finish_reason": null}}]}}"#
            )
        } else if i == TOKENS && no_usage {
            r#"data: {"choices": []}"#.to_string()
        } else if i == TOKENS {
            format!(
                r#"data: {{"choices": [], "usage": {{"prompt_tokens": 5, "completion_tokens": {TOKENS}}}}}"#
            )
        } else {
            "data: [DONE]".to_string()
        };
        Some((
            Ok::<_, std::convert::Infallible>(format!("{data}\n\n")),
            i + 1,
        ))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(chunks))
        .unwrap()
}

fn mock_server(rt: &tokio::runtime::Runtime) -> u16 {
    let app = Router::new()
        .route("/v1/completions", post(mock_completion))
        .route(
            "/v1/models",
            get(|| async { r#"{"data": [{"id": "mock"}]}"# }),
        );
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    l.set_nonblocking(true).unwrap();
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(l).unwrap();
        axum::serve(l, app).await.unwrap();
    });
    port
}

fn target(port: u16) -> Arc<Target> {
    Arc::new(Target {
        endpoint: Endpoint::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        path: "/v1/completions".into(),
        model: "mock".into(),
        api_key: None,
        ignore_eos: false,
        timeout: Duration::from_secs(30),
        tokenizer: None,
    })
}

fn req(output_len: usize) -> BenchRequest {
    BenchRequest {
        prompt: " hello world".into(),
        prompt_len: 2,
        output_len,
        prefix_group: None,
    }
}

#[test]
fn without_usage_output_tokens_are_counted_by_the_tokenizer() {
    use tools::loadgen::run::TokenCount;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = mock_server(&rt);
    let mut r = req(8);
    r.prompt = "NO_USAGE please".into();
    let plain = target(port);
    let mut with_tok = (*plain).clone();
    with_tok.tokenizer = Some(Arc::new(
        models::tokenizer::Tokenizer::byte_level().unwrap(),
    ));
    for (t, want, how) in [
        (plain, TOKENS, TokenCount::Events),
        (Arc::new(with_tok), 2 * TOKENS, TokenCount::Tokenizer),
    ] {
        let (out, _) = rt.block_on(run(t, vec![r.clone()], vec![0.0], None, Arc::new(|| {})));
        assert!(out[0].ok(), "{:?}", out[0].error);
        assert_eq!(out[0].text, "ab".repeat(TOKENS));
        // The byte-level tokenizer makes one token of each byte: 2 per streamed event.
        assert_eq!((out[0].output_tokens, out[0].counted_by), (want, how));
    }
    // With usage, usage wins.
    let (out, _) = rt.block_on(run(
        target(port),
        vec![req(8)],
        vec![0.0],
        None,
        Arc::new(|| {}),
    ));
    assert_eq!(
        (out[0].output_tokens, out[0].counted_by),
        (TOKENS, TokenCount::Usage)
    );
}

#[test]
fn measured_latencies_match_the_injected_delays() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let port = mock_server(&rt);
    let reqs = vec![req(8), req(8), req(8), req(0)];
    let (out, secs) = rt.block_on(run(
        target(port),
        reqs,
        vec![0.0, 0.0, 0.05, 0.1],
        None,
        Arc::new(|| {}),
    ));
    assert_eq!(out.len(), 4);
    let (ttft, itl) = (TTFT_MS as f64 / 1e3, ITL_MS as f64 / 1e3);
    for o in &out[..3] {
        assert!(o.ok(), "{:?}", o.error);
        // A client can never see a token before the server sent it; late wake-ups on a
        // busy 2-core machine only add, so the upper bounds are looser than the lower ones.
        let t = o.ttft_s.unwrap();
        assert!(t >= ttft && t < ttft + 0.1, "TTFT {t}");
        assert_eq!(o.itls_s.len(), TOKENS - 1);
        for &g in &o.itls_s {
            assert!(g >= itl * 0.9 && g < itl + 0.1, "ITL {g}");
        }
        let mean = o.itls_s.iter().sum::<f64>() / o.itls_s.len() as f64;
        assert!(mean < itl + 0.02, "mean ITL {mean}");
        assert_eq!(o.output_tokens, TOKENS, "counted from usage");
        assert_eq!(o.prompt_tokens, 5, "the server's prompt count wins");
        let tpot = o.tpot_s().unwrap();
        assert!(tpot >= itl * 0.9 && tpot < itl + 0.02, "TPOT {tpot}");
        assert!(o.e2e_s >= ttft + (TOKENS - 1) as f64 * itl * 0.9);
    }
    // Requests were sent at their times: the third one 50 ms after the first.
    assert!(
        out[2].sent_s >= 0.045 && out[2].sent_s < 0.15,
        "{}",
        out[2].sent_s
    );
    let e = out[3].error.as_deref().unwrap();
    assert!(
        e.contains("HTTP 400") && e.contains("max_tokens must be at least 1"),
        "{e}"
    );
    assert!(secs >= 0.1 + ttft);
}

#[test]
fn arrival_processes_have_their_rate_and_burstiness() {
    let n = 40_000;
    for (burstiness, cv) in [(1.0, 1.0), (0.25, 2.0), (4.0, 0.5)] {
        let t = arrival_times(n, 10.0, burstiness, Ramp::Constant, 3).unwrap();
        let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
        let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
        let sd = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64).sqrt();
        assert!(
            (mean - 0.1).abs() < 0.1 * 0.03,
            "burstiness {burstiness}: mean gap {mean}"
        );
        assert!(
            (sd / mean - cv).abs() < cv * 0.05,
            "burstiness {burstiness}: CV {}",
            sd / mean
        );
    }
    assert!(arrival_times(5, f64::INFINITY, 1.0, Ramp::Constant, 0)
        .unwrap()
        .iter()
        .all(|&x| x == 0.0));
    // A linear ramp from 2 to 20 req/s: the last tenth arrives about 10x faster than the first.
    let t = arrival_times(
        20_000,
        1.0,
        1.0,
        Ramp::Linear {
            start: 2.0,
            end: 20.0,
        },
        5,
    )
    .unwrap();
    let rate = |a: usize, b: usize| (b - a) as f64 / (t[b] - t[a]);
    let (first, last) = (rate(0, 2000), rate(18_000, 19_999));
    assert!((first / 2.9 - 1.0).abs() < 0.1, "{first}");
    assert!((last / 19.1 - 1.0).abs() < 0.1, "{last}");
    assert!(arrival_times(3, 1.0, 0.0, Ramp::Constant, 0).is_err());
}

#[test]
fn bench_serve_end_to_end_against_pagedrt() {
    let steps = common::tmp("bench-serve-steps").join("steps.jsonl");
    let mut engine = tiny_engine(512, 9);
    engine
        .0
        .set_step_log(Box::new(std::fs::File::create(&steps).unwrap()));
    let port = start(engine, "tiny", None);
    let out = common::tmp("bench-serve").join("out.json");
    let svg = common::tmp("bench-serve-svg");
    pagedrt()
        .args(["bench", "serve", "--base-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--num-prompts",
            "30",
            "--request-rate",
            "40",
            "--dataset",
            "random",
            "--input-len",
            "uniform:8:40",
            "--output-len",
            "12",
            "--ignore-eos",
            "--seed",
            "0",
            "--quiet",
            "--goodput",
            "ttft:60000",
            "--save-result",
        ])
        .arg(&out)
        .arg("--svg-dir")
        .arg(&svg)
        .run_ok();
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(v["completed"], 30, "{v}");
    assert_eq!(v["failed"], 0);
    assert_eq!(
        v["total_output_tokens"],
        30 * 12,
        "usage counts every token"
    );

    assert!(v["request_throughput"].as_f64().unwrap() > 0.0);
    assert!(v["output_throughput"].as_f64().unwrap() > 0.0);
    for k in ["ttft_s", "tpot_s", "itl_s", "e2e_s"] {
        for f in ["mean", "median", "p90", "p99"] {
            assert!(v[k][f].as_f64().unwrap() > 0.0, "{k}.{f}: {v}");
        }
    }
    assert!(
        (v["goodput"].as_f64().unwrap() - v["request_throughput"].as_f64().unwrap()).abs() < 1e-9
    );
    assert!(std::fs::read_to_string(svg.join("ttft_cdf.svg"))
        .unwrap()
        .starts_with("<svg"));
    // The step log saw every prompt token prefilled once and every later token decoded, and
    // `bench calibrate --from-steps` fits a cost model to it.
    let log = tools::calibrate::read_step_log(&std::fs::read_to_string(&steps).unwrap()).unwrap();
    let prefill: usize = log.iter().map(|(c, _)| c.prefill_tokens).sum();
    let decodes: usize = log.iter().map(|(c, _)| c.decode_seqs).sum();
    assert_eq!(prefill as u64, v["total_input_tokens"].as_u64().unwrap());
    assert_eq!(decodes, 30 * 11);
    assert!(log.iter().all(|(_, s)| *s > 0.0));
    let cost = common::tmp("bench-serve-cost").join("cost.json");
    pagedrt()
        .args(["bench", "calibrate", "--knee", "0", "--model"])
        .arg(format!(
            "dummy:{}",
            common::http::tiny_model_config().display()
        ))
        .arg("--from-steps")
        .arg(&steps)
        .arg("--out")
        .arg(&cost)
        .run_ok();
    let cm: scheduler::sim::CostModel =
        serde_json::from_str(&std::fs::read_to_string(&cost).unwrap()).unwrap();
    // The command fits and writes a usable model for this engine. (How well it fits is
    // checked on controlled timings in `calibrate`'s unit tests: these steps ran while
    // other tests shared the cores, so their times are too noisy to judge a fit by.)
    assert_eq!(
        cm.kv_bytes_per_token, 512.0,
        "2 layers x 2 KV heads x 16 x K,V x f32"
    );
    let coefs = [
        cm.step_overhead_s,
        cm.per_prefill_token_s,
        cm.per_decode_seq_s,
        cm.per_context_token_s,
        cm.per_prefill_attention_pair_s,
    ];
    assert!(coefs.iter().all(|c| c.is_finite() && *c >= 0.0), "{cm:?}");
    for (c, _) in &log {
        let t = cm.compute_time(
            c.prefill_tokens,
            c.decode_seqs,
            c.context_tokens,
            c.prefill_pairs,
        );
        assert!(t > 0.0, "a logged step costs nothing: {c:?} {cm:?}");
    }
    // The server's /tokenize makes every random prompt exactly --input-len tokens (a word of
    // this byte-level vocabulary is about five tokens).
    let exact = common::tmp("bench-serve-exact").join("out.json");
    pagedrt()
        .args(["bench", "serve", "--base-url"])
        .arg(format!("http://127.0.0.1:{port}"))
        .args([
            "--num-prompts",
            "10",
            "--dataset",
            "random",
            "--input-len",
            "37",
        ])
        .args([
            "--output-len",
            "2",
            "--ignore-eos",
            "--quiet",
            "--save-result",
        ])
        .arg(&exact)
        .run_ok();
    assert_eq!(read_json(&exact)["total_input_tokens"], 370);
    // A server that is not there: every request fails with its reason, none is dropped.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let st = pagedrt()
        .args(["bench", "serve", "--base-url"])
        .arg(format!("http://127.0.0.1:{dead}"))
        .args([
            "--model",
            "x",
            "--num-prompts",
            "3",
            "--quiet",
            "--save-result",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(st.status.success());
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
    assert_eq!(
        (v["completed"].as_u64(), v["failed"].as_u64()),
        (Some(0), Some(3))
    );
    let reasons = v["errors"].as_object().unwrap();
    assert!(reasons.keys().all(|k| k.contains("connect")), "{reasons:?}");
}
