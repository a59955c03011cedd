//! The endpoints.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Value as Json_};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api_types::{
    ChatRequest, CompletionRequest, DetokenizeRequest, Prompt, Sampling, TokenizeRequest,
};
use crate::error::ApiError;
use crate::logprobs::{self, TokenLogprob};
use crate::validate::{chat_messages, sampling_params};
use crate::AppState;
use engine::sampler::SamplingParams;
use engine::{GenerateRequest, TokenOutput};
use models::tokenizer::Tokenizer;

type S = State<Arc<AppState>>;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The body, or why it could not be read (over the size limit: 413).
type Body = Result<Bytes, BytesRejection>;

fn parse<T: DeserializeOwned>(body: Body) -> Result<T, ApiError> {
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

/// Constant-time comparison of the bearer token with the configured key.
fn authorize(headers: &HeaderMap, st: &AppState) -> Result<(), ApiError> {
    let Some(key) = &st.api_key else {
        return Ok(());
    };
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let (a, b) = (given.as_bytes(), key.as_bytes());
    let mut diff = (a.len() ^ b.len()) as u8;
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    if diff == 0 {
        Ok(())
    } else {
        Err(ApiError::unauthorized())
    }
}

fn check_model(model: &str, st: &AppState) -> Result<(), ApiError> {
    if model == st.served_model_name {
        Ok(())
    } else {
        Err(ApiError::not_found_model(model))
    }
}

fn finish_str(t: &TokenOutput) -> Option<&'static str> {
    t.finish.map(engine::FinishReason::as_str)
}

/// Submits one engine request per prompt. On any refusal the ones already queued are
/// dropped (and so aborted).
async fn submit_all(
    st: &AppState,
    prompts: Vec<Vec<u32>>,
    params: &SamplingParams,
    s: &Sampling,
) -> Result<Vec<UnboundedReceiver<TokenOutput>>, ApiError> {
    let salt = s.cache_salt.as_ref().map(|x| {
        x.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        })
    });
    let mut out = Vec::with_capacity(prompts.len());
    for p in prompts {
        let n_prompt = p.len();
        let request = st
            .limits
            .validate(p, params.clone())?
            .with_priority(s.priority.unwrap_or(0))
            .with_cache_salt(salt);
        let id = st.next_id.fetch_add(1, Ordering::Relaxed);
        crate::metrics::prompt_tokens(n_prompt);
        let rx = st
            .engine
            .submit(GenerateRequest { id, request })
            .await
            .map_err(ApiError::from)?;
        out.push(rx);
    }
    Ok(out)
}

/// Client-side latencies of one request's streams, for the histograms.
struct Latency {
    started: Instant,
    last: std::collections::HashMap<usize, Instant>,
}

impl Latency {
    fn new(started: Instant) -> Self {
        Latency {
            started,
            last: Default::default(),
        }
    }
    fn token(&mut self, index: usize, finished: bool) {
        let now = Instant::now();
        match self.last.insert(index, now) {
            None if index == 0 => {
                crate::metrics::time_to_first_token((now - self.started).as_secs_f64())
            }
            None => {}
            Some(prev) => crate::metrics::inter_token_latency((now - prev).as_secs_f64()),
        }
        if finished && index == 0 {
            crate::metrics::e2e_request_latency((now - self.started).as_secs_f64());
        }
    }
}

#[derive(Default, Clone)]
struct Choice {
    text: String,
    tokens: usize,
    finish: Option<&'static str>,
    logprobs: Vec<TokenLogprob>,
}

struct Usage {
    prompt: usize,
    completion: usize,
    cached: usize,
}

fn usage_json(u: &Usage) -> Json_ {
    json!({
        "prompt_tokens": u.prompt,
        "completion_tokens": u.completion,
        "total_tokens": u.prompt + u.completion,
        "prompt_tokens_details": {"cached_tokens": u.cached},
    })
}

/// Waits for every sample of every prompt.
async fn collect(
    rxs: Vec<UnboundedReceiver<TokenOutput>>,
    n: usize,
    prompt_tokens: usize,
    started: Instant,
    engine_error: &(dyn Fn() -> String + Sync),
) -> Result<(Vec<Choice>, Usage), ApiError> {
    let mut choices = vec![Choice::default(); rxs.len() * n];
    let mut cached = 0;
    let mut lat = Latency::new(started);
    for (pi, mut rx) in rxs.into_iter().enumerate() {
        while let Some(t) = rx.recv().await {
            lat.token(pi * n + t.index, t.finish.is_some());
            let c = &mut choices[pi * n + t.index];
            c.text.push_str(&t.text);
            c.tokens += 1;
            c.logprobs.push(TokenLogprob::of(&t));
            c.finish = finish_str(&t).or(c.finish);
            if t.index == 0 {
                cached = cached.max(t.cached_prompt_tokens);
            }
        }
    }
    if choices.iter().any(|c| c.finish.is_none()) {
        return Err(ApiError::internal(format!(
            "the engine stopped before the request finished: {}",
            engine_error()
        )));
    }
    let completion = choices.iter().map(|c| c.tokens).sum();
    Ok((
        choices,
        Usage {
            prompt: prompt_tokens,
            completion,
            cached,
        },
    ))
}

