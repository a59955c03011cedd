//! `GET /openapi.json` from a live server: an OpenAPI 3.1 document that describes every route
//! the router has (`server::ROUTES`), says which need the API key, and whose schemas the
//! server's real answers (successes, streams and errors) satisfy. The validation is done by
//! `openapi_check.py` with `openapi-spec-validator` and `jsonschema` (the interpreter from
//! PAGEDRT_OPENAI_PYTHON, which .ci/run sets up); without them that half says it is skipped,
//! and fails where PAGEDRT_REQUIRE_JSONSCHEMA is set.

use crate::common;

use common::http::{request, start, tiny_engine, Reply};
use serde_json::{json, Value};

const KEY: &str = "sekret";

/// The events of an SSE body as a client parses them: `event` (default `message`) and the
/// joined `data` lines.
fn sse_events(body: &str) -> Vec<Value> {
    let mut events = vec![];
    let (mut event, mut data) = (None::<String>, Vec::<String>::new());
    for line in body.lines() {
        if line.is_empty() {
            if !data.is_empty() {
                events.push(json!({"event": event.take().unwrap_or("message".into()),
                                   "data": data.join("\n")}));
            }
            data.clear();
            event = None;
        } else if let Some(d) = line.strip_prefix("data: ") {
            data.push(d.to_string());
        } else if let Some(e) = line.strip_prefix("event: ") {
            event = Some(e.to_string());
        }
    }
    events
}

/// One answer as `openapi_check.py` takes it.
fn answer(method: &str, path: &str, r: &Reply) -> Value {
    let content_type = r
        .headers
        .lines()
        .find_map(|l| l.strip_prefix("content-type: "))
        .map(str::trim);
    let body = match content_type {
        Some(t) if t.starts_with("text/event-stream") => json!(sse_events(&dechunk(&r.body))),
        Some(t) if t.starts_with("application/json") => serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.body)),
        _ => json!(r.body),
    };
    json!({"method": method.to_ascii_lowercase(), "path": path, "status": r.status,
           "content_type": content_type, "body": body})
}

/// The body of a chunked response with its chunk-size lines removed.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_string();
        };
        if n == 0 || tail.len() < n {
            break;
        }
        out.push_str(&tail[..n]);
        rest = tail[n..].strip_prefix("\r\n").unwrap_or(&tail[n..]);
    }
    out
}

