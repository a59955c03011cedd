//! `POST /v1/responses`: OpenAI's Responses API, the stateless subset.
//!
//! `input` (a string, or message items, `function_call` and `function_call_output` items),
//! `instructions`, `max_output_tokens`, `temperature`, `top_p`, `tools` (function tools, in
//! the API's flat shape), `tool_choice`, `parallel_tool_calls`, `text.format` (a structured
//! output) and `stream`, run through the same template, constraint and tool-call parser as
//! chat. Nothing is stored: `previous_response_id`, `store: true`, `background` and
//! `conversation` are refused with a 400 that says so.
//!
//! One [`ResponseBuilder`] turns the parser's pieces into output items and, streaming, into
//! the API's events (`response.created`, `response.output_item.added`,
//! `response.output_text.delta`, `response.function_call_arguments.delta`, ...,
//! `response.completed`), so a stream always adds up to the non-streamed response.

use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json as AxumJson;
use serde_json::{json, Value as Json};

use crate::api_responses::{
    ErrorBody, ResponseEcho, ResponseError, ResponseObject, ResponseStatus,
};
use crate::api_types::Sampling;
use crate::caps;
use crate::chat::{call_id_prefix, prepare, Prepared, ToolFields};
use crate::error::ApiError;
use crate::generation::{collect, last_error, sse_stream, submit_all};
use crate::handlers::{check_model, now, parse, Body, S};
pub(crate) use crate::response_builder::EVENTS;
use crate::response_builder::{sse, ResponseBuilder, ResponseHead};
use crate::structured;
use crate::tool_calls::{Piece, ToolCallStream};
use crate::validate::{content_text, sampling_params};
use models::tokenizer::ChatMessage;
use utoipa::openapi::schema::{
    ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::RefOr;

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::bad_request(message, Some(param))
}

/// The request fields `POST /v1/responses` reads; the others are refused or ignored.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
pub(crate) struct ResponsesRequest {
    /// The served model's name (`GET /v1/models`).
    model: String,
    /// A string (one user message), or a non-empty list of items: messages (`{"role",
    /// "content"}`), `function_call` and `function_call_output` items.
    #[schema(schema_with = input_schema)]
    input: Json,
    /// A system message before the input.
    instructions: Option<String>,
    #[schema(minimum = 1)]
    max_output_tokens: Option<i64>,
    #[schema(minimum = 0, maximum = 2)]
    temperature: Option<f64>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    top_p: Option<f64>,
    seed: Option<u64>,
    /// Function tools in the flat shape: `[{"type": "function", "name", "parameters"}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    tools: Option<Json>,
    /// `none`, `auto`, `required` or `{"type": "function", "name"}`.
    #[schema(value_type = Option<Value>)]
    tool_choice: Option<Json>,
    parallel_tool_calls: Option<bool>,
    /// `{"format": {"type": "text" | "json_object" | "json_schema", ...}}`.
    #[schema(value_type = Option<Object>)]
    text: Option<Json>,
    /// Answer with the API's server-sent events.
    #[serde(default)]
    stream: bool,
    /// Refused unless null: the server stores nothing.
    #[schema(schema_with = only_null)]
    previous_response_id: Option<String>,
    /// `true` is refused.
    #[schema(schema_with = only_false)]
    store: Option<bool>,
    /// `true` is refused.
    #[schema(schema_with = only_false)]
    background: Option<bool>,
    /// Refused unless null.
    #[schema(schema_with = only_null)]
    conversation: Option<Json>,
    /// Echoed in the response.
    #[schema(value_type = Option<Object>)]
    metadata: Option<Json>,
}

/// `input`: a string or a non-empty list.
fn input_schema() -> impl Into<RefOr<Schema>> {
    OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String))
        .item(
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::Object))
                .min_items(Some(1)),
        )
}

/// A field only a stateful server could honour: null or absent.
fn only_null() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new().schema_type(Type::Null)
}

/// A flag whose `true` only a stateful server could honour.
fn only_false() -> impl Into<RefOr<Schema>> {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Boolean, Type::Null]))
        .enum_values(Some([json!(false), Json::Null]))
}

/// `text` and `metadata` are objects (both are echoed in the response as objects).
fn objects_only(r: &ResponsesRequest) -> Result<(), ApiError> {
    for (name, v) in [("text", &r.text), ("metadata", &r.metadata)] {
        if v.as_ref().is_some_and(|v| !v.is_object()) {
            return Err(bad(format!("{name} must be an object"), name));
        }
    }
    Ok(())
}

