//! Every per-request bound (`server::caps`) over real HTTP: one past each bound is a 400 whose
//! body names the field and the bound, a request at the bounds is served, and the API key
//! guards every route but the open ones.

use crate::common;

use common::http::{http, start, tiny_engine};
use serde_json::{json, Value};

const MODEL: &str = "tiny";
const KEY: &str = "sekret";

fn post(port: u16, path: &str, v: &Value) -> (u16, Value) {
    let (st, body) = http(port, "POST", path, v.to_string().as_bytes(), Some(KEY));
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{st} {e}: {body}"));
    (st, v)
}

fn words(n: usize, len: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:0len$}")).collect()
}

/// A JSON schema of `bytes` bytes or a little more (serialized): an object whose property
/// names fill it.
fn big_schema(bytes: usize) -> Value {
    let mut props = serde_json::Map::new();
    let mut schema = json!({"type": "object", "properties": {}});
    while schema.to_string().len() < bytes {
        for _ in 0..64 {
            let name = format!("property_{:030}", props.len());
            props.insert(name, json!({"type": "integer"}));
        }
        schema = json!({"type": "object", "properties": props.clone()});
    }
    schema
}

fn tool(name: &str, parameters: Value) -> Value {
    json!({"type": "function", "function": {"name": name, "parameters": parameters}})
}

