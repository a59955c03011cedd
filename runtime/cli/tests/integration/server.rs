//! The OpenAI-compatible server over real HTTP on 127.0.0.1 with the default model: answers,
//! streaming, and a 4xx with an OpenAI-style body for every kind of bad input — after which
//! a good request still succeeds.

use crate::common;

use common::default_model;
use common::http::{http, sse_data};
use engine::EngineConfig;
use serde_json::{json, Value};
use tools::engines::cpu_engine;

const MODEL: &str = "smollm2-135m-instruct";

fn start() -> u16 {
    let cfg = EngineConfig {
        num_blocks: 256,
        ..EngineConfig::default()
    };
    let core = cpu_engine(&default_model(), cfg).unwrap();
    common::http::start(core, MODEL, Some("sekret"))
}

fn post(port: u16, path: &str, v: &Value) -> (u16, String) {
    http(port, "POST", path, v.to_string().as_bytes(), Some("sekret"))
}

#[test]
fn completions_chat_streaming_and_bad_input() {
    let port = start();
    let (st, _) = http(port, "GET", "/health", b"", None);
    assert_eq!(st, 200);
    // Greedy completion: the golden continuation.
    let (st, body) = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(" Paris."), "{text}");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 6);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    // Streaming gives the same text, then usage, then [DONE].
    let (st, body) = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6,
                "temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    );
    assert_eq!(st, 200);
    let data = sse_data(&body);
    assert_eq!(data.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|x| x["text"].as_str()))
        .collect();
    assert_eq!(streamed, text);
    assert_eq!(chunks.last().unwrap()["usage"]["completion_tokens"], 6);
    // Chat with n = 2 and a list of prompts.
    let (st, body) = post(
        port,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}],
                "max_tokens": 4, "n": 2, "seed": 3}),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    assert_eq!(v["choices"][1]["message"]["role"], "assistant");
    // Chat streaming: the first delta names the role, then content deltas, then [DONE].
    let (st, body) = post(
        port,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}],
                "max_tokens": 3, "temperature": 0, "stream": true}),
    );
    assert_eq!(st, 200);
    let data = sse_data(&body);
    assert_eq!(data.len(), 4, "{body}");
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let second: Value = serde_json::from_str(&data[1]).unwrap();
    assert!(second["choices"][0]["delta"].get("role").is_none());
    let (st, body) = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": ["a", "b c"], "max_tokens": 2}),
    );
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["choices"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // Log-probabilities, greedy: each sampled token is the most likely of its top list,
    // and the completion's pieces spell its text.
    let (st, body) = post(
        port,
        "/v1/completions",
        &json!({"model": MODEL, "prompt": "The capital of France is", "max_tokens": 4,
                "temperature": 0, "logprobs": 3}),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let c = &v["choices"][0];
    let lp = &c["logprobs"];
    let pieces: Vec<&str> = lp["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(pieces.len(), 4);
    assert_eq!(pieces.concat(), c["text"].as_str().unwrap());
    for (i, tl) in lp["token_logprobs"].as_array().unwrap().iter().enumerate() {
        let x = tl.as_f64().unwrap();
        let top = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(top.len(), 3);
        let best = top
            .values()
            .map(|v| v.as_f64().unwrap())
            .fold(f64::MIN, f64::max);
        assert!(
            x <= 0.0 && (x - best).abs() < 1e-5,
            "token {i}: {x} vs {best}"
        );
    }
    let (st, body) = post(
        port,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": [{"role": "user", "content": "Hi!"}],
                "max_tokens": 3, "temperature": 0, "logprobs": true, "top_logprobs": 2}),
    );
    assert_eq!(st, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 3);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["bytes"].is_array());
    // Every bad input: a 4xx with an OpenAI-style error body.
    let good = json!({"model": MODEL, "prompt": "Hello", "max_tokens": 2});
    let with = |k: &str, v: Value| {
        let mut g = good.clone();
        g[k] = v;
        g
    };
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), 400),
        (
            "wrong type",
            with("max_tokens", json!("ten")).to_string().into_bytes(),
            400,
        ),
        (
            "unknown model",
            with("model", json!("gpt-9")).to_string().into_bytes(),
            404,
        ),
        (
            "negative max_tokens",
            with("max_tokens", json!(-1)).to_string().into_bytes(),
            400,
        ),
        (
            "absurd max_tokens",
            with("max_tokens", json!(1u64 << 40))
                .to_string()
                .into_bytes(),
            400,
        ),
        (
            "top_p above 1",
            with("top_p", json!(1.5)).to_string().into_bytes(),
            400,
        ),
        (
            "negative temperature",
            with("temperature", json!(-0.1)).to_string().into_bytes(),
            400,
        ),
        ("n zero", with("n", json!(0)).to_string().into_bytes(), 400),
        (
            "too long",
            with("max_tokens", json!(8190)).to_string().into_bytes(),
            400,
        ),
        (
            "empty prompt",
            with("prompt", json!("")).to_string().into_bytes(),
            400,
        ),
        (
            "token out of vocab",
            with("prompt", json!([1, 999999])).to_string().into_bytes(),
            400,
        ),
        (
            "too many stops",
            with("stop", json!(vec!["x"; 40])).to_string().into_bytes(),
            400,
        ),
        (
            "invalid UTF-8",
            b"{\"model\": \"\xff\xfe\", \"prompt\": \"a\"}".to_vec(),
            400,
        ),
    ];
    for (what, body, want) in cases {
        let (st, resp) = http(port, "POST", "/v1/completions", &body, Some("sekret"));
        assert_eq!(st, want, "{what}: {resp}");
        let v: Value =
            serde_json::from_str(&resp).unwrap_or_else(|e| panic!("{what}: {e}: {resp}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(v["error"]["type"].is_string(), "{what}");
    }
    let (st, _) = http(
        port,
        "POST",
        "/v1/completions",
        good.to_string().as_bytes(),
        Some("wrong"),
    );
    assert_eq!(st, 401);
    let (st, _) = http(
        port,
        "POST",
        "/v1/completions",
        good.to_string().as_bytes(),
        None,
    );
    assert_eq!(st, 401);
    let big = vec![b' '; 5 << 20];
    let (st, body) = http(port, "POST", "/v1/completions", &big, Some("sekret"));
    assert_eq!(st, 413);
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("413 body {e}: {body}"));
    assert_eq!(v["error"]["code"], "request_too_large");
    // The server still serves.
    let (st, body) = post(port, "/v1/completions", &good);
    assert_eq!(st, 200, "{body}");
    let (st, body) = post(port, "/tokenize", &json!({"prompt": "Hello world"}));
    assert_eq!(st, 200);
    let toks = serde_json::from_str::<Value>(&body).unwrap()["tokens"].clone();
    let (st, body) = post(port, "/detokenize", &json!({"tokens": toks}));
    assert_eq!(st, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["prompt"],
        "Hello world"
    );
}
