//! The OpenAI-compatible server over real HTTP on 127.0.0.1 with the default model: answers,
//! streaming, and a 4xx with an OpenAI-style body for every kind of bad input — after which
//! a good request still succeeds.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use common::default_model;
use runtime::engine::{cpu_engine, EngineConfig};
use runtime::server::{serve, state_for};
use serde_json::{json, Value};

const MODEL: &str = "smollm2-135m-instruct";

fn start() -> u16 {
    let cfg = EngineConfig {
        num_blocks: 256,
        ..EngineConfig::default()
    };
    let core = cpu_engine(&default_model(), cfg).unwrap();
    let state = state_for(core, MODEL.into(), Some("sekret".into())).unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(l, state).await.unwrap();
        });
    });
    port
}

/// One HTTP/1.1 request; returns (status, body).
fn http(port: u16, method: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_string();
    (status, body)
}

fn post(port: u16, path: &str, v: &Value) -> (u16, String) {
    http(port, "POST", path, v.to_string().as_bytes(), Some("sekret"))
}

/// The `data:` payloads of a (possibly chunked) SSE body.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
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
    let (st, _) = http(port, "POST", "/v1/completions", &big, Some("sekret"));
    assert_eq!(st, 413);
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