#[test]
fn one_past_each_cap_is_a_400_naming_it_and_the_caps_themselves_are_served() {
    let port = start(tiny_engine(512, 3), MODEL, Some(KEY));
    let cmpl = |extra: Value| {
        let mut v = json!({"model": MODEL, "prompt": "ab", "max_tokens": 2});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let chat = |extra: Value| {
        let mut v = json!({"model": MODEL, "max_tokens": 2,
                           "messages": [{"role": "user", "content": "ab"}]});
        v.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        v
    };
    let many_messages: Vec<Value> = (0..2049)
        .map(|_| json!({"role": "user", "content": "a"}))
        .collect();
    let many_tools: Vec<Value> = (0..129)
        .map(|i| tool(&format!("f{i}"), json!({"type": "object"})))
        .collect();
    let many_items: Vec<Value> = (0..2049)
        .map(|_| json!({"role": "user", "content": "a"}))
        .collect();
    // (what, path, body, the field named, the bound the message states)
    let cases: Vec<(&str, &str, Value, &str, &str)> = vec![
        ("n", "/v1/completions", cmpl(json!({"n": 65})), "n", "64"),
        (
            "best_of",
            "/v1/completions",
            cmpl(json!({"best_of": 65, "n": 1})),
            "best_of",
            "64",
        ),
        (
            "best_of != n",
            "/v1/completions",
            cmpl(json!({"best_of": 2})),
            "best_of",
            "n 1",
        ),
        (
            "logprobs",
            "/v1/completions",
            cmpl(json!({"logprobs": 21})),
            "logprobs",
            "20",
        ),
        (
            "top_logprobs",
            "/v1/chat/completions",
            chat(json!({"logprobs": true, "top_logprobs": 21})),
            "top_logprobs",
            "20",
        ),
        (
            "stop count",
            "/v1/completions",
            cmpl(json!({"stop": words(17, 3)})),
            "stop",
            "16",
        ),
        (
            "stop length",
            "/v1/completions",
            cmpl(json!({"stop": ["x".repeat(1025)]})),
            "stop",
            "1024",
        ),
        (
            "prompts",
            "/v1/completions",
            json!({"model": MODEL, "prompt": words(257, 1), "max_tokens": 1}),
            "prompt",
            "256",
        ),
        (
            "token prompts",
            "/v1/completions",
            json!({"model": MODEL, "prompt": vec![vec![97u32]; 257], "max_tokens": 1}),
            "prompt",
            "256",
        ),
        (
            "messages",
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": many_messages}),
            "messages",
            "2048",
        ),
        (
            "tools",
            "/v1/chat/completions",
            chat(json!({"tools": many_tools})),
            "tools",
            "128",
        ),
        (
            "tool schema",
            "/v1/chat/completions",
            chat(json!({"tools": [tool("f", big_schema(70_000))]})),
            "tools",
            "65536",
        ),
        (
            "response_format schema",
            "/v1/chat/completions",
            chat(json!({"response_format": {"type": "json_schema",
                     "json_schema": {"name": "x", "schema": big_schema(70_000)}}})),
            "response_format",
            "65536",
        ),
        (
            "regex",
            "/v1/completions",
            cmpl(json!({"structured_outputs": {"regex": "a".repeat(70_000)}})),
            "structured_outputs",
            "65536",
        ),
        (
            "choices",
            "/v1/completions",
            cmpl(json!({"structured_outputs": {"choice": words(3000, 30)}})),
            "structured_outputs",
            "65536",
        ),
        (
            "responses input",
            "/v1/responses",
            json!({"model": MODEL, "input": many_items}),
            "input",
            "2048",
        ),
    ];
    for (what, path, body, param, bound) in cases {
        let (st, v) = post(port, path, &body);
        assert_eq!(st, 400, "{what}: {v}");
        assert_eq!(v["error"]["param"], param, "{what}: {v}");
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains(bound),
            "{what}: `{msg}` does not state {bound}"
        );
        assert_eq!(v["error"]["type"], "invalid_request_error", "{what}: {v}");
    }
    // Exactly at the bounds: served.
    let (st, v) = post(
        port,
        "/v1/completions",
        &cmpl(json!({"n": 64, "best_of": 64, "logprobs": 20, "stop": words(16, 1024)})),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"].as_array().map(Vec::len), Some(64));
    // The legacy completions shape keys alternatives by their text, and byte tokens that are
    // not UTF-8 on their own share one; chat's list below counts them exactly.
    let alternatives = v["choices"][0]["logprobs"]["top_logprobs"][0]
        .as_object()
        .map_or(0, |o| o.len());
    assert!((1..=20).contains(&alternatives), "{alternatives}");
    let (st, v) = post(
        port,
        "/v1/chat/completions",
        &chat(json!({"logprobs": true, "top_logprobs": 20,
                     "response_format": {"type": "json_schema",
                                         "json_schema": {"name": "x", "schema": big_schema(56_000)}}})),
    );
    assert_eq!(st, 200, "{v}");
    let top = &v["choices"][0]["logprobs"]["content"][0]["top_logprobs"];
    assert_eq!(top.as_array().map(Vec::len), Some(20), "{v}");
}

/// Every route of the server, with the method it answers.
const ROUTES: [(&str, &str); 10] = [
    ("POST", "/v1/completions"),
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("GET", "/v1/models"),
    ("POST", "/tokenize"),
    ("POST", "/detokenize"),
    ("GET", "/health"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
    // An unknown path is guarded too: nothing about the server leaks without the key.
    ("GET", "/v1/unknown"),
];

#[test]
fn the_api_key_guards_every_route_but_health_metrics_and_the_schema() {
    let port = start(tiny_engine(64, 4), MODEL, Some(KEY));
    for (method, path) in ROUTES {
        let open = server::auth::OPEN_PATHS.contains(&path);
        for key in [None, Some("wrong"), Some("sekret-"), Some("")] {
            let (st, body) = http(port, method, path, b"{}", key);
            if open {
                assert_ne!(st, 401, "{method} {path} is open: {body}");
            } else {
                assert_eq!(st, 401, "{method} {path} with {key:?}: {body}");
                let v: Value = serde_json::from_str(&body).unwrap();
                assert!(v["error"]["message"].is_string(), "{body}");
            }
        }
        // With the key, no route refuses it.
        let (st, body) = http(port, method, path, b"{}", Some(KEY));
        assert_ne!(st, 401, "{method} {path} with the key: {body}");
    }
}