/// What a stateless server cannot do.
fn refuse_state(r: &ResponsesRequest) -> Result<(), ApiError> {
    let stateless = "pagedrt's Responses API is stateless";
    if r.previous_response_id.is_some() {
        return Err(bad(
            format!("{stateless}: previous_response_id is not supported; send the whole conversation as input items"),
            "previous_response_id",
        ));
    }
    if r.store == Some(true) {
        return Err(bad(
            format!("{stateless}: responses are not stored (send store: false or leave it out)"),
            "store",
        ));
    }
    if r.background == Some(true) {
        return Err(bad(
            format!("{stateless}: background responses are not supported"),
            "background",
        ));
    }
    if r.conversation.is_some() {
        return Err(bad(
            format!("{stateless}: conversations are not supported"),
            "conversation",
        ));
    }
    Ok(())
}

/// `instructions` and `input` as chat messages.
fn input_messages(instructions: Option<&str>, input: &Json) -> Result<Vec<ChatMessage>, ApiError> {
    let mut msgs = vec![];
    if let Some(i) = instructions {
        msgs.push(ChatMessage::new("system", i));
    }
    let items = match input {
        Json::String(s) => {
            msgs.push(ChatMessage::new("user", s.clone()));
            return Ok(msgs);
        }
        Json::Array(items) if !items.is_empty() => {
            caps::count("input", items.len(), caps::MAX_MESSAGES, "input items")?;
            items
        }
        _ => {
            return Err(bad(
                "input must be a string or a non-empty list of items",
                "input",
            ))
        }
    };
    for (i, item) in items.iter().enumerate() {
        let kind = item.get("type").and_then(Json::as_str).unwrap_or("message");
        let field = |k: &str| item.get(k).and_then(Json::as_str).map(str::to_string);
        match kind {
            "message" => {
                let role = match field("role").as_deref() {
                    Some("developer") | Some("system") => "system",
                    Some("user") => "user",
                    Some("assistant") => "assistant",
                    other => {
                        return Err(bad(format!("input[{i}]: unknown role {other:?}"), "input"))
                    }
                };
                let content = content_text(item.get("content").unwrap_or(&Json::Null), "input")?;
                msgs.push(ChatMessage::new(role, content));
            }
            "function_call" => {
                let (Some(call_id), Some(name)) = (field("call_id"), field("name")) else {
                    return Err(bad(format!("input[{i}]: a function_call needs call_id and name"), "input"));
                };
                let args = field("arguments").unwrap_or_else(|| "{}".into());
                let args: Json = serde_json::from_str(&args).unwrap_or(Json::String(args));
                let call = json!({"id": call_id, "type": "function",
                                  "function": {"name": name, "arguments": args}});
                // Parallel calls are one assistant turn.
                match msgs.last_mut() {
                    Some(m) if m.role == "assistant" && m.tool_calls.is_some() => {
                        m.tool_calls.get_or_insert_with(Vec::new).push(call);
                    }
                    _ => {
                        let mut m = ChatMessage::new("assistant", "");
                        m.tool_calls = Some(vec![call]);
                        msgs.push(m);
                    }
                }
            }
            "function_call_output" => {
                let Some(call_id) = field("call_id") else {
                    return Err(bad(format!("input[{i}]: a function_call_output needs call_id"), "input"));
                };
                let output = match item.get("output") {
                    Some(Json::String(s)) => s.clone(),
                    Some(v) => content_text(v, "input")?,
                    None => String::new(),
                };
                let mut m = ChatMessage::new("tool", output);
                m.tool_call_id = Some(call_id);
                msgs.push(m);
            }
            other => {
                return Err(bad(
                    format!("input[{i}]: items of type `{other}` are not supported (message, function_call, function_call_output are)"),
                    "input",
                ))
            }
        }
    }
    Ok(msgs)
}

