//! The endpoints other than chat (`chat`) and the Responses API (`responses`), and what
//! every endpoint shares: parsing the body, the API key, the model name, answering.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde_json::{json, Value as Json_};

use crate::api_responses::{
    ChatCompletionObject, ChatCompletionResponse, CompletionChoice, CompletionResponse,
    DetokenizeResponse, ErrorBody, ListObject, ModelCard, ModelList, ModelObject,
    TextCompletionObject, TokenizeResponse,
};
use crate::api_types::{CompletionRequest, DetokenizeRequest, Prompt, Sampling, TokenizeRequest};
use crate::caps;
use crate::chat::{chat_choice, ChatChunks};
use crate::error::ApiError;
use crate::generation::{
    collect, data, done_events, finish_str, last_error, sse_stream, submit_all,
};
use crate::logprobs::{self, TokenLogprob};
use crate::structured;
use crate::tool_calls::CallShape;
use crate::validate::{chat_messages, sampling_params};
use crate::AppState;
use engine::sampler::SamplingParams;
use engine::Constraint;
use models::tokenizer::Tokenizer;

pub(crate) type S = State<Arc<AppState>>;

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body, or why it could not be read (over the size limit: 413).
pub(crate) type Body = Result<Bytes, BytesRejection>;

pub(crate) fn parse<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(crate::MAX_BODY_BYTES)
        } else {
            ApiError::bad_request(format!("cannot read the request body: {e}"), None)
        }
    })?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid request body: {e}"), None))
}

pub(crate) fn check_model(model: &str, st: &AppState) -> Result<(), ApiError> {
    if model == st.served_model_name {
        Ok(())
    } else {
        Err(ApiError::not_found_model(model))
    }
}

fn prompts_of(st: &AppState, p: Prompt) -> Result<Vec<Vec<u32>>, ApiError> {
    let enc = |s: &str| {
        st.tokenizer
            .encode(s)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))
    };
    Ok(match p {
        Prompt::Text(s) => vec![enc(&s)?],
        Prompt::Texts(v) if v.is_empty() => {
            return Err(ApiError::bad_request(
                "the prompt list is empty",
                Some("prompt"),
            ))
        }
        Prompt::Texts(v) => {
            caps::count("prompt", v.len(), caps::MAX_PROMPTS, "prompts")?;
            v.iter().map(|s| enc(s)).collect::<Result<_, _>>()?
        }
        Prompt::Tokens(t) => vec![t],
        Prompt::TokenLists(v) if v.is_empty() => {
            return Err(ApiError::bad_request(
                "the prompt list is empty",
                Some("prompt"),
            ))
        }
        Prompt::TokenLists(v) => {
            caps::count("prompt", v.len(), caps::MAX_PROMPTS, "prompts")?;
            v
        }
    })
}

/// The two OpenAI response families differ only in object names and choice shapes.
#[derive(Clone, Copy)]
pub(crate) enum Flavor {
    Completion,
    Chat,
}

impl Flavor {
    fn id_prefix(self) -> &'static str {
        match self {
            Flavor::Completion => "cmpl",
            Flavor::Chat => "chatcmpl",
        }
    }
    /// The `object` of a streamed chunk.
    fn chunk_object(self) -> &'static str {
        match self {
            Flavor::Completion => "text_completion",
            Flavor::Chat => "chat.completion.chunk",
        }
    }
    /// The log-probabilities of `entries` in this flavor's shape (completion text offsets
    /// start at `offset`).
    fn logprobs(self, tok: &Tokenizer, entries: &[TokenLogprob], offset: usize) -> Json_ {
        match self {
            Flavor::Completion => json!(logprobs::completion_json(tok, entries, offset)),
            Flavor::Chat => json!(logprobs::chat_json(tok, entries)),
        }
    }
}

