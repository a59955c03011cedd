//! The server's whole request path on arbitrary bodies: parsing, every field check and cap,
//! chat templates, tools, structured-output compilation, validation into the engine's
//! `ValidatedRequest`, generation and the answer, over real HTTP to a live server (a tiny
//! `dummy:` model). Whatever the bytes, the answer is a 2xx or a 4xx whose body is OpenAI's
//! error object, never a 5xx, a hang or a crash, and the server keeps serving.
//!
//! The first byte picks the endpoint. Bodies that parse as JSON are tamed so one input stays
//! milliseconds: length fields above a few tokens and sample counts above two are lowered,
//! long prompt lists cut, and a string `model` becomes the served name (what is not a
//! number or a string is left as it is, so every type check still sees it).
#![no_main]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

const MODEL: &str = "tiny";
const PATHS: [&str; 5] = [
    "/v1/completions",
    "/v1/chat/completions",
    "/v1/responses",
    "/tokenize",
    "/detokenize",
];

static PORT: OnceLock<u16> = OnceLock::new();

/// Serves `dummy:tiny` (a 2-layer, 64-wide Llama with random weights and the byte-level
/// tokenizer).
fn start() -> u16 {
    let engine_cfg = engine::EngineConfig {
        num_blocks: 256,
        ..engine::EngineConfig::default()
    };
    let (core, tok) =
        tools::engines::cpu_dummy_engine("tiny", engine_cfg, 1).expect("the tiny engine builds");
    let state = server::state_for(core, None, tok, MODEL.into(), None);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let port = listener.local_addr().expect("an address").port();
    listener.set_nonblocking(true).expect("non-blocking");
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime");
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            server::serve_with(l, state, server::ServeOptions::default()).await
        })
    });
    port
}

/// Lowers what would make one input slow (see the module's doc).
fn tame(v: &mut Value) {
    let Some(o) = v.as_object_mut() else {
        return;
    };
    for (field, cap) in [
        ("max_tokens", 4),
        ("max_completion_tokens", 4),
        ("max_output_tokens", 4),
        ("n", 2),
        ("best_of", 2),
    ] {
        if o.get(field).and_then(Value::as_i64).is_some_and(|x| x > cap) {
            o.insert(field.into(), cap.into());
        }
    }
    if !o.contains_key("max_tokens") && !o.contains_key("max_completion_tokens") {
        o.insert("max_tokens".into(), 4.into());
        o.insert("max_output_tokens".into(), 4.into());
    }
    if let Some(Value::Array(prompts)) = o.get_mut("prompt") {
        if prompts.first().is_some_and(|p| p.is_string() || p.is_array()) {
            prompts.truncate(4);
        }
    }
    if o.get("model").is_some_and(Value::is_string) {
        o.insert("model".into(), MODEL.into());
    }
}

/// (status, body) of one POST.
fn post(port: u16, path: &str, body: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("the server accepts");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(body);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (status, body)
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, raw)) = data.split_first() else {
        return;
    };
    let path = PATHS[pick as usize % PATHS.len()];
    let body = match serde_json::from_slice::<Value>(raw) {
        Ok(mut v) => {
            tame(&mut v);
            v.to_string().into_bytes()
        }
        Err(_) => raw.to_vec(),
    };
    let port = *PORT.get_or_init(start);
    let (status, text) = post(port, path, &body);
    let sent = String::from_utf8_lossy(&body);
    assert!(
        (200..500).contains(&status),
        "{path} answered {status}: {text}\nto: {sent}"
    );
    if status >= 400 {
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path} {status}: the body is not JSON ({e}): {text}"));
        assert!(
            v["error"]["message"].is_string(),
            "{path} {status}: not OpenAI's error object: {text}"
        );
    }
});