#[allow(clippy::too_many_arguments)]
fn sse_stream(
    rxs: Vec<UnboundedReceiver<TokenOutput>>,
    n: usize,
    prompt_tokens: usize,
    include_usage: bool,
    started: Instant,
    chunk: impl Fn(usize, &TokenOutput, bool) -> Json_ + Send + Sync + 'static,
    usage_chunk: impl Fn(Json_) -> Json_ + Send + 'static,
) -> Response {
    let usage = Arc::new(Mutex::new(Usage {
        prompt: prompt_tokens,
        completion: 0,
        cached: 0,
    }));
    let u = usage.clone();
    let seen = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let lat = Mutex::new(Latency::new(started));
    let merged = stream::select_all(
        rxs.into_iter()
            .enumerate()
            .map(|(pi, rx)| UnboundedReceiverStream::new(rx).map(move |t| (pi, t))),
    )
    .map(move |(pi, t)| {
        let index = pi * n + t.index;
        if let Ok(mut u) = u.lock() {
            u.completion += 1;
            u.cached = u.cached.max(t.cached_prompt_tokens);
        }
        let first = seen.lock().map(|mut s| s.insert(index)).unwrap_or(false);
        if let Ok(mut l) = lat.lock() {
            l.token(index, t.finish.is_some());
        }
        Ok::<Event, Infallible>(Event::default().data(chunk(index, &t, first).to_string()))
    });
    let tail = stream::once(async move {
        let mut events = vec![];
        if include_usage {
            if let Ok(u) = usage.lock() {
                events.push(Ok(
                    Event::default().data(usage_chunk(usage_json(&u)).to_string())
                ));
            }
        }
        events.push(Ok(Event::default().data("[DONE]")));
        stream::iter(events)
    })
    .flatten();
    Sse::new(merged.chain(tail)).into_response()
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
        Prompt::Texts(v) => v.iter().map(|s| enc(s)).collect::<Result<_, _>>()?,
        Prompt::Tokens(t) => vec![t],
        Prompt::TokenLists(v) if v.is_empty() => {
            return Err(ApiError::bad_request(
                "the prompt list is empty",
                Some("prompt"),
            ))
        }
        Prompt::TokenLists(v) => v,
    })
}

/// The two OpenAI response families differ only in object names and choice shapes.
#[derive(Clone, Copy)]
enum Flavor {
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
    fn object(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Flavor::Completion, _) => "text_completion",
            (Flavor::Chat, false) => "chat.completion",
            (Flavor::Chat, true) => "chat.completion.chunk",
        }
    }
    /// The log-probabilities of `entries` in this flavor's shape (completion text offsets
    /// start at `offset`).
    fn logprobs(self, tok: &Tokenizer, entries: &[TokenLogprob], offset: usize) -> Json_ {
        match self {
            Flavor::Completion => logprobs::completion_json(tok, entries, offset),
            Flavor::Chat => logprobs::chat_json(tok, entries),
        }
    }
    fn choice(self, index: usize, c: &Choice, logprobs: Json_) -> Json_ {
        match self {
            Flavor::Completion => json!({"index": index, "text": c.text, "logprobs": logprobs,
                                         "finish_reason": c.finish}),
            Flavor::Chat => json!({"index": index, "logprobs": logprobs, "finish_reason": c.finish,
                                   "message": {"role": "assistant", "content": c.text}}),
        }
    }
    /// One streamed token; a chat stream names the role in each choice's first delta.
    fn chunk_choice(self, index: usize, t: &TokenOutput, first: bool, logprobs: Json_) -> Json_ {
        match self {
            Flavor::Completion => json!({"index": index, "text": t.text, "logprobs": logprobs,
                                         "finish_reason": finish_str(t)}),
            Flavor::Chat => {
                let delta = if first {
                    json!({"role": "assistant", "content": t.text})
                } else {
                    json!({"content": t.text})
                };
                json!({"index": index, "delta": delta, "logprobs": logprobs,
                       "finish_reason": finish_str(t)})
            }
        }
    }
}

