//! Structured outputs, tool calls and the Responses API over real HTTP on 127.0.0.1.
//!
//! The tiny random-weight model shows what constrained decoding guarantees whatever the
//! weights (every output parses; a choice is one of the choices; constrained and free
//! requests share batches; a grammar that cannot finish ends with `length`); the default
//! model runs a tool round trip through its real chat template. Bad input is a 400 naming
//! the field. (The official Python client's view of the same is `openai_client.py`.)

use std::thread;

use serde_json::{json, Value};

use crate::common::default_model;
use crate::common::http::{http, sse_data, start, tiny_engine};
use engine::EngineConfig;
use tools::engines::cpu_engine;

fn post(port: u16, path: &str, v: &Value) -> (u16, Value) {
    let (st, body) = http(port, "POST", path, v.to_string().as_bytes(), None);
    let v = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{st} {body}: {e}"));
    (st, v)
}

fn chat(port: u16, body: Value) -> (u16, Value) {
    post(port, "/v1/chat/completions", &body)
}

fn person_schema() -> Value {
    json!({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "pets": {"type": "array", "items": {"enum": ["cat", "dog"]}, "maxItems": 3},
    }, "required": ["name", "age", "pets"], "additionalProperties": false})
}

#[test]
fn constrained_and_free_requests_share_batches_and_constraints_hold() {
    let port = start(tiny_engine(256, 7), "tiny", None);
    let schema_req = |seed: u64| {
        json!({"model": "tiny", "messages": [{"role": "user", "content": "a person"}],
               "max_tokens": 120, "temperature": 1.0, "seed": seed,
               "response_format": {"type": "json_schema",
                                   "json_schema": {"name": "person", "schema": person_schema()}}})
    };
    // Four schema requests and four free ones at once: one batch.
    let workers: Vec<_> = (0..8u64)
        .map(|i| {
            thread::spawn(move || {
                if i % 2 == 0 {
                    chat(port, schema_req(i))
                } else {
                    chat(
                        port,
                        json!({"model": "tiny", "max_tokens": 20, "seed": i,
                        "messages": [{"role": "user", "content": "free"}], "ignore_eos": true}),
                    )
                }
            })
        })
        .collect();
    for (i, w) in workers.into_iter().enumerate() {
        let (st, v) = w.join().unwrap();
        assert_eq!(st, 200, "{v}");
        let c = &v["choices"][0];
        let text = c["message"]["content"].as_str().unwrap();
        if i % 2 == 1 {
            assert_eq!(c["finish_reason"], "length");
            continue;
        }
        assert_eq!(c["finish_reason"], "stop", "{text}");
        let p: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert!(p["name"].as_str().unwrap().chars().count() <= 8, "{text}");
        assert!((0..=150).contains(&p["age"].as_i64().unwrap()), "{text}");
        let pets = p["pets"].as_array().unwrap();
        assert!(pets.len() <= 3 && pets.iter().all(|x| x == "cat" || x == "dog"));
    }
    // vLLM's fields: a choice, a regex, a Lark grammar; n = 3 samples each constrained.
    let (st, v) = chat(
        port,
        json!({"model": "tiny", "messages": [{"role": "user", "content": "pick"}], "n": 3,
               "max_tokens": 10, "structured_outputs": {"choice": ["left", "right"]}}),
    );
    assert_eq!(st, 200, "{v}");
    for c in v["choices"].as_array().unwrap() {
        let t = c["message"]["content"].as_str().unwrap();
        assert!(t == "left" || t == "right", "{t}");
    }
    let (st, v) = post(
        port,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "id:", "max_tokens": 10,
                "structured_outputs": {"regex": "[A-Z]{2}-[0-9]{3}"}}),
    );
    assert_eq!(st, 200, "{v}");
    let t = v["choices"][0]["text"].as_str().unwrap();
    assert!(t.len() == 6 && t.as_bytes()[2] == b'-', "{t}");
    let (_, v) = post(
        port,
        "/v1/completions",
        &json!({"model": "tiny", "prompt": "x", "max_tokens": 30,
                "guided_grammar": "start: \"(\" \"a\"+ \")\""}),
    );
    let t = v["choices"][0]["text"].as_str().unwrap();
    assert!(
        t.starts_with('(')
            && t.trim_start_matches('(')
                .chars()
                .all(|c| c == 'a' || c == ')'),
        "{t}"
    );
    // A grammar that cannot finish within max_tokens ends with `length`, promptly.
    let (st, v) = chat(
        port,
        json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "max_tokens": 5,
               "structured_outputs": {"regex": "a{1000}"}}),
    );
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["choices"][0]["message"]["content"], "aaaaa");
}