/// Submits the prompts (each under its own copy of `constraint`) and answers, streaming or
/// not; a chat answer carries the tool calls its text holds in `calls`' shape.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn respond(
    st: &AppState,
    flavor: Flavor,
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    s: &Sampling,
    constraint: Option<Constraint>,
    calls: Option<CallShape>,
) -> Result<Response, ApiError> {
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let n = params.n;
    let started = Instant::now();
    let rxs = submit_all(st, prompts, &params, s, constraint).await?;
    let id = format!(
        "{}-{}",
        flavor.id_prefix(),
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let (created, model) = (now(), st.served_model_name.clone());
    let want_logprobs = params.logprobs.is_some();
    if s.stream {
        let include = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let object = flavor.chunk_object();
        let (id2, model2) = (id.clone(), model.clone());
        let tok = st.tokenizer.clone();
        // Completion text offsets per choice, for streamed logprobs.
        let mut offsets = std::collections::HashMap::<usize, usize>::new();
        let mut chat = ChatChunks::new(calls, &id);
        return Ok(sse_stream(
            rxs,
            n,
            prompt_tokens,
            started,
            move |index, t| {
                let lp = if want_logprobs {
                    let at = offsets.entry(index).or_insert(0);
                    let v = flavor.logprobs(&tok, &[TokenLogprob::of(t)], *at);
                    *at += t.text.len();
                    v
                } else {
                    Json_::Null
                };
                let choices = match flavor {
                    Flavor::Completion => vec![json!({"index": index, "text": t.text,
                        "logprobs": lp, "finish_reason": finish_str(t)})],
                    Flavor::Chat => chat.choices(index, t, lp),
                };
                choices
                    .into_iter()
                    .map(|c| {
                        data(&json!({"id": id, "object": object, "created": created,
                                     "model": model, "choices": [c]}))
                    })
                    .collect()
            },
            move |usage| {
                done_events(include.then(|| {
                    json!({"id": id2, "object": object, "created": created, "model": model2,
                           "choices": [], "usage": usage.api()})
                }))
            },
        ));
    }
    let err = || last_error(st);
    let (choices, usage) = collect(rxs, n, prompt_tokens, started, &err).await?;
    let usage = usage.api();
    let tok = &st.tokenizer;
    Ok(match flavor {
        Flavor::Completion => Json(CompletionResponse {
            id,
            object: TextCompletionObject::Is,
            created,
            model,
            choices: choices
                .iter()
                .enumerate()
                .map(|(index, c)| CompletionChoice {
                    index,
                    text: c.text.clone(),
                    logprobs: want_logprobs.then(|| logprobs::completion_json(tok, &c.logprobs, 0)),
                    finish_reason: c.finish,
                })
                .collect(),
            usage,
        })
        .into_response(),
        Flavor::Chat => {
            let choices = choices
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let lp = want_logprobs.then(|| logprobs::chat_json(tok, &c.logprobs));
                    chat_choice(i, c, lp, calls.as_ref(), &id)
                })
                .collect();
            Json(ChatCompletionResponse {
                id,
                object: ChatCompletionObject::Is,
                created,
                model,
                choices,
                usage,
            })
            .into_response()
        }
    })
}

#[utoipa::path(
    post,
    path = "/v1/completions",
    tag = "openai",
    summary = "Completes prompts (server-sent events with `stream`).",
    request_body = CompletionRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The completion, or with `stream` its chunks as server-sent events (`data: {...}` lines, then `data: [DONE]`).", content(
            (CompletionResponse = "application/json"),
            (crate::openapi::DataEvent = "text/event-stream"),
        )),
        (status = 400, description = "A field is invalid or out of range (`param` names it).", body = ErrorBody),
        (status = 401, description = "The API key is missing or wrong.", body = ErrorBody),
        (status = 404, description = "The model is not the one this server serves.", body = ErrorBody),
        (status = 429, description = "The queue is full (`Retry-After` says when to retry).", body = ErrorBody),
        (status = 500, description = "The engine failed while running the request.", body = ErrorBody),
        (status = 503, description = "The engine has stopped.", body = ErrorBody),
    ),
)]
pub async fn completions(State(st): S, body: Body) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body)?;
    check_model(&req.model, &st)?;
    let params = sampling_params(&req.sampling, 16, st.limits.max_model_len)?;
    let prompts = prompts_of(&st, req.prompt)?;
    let constraint =
        structured::compile(&st.grammars, structured::spec_of(&req.structured)?).await?;
    respond(
        &st,
        Flavor::Completion,
        prompts,
        params,
        &req.sampling,
        constraint,
        None,
    )
    .await
}