#[test]
fn the_document_covers_every_route_and_real_answers_fit_it() {
    let port = start(tiny_engine(128, 5), "tiny", Some(KEY));
    let get = |path: &str, key: Option<&str>| request(port, "GET", path, b"", key);
    let post = |path: &str, body: &Value, key: Option<&str>| {
        request(port, "POST", path, body.to_string().as_bytes(), key)
    };

    // Open without the key, like /health and /metrics.
    let r = get("/openapi.json", None);
    assert_eq!(r.status, 200, "{}", r.body);
    let doc: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    for (method, path) in server::ROUTES {
        let op = &doc["paths"][path][method];
        assert!(op.is_object(), "{method} {path} is not in the document");
        let open = ["/health", "/metrics", "/openapi.json"].contains(path);
        // The document says which routes need the key, and the server agrees.
        assert_eq!(op.get("security").is_none(), open, "{method} {path}");
        let probe = request(port, &method.to_ascii_uppercase(), path, b"{}", None);
        if open {
            assert_ne!(probe.status, 401, "{method} {path} wants a key");
        } else {
            assert_eq!(probe.status, 401, "{method} {path} without a key");
            assert!(op["responses"]["401"].is_object(), "{method} {path}");
        }
    }
    let documented: usize = paths.values().map(|p| p.as_object().unwrap().len()).sum();
    assert_eq!(
        documented,
        server::ROUTES.len(),
        "the document has routes the router lacks"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );

    // Real answers, to validate against the document.
    let k = Some(KEY);
    let prompt = json!({"model": "tiny", "prompt": "Hello", "max_tokens": 5, "seed": 1});
    let chat = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                      "max_tokens": 5, "logprobs": true, "top_logprobs": 2, "n": 2});
    let mut answers = vec![];
    let mut add = |method: &str, path: &str, r: Reply, want: u16| {
        assert_eq!(r.status, want, "{method} {path}: {}", r.body);
        answers.push(answer(method, path, &r));
    };
    let mut with_logprobs = prompt.clone();
    with_logprobs["logprobs"] = json!(3);
    add(
        "POST",
        "/v1/completions",
        post("/v1/completions", &with_logprobs, k),
        200,
    );
    let mut streamed = prompt.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    add(
        "POST",
        "/v1/completions",
        post("/v1/completions", &streamed, k),
        200,
    );
    add(
        "POST",
        "/v1/chat/completions",
        post("/v1/chat/completions", &chat, k),
        200,
    );
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    add(
        "POST",
        "/v1/chat/completions",
        post("/v1/chat/completions", &chat_stream, k),
        200,
    );
    let tools = json!({"model": "tiny", "messages": [{"role": "user", "content": "Weather?"}],
        "max_tokens": 40, "tool_choice": "required", "tools": [{"type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object",
        "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]});
    add(
        "POST",
        "/v1/chat/completions",
        post("/v1/chat/completions", &tools, k),
        200,
    );
    let resp = json!({"model": "tiny", "input": "Hi", "max_output_tokens": 4,
                      "metadata": {"a": "b"}});
    add(
        "POST",
        "/v1/responses",
        post("/v1/responses", &resp, k),
        200,
    );
    let mut resp_stream = resp.clone();
    resp_stream["stream"] = json!(true);
    add(
        "POST",
        "/v1/responses",
        post("/v1/responses", &resp_stream, k),
        200,
    );
    add("GET", "/v1/models", get("/v1/models", k), 200);
    let tok = post("/tokenize", &json!({"prompt": "Hello"}), k);
    add("POST", "/tokenize", tok, 200);
    add(
        "POST",
        "/tokenize",
        post(
            "/tokenize",
            &json!({"messages": [{"role": "user", "content": "x"}]}),
            k,
        ),
        200,
    );
    add(
        "POST",
        "/detokenize",
        post("/detokenize", &json!({"tokens": [72, 105]}), k),
        200,
    );
    add("GET", "/health", get("/health", None), 200);
    add("GET", "/metrics", get("/metrics", None), 200);
    add("GET", "/openapi.json", get("/openapi.json", None), 200);
    // Errors: each is an OpenAI-style body the document lists for its status.
    add(
        "POST",
        "/v1/completions",
        post("/v1/completions", &json!({"model": "tiny"}), k),
        400,
    );
    add(
        "POST",
        "/v1/completions",
        post(
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "x", "n": 65}),
            k,
        ),
        400,
    );
    add(
        "POST",
        "/v1/completions",
        post(
            "/v1/completions",
            &json!({"model": "nope", "prompt": "x"}),
            k,
        ),
        404,
    );
    add(
        "POST",
        "/v1/chat/completions",
        post("/v1/chat/completions", &chat, Some("wrong")),
        401,
    );
    add(
        "POST",
        "/v1/responses",
        post(
            "/v1/responses",
            &json!({"model": "tiny", "input": "x", "store": true}),
            k,
        ),
        400,
    );
    add(
        "POST",
        "/detokenize",
        post("/detokenize", &json!({"tokens": [100000]}), k),
        400,
    );
    add(
        "POST",
        "/tokenize",
        request(port, "POST", "/tokenize", b"{not json", k),
        400,
    );
    let big = vec![b' '; server::MAX_BODY_BYTES + 10];
    add(
        "POST",
        "/tokenize",
        request(port, "POST", "/tokenize", &big, k),
        413,
    );

    // Outside the document's routes, errors keep the same body: 405 with Allow, 404.
    let r = request(port, "DELETE", "/v1/models", b"", k);
    assert_eq!(r.status, 405);
    assert!(r.headers.contains("allow: get,head"), "{}", r.headers);
    let err: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(err["error"]["code"], "method_not_allowed");
    let r = get("/v2/nothing", k);
    assert_eq!(r.status, 404);
    let err: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(err["error"]["type"], "invalid_request_error");

    check_with_python(&doc, &answers);
}

/// Runs `openapi_check.py` on the document and the answers.
fn check_with_python(doc: &Value, answers: &[Value]) {
    let name = "the_document_covers_every_route_and_real_answers_fit_it";
    let Some(python) = std::env::var_os("PAGEDRT_OPENAI_PYTHON") else {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_JSONSCHEMA").is_none(),
            "PAGEDRT_REQUIRE_JSONSCHEMA is set but PAGEDRT_OPENAI_PYTHON is not"
        );
        report_skip!(
            "{name}: the schema validation; set PAGEDRT_OPENAI_PYTHON to a python with \
             jsonschema and openapi-spec-validator (.ci/run does)"
        );
        return;
    };
    let dir = common::tmp("openapi");
    let (doc_path, answers_path) = (dir.join("openapi.json"), dir.join("answers.json"));
    std::fs::write(&doc_path, doc.to_string()).unwrap();
    std::fs::write(&answers_path, json!(answers).to_string()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/openapi_check.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&doc_path)
        .arg(&answers_path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if let Some(reason) = stdout.lines().find_map(|l| l.strip_prefix("SKIP: ")) {
        assert!(
            std::env::var_os("PAGEDRT_REQUIRE_JSONSCHEMA").is_none(),
            "PAGEDRT_REQUIRE_JSONSCHEMA is set but: {reason}"
        );
        report_skip!("{name}: {reason}");
        return;
    }
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