#[test]
fn tool_choices_streams_and_bad_input() {
    let port = start(tiny_engine(256, 5), "tiny", None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 10},
            "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"],
            "additionalProperties": false}}},
        {"type": "function", "function": {"name": "now", "parameters":
            {"type": "object", "properties": {}, "additionalProperties": false}}}]);
    let req = |choice: Value, stream: bool, seed: u64| {
        json!({"model": "tiny", "messages": [{"role": "user", "content": "weather?"}],
               "tools": tools, "tool_choice": choice, "max_tokens": 150, "seed": seed,
               "stream": stream})
    };
    for seed in 0..4 {
        for choice in [
            json!("required"),
            json!({"type": "function", "function": {"name": "get_weather"}}),
        ] {
            let (st, v) = chat(port, req(choice.clone(), false, seed));
            assert_eq!(st, 200, "{v}");
            let c = &v["choices"][0];
            assert_eq!(c["finish_reason"], "tool_calls", "{v}");
            let calls = c["message"]["tool_calls"].as_array().unwrap();
            assert!(!calls.is_empty());
            for call in calls {
                let f = &call["function"];
                let args: Value = serde_json::from_str(f["arguments"].as_str().unwrap()).unwrap();
                if f["name"] == "get_weather" {
                    assert!(
                        args["city"].is_string() && (args["unit"] == "c" || args["unit"] == "f")
                    );
                } else {
                    assert_eq!(f["name"], "now");
                    assert_eq!(args, json!({}));
                }
                assert!(call["id"].as_str().unwrap().starts_with("call_"));
            }
            // The stream reassembles to the same calls.
            let (st, body) = http(
                port,
                "POST",
                "/v1/chat/completions",
                req(choice, true, seed).to_string().as_bytes(),
                None,
            );
            assert_eq!(st, 200);
            let mut streamed: Vec<(String, String, String)> = vec![];
            let mut finish = Value::Null;
            for d in sse_data(&body).iter().filter(|d| *d != "[DONE]") {
                let chunk: Value = serde_json::from_str(d).unwrap();
                let ch = &chunk["choices"][0];
                if !ch["finish_reason"].is_null() {
                    finish = ch["finish_reason"].clone();
                }
                for tc in ch["delta"]["tool_calls"].as_array().into_iter().flatten() {
                    let i = tc["index"].as_u64().unwrap() as usize;
                    if let Some(id) = tc["id"].as_str() {
                        assert_eq!(i, streamed.len());
                        streamed.push((
                            id.into(),
                            tc["function"]["name"].as_str().unwrap().into(),
                            String::new(),
                        ));
                    }
                    streamed[i]
                        .2
                        .push_str(tc["function"]["arguments"].as_str().unwrap_or(""));
                }
            }
            assert_eq!(finish, "tool_calls");
            let whole: Vec<(String, String)> = calls
                .iter()
                .map(|c| {
                    (
                        c["function"]["name"].as_str().unwrap().into(),
                        c["function"]["arguments"].as_str().unwrap().into(),
                    )
                })
                .collect();
            let parts: Vec<(String, String)> =
                streamed.into_iter().map(|(_, n, a)| (n, a)).collect();
            assert_eq!(parts, whole);
        }
    }
    // Bad input: each a 400 naming its field.
    let bad = [
        (
            req(
                json!({"type": "function", "function": {"name": "nope"}}),
                false,
                0,
            ),
            "tool_choice",
        ),
        (req(json!("auto"), false, 0), "tool_choice"),
        (
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}], "tools": tools}),
            "tool_choice",
        ),
        (
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_schema", "json_schema":
                    {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "no-such"}}}}}}),
            "response_format",
        ),
        (
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                "structured_outputs": {"regex": "(unclosed"}}),
            "structured_outputs",
        ),
        (
            json!({"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                "response_format": {"type": "json_object"}, "tools": tools, "tool_choice": "required"}),
            "response_format",
        ),
    ];
    for (body, field) in bad {
        let (st, v) = chat(port, body.clone());
        assert_eq!(st, 400, "{body}: {v}");
        assert_eq!(v["error"]["param"], field, "{v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    // The server still serves.
    let (st, _) = chat(port, req(json!("required"), false, 9));
    assert_eq!(st, 200);
}

#[test]
fn the_responses_api_streams_what_it_answers_and_refuses_state() {
    let port = start(tiny_engine(128, 2), "tiny", None);
    let body = json!({"model": "tiny", "instructions": "Be terse.", "input": "hello",
                      "max_output_tokens": 12, "temperature": 0});
    let (st, v) = post(port, "/v1/responses", &body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "incomplete");
    assert_eq!(v["incomplete_details"]["reason"], "max_output_tokens");
    assert_eq!(v["usage"]["output_tokens"], 12);
    let text = v["output"][0]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let (st, raw) = http(
        port,
        "POST",
        "/v1/responses",
        streamed.to_string().as_bytes(),
        None,
    );
    assert_eq!(st, 200);
    let kinds: Vec<String> = raw
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .map(str::to_string)
        .collect();
    assert_eq!(kinds.first().map(String::as_str), Some("response.created"));
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("response.incomplete")
    );
    let events: Vec<Value> = sse_data(&raw)
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let deltas: String = events
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .map(|e| e["delta"].as_str().unwrap())
        .collect();
    assert_eq!(deltas, text);
    let last = &events.last().unwrap()["response"];
    assert_eq!(last["output"][0]["content"][0]["text"], text.as_str());
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (0..events.len() as u64).collect::<Vec<_>>());
    // Tools (the API's flat shape) and a structured text.format.
    let (st, v) = post(
        port,
        "/v1/responses",
        &json!({"model": "tiny", "input": [{"role": "user", "content": [{"type": "input_text", "text": "go"}]}],
                "tools": [{"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}, "additionalProperties": false}}],
                "tool_choice": "required", "max_output_tokens": 60}),
    );
    assert_eq!(st, 200, "{v}");
    let call = v["output"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["type"] == "function_call")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(call["name"], "now");
    let (st, v) = post(
        port,
        "/v1/responses",
        &json!({"model": "tiny", "input": "n?", "max_output_tokens": 40,
                "text": {"format": {"type": "json_schema", "name": "n",
                         "schema": {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
                                    "required": ["n"], "additionalProperties": false}}}}),
    );
    assert_eq!(st, 200, "{v}");
    let t: Value =
        serde_json::from_str(v["output"][0]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert!((0..=9).contains(&t["n"].as_i64().unwrap()));
    for (extra, field) in [
        (
            json!({"previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (json!({"store": true}), "store"),
        (json!({"input": [{"type": "web_search_call"}]}), "input"),
    ] {
        let mut b = body.clone();
        for (k, val) in extra.as_object().unwrap() {
            b[k] = val.clone();
        }
        let (st, v) = post(port, "/v1/responses", &b);
        assert_eq!(st, 400, "{v}");
        assert_eq!(v["error"]["param"], field);
    }
}

#[test]
fn a_tool_round_trip_through_the_default_models_template() {
    let cfg = EngineConfig {
        num_blocks: 128,
        ..EngineConfig::default()
    };
    let port = start(cpu_engine(&default_model(), cfg).unwrap(), "smol", None);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                       "required": ["city"], "additionalProperties": false}}}]);
    let mut messages = vec![json!({"role": "user", "content": "What is the weather in Paris?"})];
    let (st, v) = chat(
        port,
        json!({"model": "smol", "messages": messages, "tools": tools, "tool_choice": "required",
               "max_tokens": 40, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    let msg = v["choices"][0]["message"].clone();
    assert!(msg["content"].is_null(), "{msg}");
    let call = &msg["tool_calls"][0];
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args["city"].is_string(), "{args}");
    messages.push(msg.clone());
    messages.push(json!({"role": "tool", "tool_call_id": call["id"], "content": "18 C, sunny"}));
    let (st, v) = chat(
        port,
        json!({"model": "smol", "messages": messages, "tools": tools, "tool_choice": "none",
               "max_tokens": 12, "temperature": 0}),
    );
    assert_eq!(st, 200, "{v}");
    let answer = &v["choices"][0];
    assert!(answer["message"]["tool_calls"].is_null());
    assert!(!answer["message"]["content"].as_str().unwrap().is_empty());
    // The tool turns reached the model through the system-message rendering.
    let (st, v) = post(port, "/tokenize", &json!({"messages": messages}));
    assert_eq!(st, 200);
    let n = v["count"].as_u64().unwrap();
    let (_, plain) = post(port, "/tokenize", &json!({"messages": [messages[0]]}));
    assert!(n > plain["count"].as_u64().unwrap() + 10);
    let (st, v) = chat(
        port,
        json!({"model": "smol", "messages": [messages[0]], "tools": tools, "tool_choice": "auto"}),
    );
    assert_eq!(st, 400, "auto on a template with no tool format: {v}");
}