#[utoipa::path(
    get,
    path = "/v1/models",
    tag = "openai",
    summary = "The served model.",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The one model this server serves.", body = ModelList),
        (status = 401, description = "The API key is missing or wrong.", body = ErrorBody),
    ),
)]
pub async fn models(State(st): S) -> Result<Response, ApiError> {
    Ok(Json(ModelList {
        object: ListObject::Is,
        data: vec![ModelCard {
            id: st.served_model_name.clone(),
            object: ModelObject::Is,
            created: now(),
            owned_by: "pagedrt".into(),
            max_model_len: st.limits.max_model_len,
        }],
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/tokenize",
    tag = "vllm",
    summary = "Tokenizes a prompt, or messages through the chat template.",
    request_body = TokenizeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token ids.", body = TokenizeResponse),
        (status = 400, description = "The input cannot be tokenized (`param` names the field).", body = ErrorBody),
        (status = 401, description = "The API key is missing or wrong.", body = ErrorBody),
    ),
)]
pub async fn tokenize(State(st): S, body: Body) -> Result<Response, ApiError> {
    let req: TokenizeRequest = parse(body)?;
    let text = match (req.prompt, req.messages) {
        (Some(p), None) => p,
        (None, Some(m)) => st
            .tokenizer
            .apply_chat_template(&chat_messages(&m)?, req.add_generation_prompt)
            .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?,
        _ => {
            return Err(ApiError::bad_request(
                "give exactly one of prompt or messages",
                None,
            ))
        }
    };
    let tokens = st
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("prompt")))?;
    Ok(Json(TokenizeResponse {
        count: tokens.len(),
        max_model_len: st.limits.max_model_len,
        tokens,
    })
    .into_response())
}

#[utoipa::path(
    post,
    path = "/detokenize",
    tag = "vllm",
    summary = "Turns token ids back into text.",
    request_body = DetokenizeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The text.", body = DetokenizeResponse),
        (status = 400, description = "A token id is outside the vocabulary (`param` names the field).", body = ErrorBody),
        (status = 401, description = "The API key is missing or wrong.", body = ErrorBody),
    ),
)]
pub async fn detokenize(State(st): S, body: Body) -> Result<Response, ApiError> {
    let req: DetokenizeRequest = parse(body)?;
    if let Some(&bad) = req
        .tokens
        .iter()
        .find(|&&t| t as usize >= st.limits.vocab_size)
    {
        return Err(ApiError::bad_request(
            format!("token id {bad} is outside the vocabulary"),
            Some("tokens"),
        ));
    }
    let prompt = st
        .tokenizer
        .decode(&req.tokens, false)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("tokens")))?;
    Ok(Json(DetokenizeResponse { prompt }).into_response())
}

/// Prometheus text format (open, like /health).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "meta",
    summary = "Prometheus metrics (no API key).",
    responses(
        (status = 200, description = "The Prometheus text format.", content_type = "text/plain", body = String),

    ),
)]
pub async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "meta",
    summary = "Whether the engine runs (no API key).",
    responses(
        (status = 200, description = "The engine runs (empty body)."),
        (status = 503, description = "The engine loop has stopped.", body = ErrorBody),
    ),
)]
pub async fn health(State(st): S) -> Response {
    if st.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        ApiError::unavailable("the engine loop has stopped").into_response()
    }
}

/// Any path no route has: a 404 with an OpenAI-style body (axum's own is empty).
pub async fn no_route(uri: axum::http::Uri) -> ApiError {
    ApiError::no_route(uri.path())
}

/// A route's path with a method it does not take: 405, OpenAI-style.
pub async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::method_not_allowed(method.as_str(), uri.path())
}