/// Submits the prompts and answers, streaming or not.
async fn respond(
    st: &AppState,
    flavor: Flavor,
    prompts: Vec<Vec<u32>>,
    params: SamplingParams,
    s: &Sampling,
) -> Result<Response, ApiError> {
    let prompt_tokens: usize = prompts.iter().map(Vec::len).sum();
    let n = params.n;
    let started = Instant::now();
    let rxs = submit_all(st, prompts, &params, s).await?;
    let id = format!(
        "{}-{}",
        flavor.id_prefix(),
        st.next_id.fetch_add(1, Ordering::Relaxed)
    );
    let (created, model) = (now(), st.served_model_name.clone());
    let want_logprobs = params.logprobs.is_some();
    if s.stream {
        let include = s.stream_options.as_ref().is_some_and(|o| o.include_usage);
        let object = flavor.object(true);
        let (id2, model2) = (id.clone(), model.clone());
        let tok = st.tokenizer.clone();
        // Completion text offsets per choice, for streamed logprobs.
        let offsets = parking_lot::Mutex::new(std::collections::HashMap::<usize, usize>::new());
        return Ok(sse_stream(
            rxs,
            n,
            prompt_tokens,
            include,
            started,
            move |index, t, first| {
                let lp = if want_logprobs {
                    let mut o = offsets.lock();
                    let at = o.entry(index).or_insert(0);
                    let v = flavor.logprobs(&tok, &[TokenLogprob::of(t)], *at);
                    *at += t.text.len();
                    v
                } else {
                    Json_::Null
                };
                json!({"id": id, "object": object, "created": created, "model": model,
                       "choices": [flavor.chunk_choice(index, t, first, lp)]})
            },
            move |usage| {
                json!({"id": id2, "object": object, "created": created, "model": model2,
                       "choices": [], "usage": usage})
            },
        ));
    }
    let last_error = || {
        st.engine
            .last_error()
            .unwrap_or_else(|| "the engine loop has stopped".into())
    };
    let (choices, usage) = collect(rxs, n, prompt_tokens, started, &last_error).await?;
    let choices: Vec<Json_> = choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let lp = if want_logprobs {
                flavor.logprobs(&st.tokenizer, &c.logprobs, 0)
            } else {
                Json_::Null
            };
            flavor.choice(i, c, lp)
        })
        .collect();
    Ok(Json(
        json!({"id": id, "object": flavor.object(false), "created": created,
                   "model": model, "choices": choices, "usage": usage_json(&usage)}),
    )
    .into_response())
}

pub async fn completions(
    State(st): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &st)?;
    let req: CompletionRequest = parse(body)?;
    check_model(&req.model, &st)?;
    let params = sampling_params(&req.sampling, 16, st.limits.max_model_len)?;
    let prompts = prompts_of(&st, req.prompt)?;
    respond(&st, Flavor::Completion, prompts, params, &req.sampling).await
}

pub async fn chat_completions(
    State(st): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &st)?;
    let req: ChatRequest = parse(body)?;
    check_model(&req.model, &st)?;
    let mut params = sampling_params(
        &req.sampling,
        st.limits.max_model_len,
        st.limits.max_model_len,
    )?;
    let msgs = chat_messages(&req.messages)?;
    let text = st
        .tokenizer
        .apply_chat_template(&msgs, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    let prompt = st
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some("messages")))?;
    if req.sampling.max_tokens.is_none() && req.sampling.max_completion_tokens.is_none() {
        // No limit given: whatever room the context leaves.
        params.max_tokens = st.limits.max_model_len.saturating_sub(prompt.len()).max(1);
    }
    respond(&st, Flavor::Chat, vec![prompt], params, &req.sampling).await
}

pub async fn models(State(st): S, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize(&headers, &st)?;
    Ok(Json(json!({"object": "list", "data": [{
        "id": st.served_model_name, "object": "model", "created": now(), "owned_by": "pagedrt",
        "max_model_len": st.limits.max_model_len,
    }]}))
    .into_response())
}

pub async fn tokenize(State(st): S, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    authorize(&headers, &st)?;
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
    Ok(Json(
        json!({"count": tokens.len(), "max_model_len": st.limits.max_model_len, "tokens": tokens}),
    )
    .into_response())
}

pub async fn detokenize(
    State(st): S,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    authorize(&headers, &st)?;
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
    Ok(Json(json!({"prompt": prompt})).into_response())
}

/// Prometheus text format (open, like /health).
pub async fn metrics() -> Response {
    (
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::handle().render(),
    )
        .into_response()
}

pub async fn health(State(st): S) -> Response {
    if st.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        ApiError::unavailable("the engine loop has stopped").into_response()
    }
}
