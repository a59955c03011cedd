//! A server on 127.0.0.1 for the HTTP tests, and a plain HTTP/1.1 client over `TcpStream`
//! (no client library: the tests see exactly the bytes the server sends).

use std::io::{Read, Write};
use std::net::TcpStream;

use engine::backend::cpu::CpuBackend;
use server::state_for;
use tools::engines::EngineAndTokenizer;

/// Serves an engine core (with its tokenizer) as `model` on a free port (on its own thread);
/// returns the port.
pub fn start<B>(core: EngineAndTokenizer<B>, model: &str, api_key: Option<&str>) -> u16
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    start_with_engine(core, model, api_key).0
}

/// A running test server: its port, its engine's handle (for fault injection) and its
/// thread, whose result is how serving ended.
pub type Started = (
    u16,
    engine::handle::EngineHandle,
    std::thread::JoinHandle<Result<(), server::ServeError>>,
);

/// [`start`], also returning the engine's handle (for fault injection).
pub fn start_with_engine<B>(
    core: EngineAndTokenizer<B>,
    model: &str,
    api_key: Option<&str>,
) -> (u16, engine::handle::EngineHandle)
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    let (port, engine, _) = start_with(core, None, model, api_key);
    (port, engine)
}

/// A server whose engine is rebuilt by `rebuild` after a panic (if given); also returns the
/// engine's handle and the server thread, whose result is how serving ended.
pub fn start_with<B>(
    core: EngineAndTokenizer<B>,
    rebuild: Option<engine::handle::Rebuild<B>>,
    model: &str,
    api_key: Option<&str>,
) -> Started
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    let opts = server::ServeOptions {
        grace: std::time::Duration::from_secs(2),
        ..server::ServeOptions::default()
    };
    start_with_options(core, rebuild, model, api_key, opts)
}

/// [`start_with`] under `opts` (grace period, connection limits).
pub fn start_with_options<B>(
    (core, tokenizer): EngineAndTokenizer<B>,
    rebuild: Option<engine::handle::Rebuild<B>>,
    model: &str,
    api_key: Option<&str>,
    opts: server::ServeOptions,
) -> Started
where
    B: engine::backend::Backend + Send + 'static,
    B::Buf: Send,
{
    let state = state_for(
        core,
        rebuild,
        tokenizer,
        model.into(),
        api_key.map(str::to_string),
    );
    let engine = state.engine.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            server::serve_with(l, state, opts).await
        })
    });
    (port, engine, server)
}

/// A response: status, header block (lower-case names) and body.
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

/// Sends one request on a new connection and returns the open stream.
pub fn send(port: u16, method: &str, path: &str, body: &[u8], key: Option<&str>) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n{auth}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer (413) and close before reading a large body.
    let _ = s.write_all(body);
    s
}

/// Starts `POST /v1/completions` with `body` (no key) and returns the open stream.
pub fn send_completion(port: u16, body: &serde_json::Value) -> TcpStream {
    send(
        port,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
        None,
    )
}

/// `POST /v1/completions` with `body` (no key), read to the end.
pub fn post_completion(port: u16, body: &serde_json::Value) -> Reply {
    request(
        port,
        "POST",
        "/v1/completions",
        body.to_string().as_bytes(),
        None,
    )
}

/// An engine over the tiny model with `num_blocks` pages and weights from `seed`, and its
/// tokenizer.
pub fn tiny_engine(num_blocks: usize, seed: u64) -> EngineAndTokenizer<CpuBackend> {
    let spec = tiny_model_config();
    let cfg = engine::EngineConfig {
        num_blocks,
        ..engine::EngineConfig::default()
    };
    tools::engines::cpu_dummy_engine(spec.to_str().unwrap(), cfg, seed).unwrap()
}

/// One HTTP/1.1 request, read to the end.
pub fn request(port: u16, method: &str, path: &str, body: &[u8], key: Option<&str>) -> Reply {
    let mut s = send(port, method, path, body, key);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// (status, body) of one request.
pub fn http(port: u16, method: &str, path: &str, body: &[u8], key: Option<&str>) -> (u16, String) {
    let r = request(port, method, path, body, key);
    (r.status, r.body)
}

/// The `data:` payloads of a (possibly chunked) SSE body.
pub fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A Llama of 2 layers and hidden size 64 with random weights and the byte-level tokenizer:
/// fast enough for hundreds of requests in a test.
pub fn tiny_model_config() -> std::path::PathBuf {
    small_llama_config("tiny", 64, 4, 2)
}

/// A 2-layer Llama config file (byte-level vocabulary, intermediate size 2 × hidden) for
/// `dummy:` weights; head_dim is hidden / heads.
pub fn small_llama_config(
    tag: &str,
    hidden: usize,
    heads: usize,
    kv_heads: usize,
) -> std::path::PathBuf {
    // A file of its own per call: tests running at once in this process must not see
    // another one's config half-written.
    let p = super::tmp(tag).join("config.json");
    let cfg = serde_json::json!({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "vocab_size": 259, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "max_position_embeddings": 2048, "tie_word_embeddings": true, "hidden_act": "silu",
    });
    std::fs::write(&p, cfg.to_string()).unwrap();
    p
}