#[utoipa::path(
    post,
    path = "/v1/responses",
    tag = "openai",
    summary = "OpenAI's Responses API, stateless (its events with `stream`).",
    request_body = ResponsesRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The response, or with `stream` the API's named server-sent events (`response.created` ... `response.completed`).", content(
            (ResponseObject = "application/json"),
            (crate::openapi::ResponseEvent = "text/event-stream"),
        )),
        (status = 400, description = "A field is invalid or out of range (`param` names it).", body = ErrorBody),
        (status = 401, description = "The API key is missing or wrong.", body = ErrorBody),
        (status = 404, description = "The model is not the one this server serves.", body = ErrorBody),
        (status = 429, description = "The queue is full (`Retry-After` says when to retry).", body = ErrorBody),
        (status = 500, description = "The engine failed while running the request.", body = ErrorBody),
        (status = 503, description = "The engine has stopped.", body = ErrorBody),
    ),
)]
pub async fn create(State(st): S, body: Body) -> Result<Response, ApiError> {
    let req: ResponsesRequest = parse(body)?;
    check_model(&req.model, &st)?;
    refuse_state(&req)?;
    objects_only(&req)?;
    let sampling: Sampling = serde_json::from_value(json!({
        "max_tokens": req.max_output_tokens, "temperature": req.temperature,
        "top_p": req.top_p, "seed": req.seed, "stream": req.stream,
    }))
    .map_err(|e| bad(format!("invalid request: {e}"), "input"))?;
    let mut params = sampling_params(&sampling, st.limits.max_model_len, st.limits.max_model_len)
        .map_err(|mut e| {
        if e.param.as_deref() == Some("max_tokens") {
            e.param = Some("max_output_tokens".into());
        }
        e
    })?;
    let msgs = input_messages(req.instructions.as_deref(), &req.input)?;
    let requested = match req.text.as_ref().and_then(|t| t.get("format")) {
        Some(f) => structured::response_format(f, "text.format")?,
        None => None,
    };
    let tooling = ToolFields {
        tools: req.tools.as_ref(),
        tool_choice: req.tool_choice.as_ref(),
        parallel: req.parallel_tool_calls,
        flat: true,
    };
    let Prepared {
        prompt,
        constraint,
        shape,
    } = prepare(&st, &msgs, tooling, requested, "input").await?;
    if req.max_output_tokens.is_none() {
        params.max_tokens = st.limits.max_model_len.saturating_sub(prompt.len()).max(1);
    }
    let prompt_tokens = prompt.len();
    let started = Instant::now();
    let rxs = submit_all(&st, vec![prompt], &params, &sampling, constraint).await?;
    let id = format!("resp_{:016x}", st.next_id.fetch_add(1, Ordering::Relaxed));
    let head = ResponseHead {
        id: id.clone(),
        created_at: now(),
        model: st.served_model_name.clone(),
        echo: ResponseEcho {
            instructions: req.instructions.clone(),
            max_output_tokens: req.max_output_tokens,
            temperature: params.temperature,
            top_p: params.top_p,
            parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
            tool_choice: req.tool_choice.clone().unwrap_or(json!("auto")),
            tools: req.tools.clone().unwrap_or(json!([])),
            text: req
                .text
                .clone()
                .unwrap_or(json!({"format": {"type": "text"}})),
            previous_response_id: None,
            store: false,
            truncation: "disabled".into(),
            metadata: req.metadata.clone().unwrap_or(json!({})),
        },
    };
    let parser = |id: &str| {
        shape
            .clone()
            .map(|s| ToolCallStream::new(s, call_id_prefix(id, 0)))
    };
    let mut builder = ResponseBuilder::new(id.clone());
    let mut calls = parser(&id);
    let mut feed = move |b: &mut ResponseBuilder, text: &str, last: bool| {
        let mut pieces = match calls.as_mut() {
            Some(p) => p.push(text),
            None => vec![Piece::Content(text.to_string())],
        };
        if last {
            pieces.extend(
                calls
                    .as_mut()
                    .map(ToolCallStream::finish)
                    .unwrap_or_default(),
            );
        }
        b.add(&pieces);
    };
    if req.stream {
        let created = json!(head.object(ResponseStatus::InProgress, &[], None));
        builder.emit("response.created", json!({"response": created.clone()}));
        builder.emit("response.in_progress", json!({"response": created}));
        let shared = std::sync::Arc::new(parking_lot::Mutex::new((builder, None::<&'static str>)));
        let tail_state = shared.clone();
        return Ok(sse_stream(
            rxs,
            1,
            prompt_tokens,
            started,
            move |_, t| {
                let mut g = shared.lock();
                let (b, finish) = &mut *g;
                feed(b, &t.text, t.finish.is_some());
                if t.finish.is_some() {
                    *finish = t.finish.map(engine::FinishReason::as_str);
                    b.close();
                }
                b.events.drain(..).map(|(k, v)| sse(&k, &v)).collect()
            },
            move |usage| {
                let mut g = tail_state.lock();
                let (b, finish) = &mut *g;
                b.close();
                let (status, kind) = match finish {
                    Some("length") => (ResponseStatus::Incomplete, "response.incomplete"),
                    Some(_) => (ResponseStatus::Completed, "response.completed"),
                    None => (ResponseStatus::Failed, "response.failed"),
                };
                let mut r = head.object(status, &b.items, Some(&usage));
                if finish.is_none() {
                    r.error = Some(ResponseError {
                        code: "server_error".into(),
                        message: "the engine stopped before the response finished".into(),
                    });
                }
                b.emit(kind, json!({"response": r}));
                b.events.drain(..).map(|(k, v)| sse(&k, &v)).collect()
            },
        ));
    }
    let err = || last_error(&st);
    let (choices, usage) = collect(rxs, 1, prompt_tokens, started, &err).await?;
    let c = &choices[0];
    feed(&mut builder, &c.text, true);
    builder.close();
    let status = if c.finish == Some("length") {
        ResponseStatus::Incomplete
    } else {
        ResponseStatus::Completed
    };
    Ok(AxumJson(head.object(status, &builder.items, Some(&usage))).into_response())
}
