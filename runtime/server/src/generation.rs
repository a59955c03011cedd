//! Running a request's prompts through the engine and gathering what comes back: submitting
//! (validated once, each prompt with its own copy of the structured-output constraint),
//! waiting for every sample, or streaming them as server-sent events. Shared by completions,
//! chat completions and the Responses API, which differ only in the shapes they answer with.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, StreamExt};
use serde_json::Value as Json_;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::api_types::Sampling;
use crate::error::ApiError;
use crate::logprobs::TokenLogprob;
use crate::AppState;
use engine::sampler::SamplingParams;
use engine::{Constraint, GenerateRequest, TokenOutput};

pub(crate) fn finish_str(t: &TokenOutput) -> Option<&'static str> {
    t.finish.map(engine::FinishReason::as_str)
}

/// Submits one engine request per prompt, each under its own copy of `constraint`. On any
/// refusal the ones already queued are dropped (and so aborted).
pub(crate) async fn submit_all(
    st: &AppState,
    prompts: Vec<Vec<u32>>,
    params: &SamplingParams,
    s: &Sampling,
    constraint: Option<Constraint>,
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
            .validate_constrained(p, params.clone(), constraint.clone())?
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

/// One sample's whole output.
#[derive(Default, Clone)]
pub(crate) struct Choice {
    pub text: String,
    pub tokens: usize,
    pub finish: Option<&'static str>,
    pub logprobs: Vec<TokenLogprob>,
}

/// Token counts of a response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Usage {
    pub prompt: usize,
    pub completion: usize,
    pub cached: usize,
}

impl Usage {
    /// The completions and chat shape.
    pub(crate) fn api(&self) -> crate::api_responses::Usage {
        crate::api_responses::Usage {
            prompt_tokens: self.prompt,
            completion_tokens: self.completion,
            total_tokens: self.prompt + self.completion,
            prompt_tokens_details: crate::api_responses::PromptTokensDetails {
                cached_tokens: self.cached,
            },
        }
    }
}

/// Waits for every sample of every prompt.
pub(crate) async fn collect(
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

/// The engine's error for a request whose stream ended early.
pub(crate) fn last_error(st: &AppState) -> String {
    st.engine
        .last_error()
        .unwrap_or_else(|| "the engine loop has stopped".into())
}

/// Streams every sample of every prompt as server-sent events: `events` turns each token of
/// choice `index` (`prompt × n + sample`) into zero or more events, `tail` the final usage
/// into the closing ones.
pub(crate) fn sse_stream(
    rxs: Vec<UnboundedReceiver<TokenOutput>>,
    n: usize,
    prompt_tokens: usize,
    started: Instant,
    mut events: impl FnMut(usize, &TokenOutput) -> Vec<Event> + Send + 'static,
    tail: impl FnOnce(Usage) -> Vec<Event> + Send + 'static,
) -> Response {
    let usage = Arc::new(Mutex::new(Usage {
        prompt: prompt_tokens,
        completion: 0,
        cached: 0,
    }));
    let u = usage.clone();
    let mut lat = Latency::new(started);
    let merged = stream::select_all(
        rxs.into_iter()
            .enumerate()
            .map(|(pi, rx)| UnboundedReceiverStream::new(rx).map(move |t| (pi, t))),
    )
    .flat_map(move |(pi, t)| {
        let index = pi * n + t.index;
        if let Ok(mut u) = u.lock() {
            u.completion += 1;
            u.cached = u.cached.max(t.cached_prompt_tokens);
        }
        lat.token(index, t.finish.is_some());
        stream::iter(events(index, &t).into_iter().map(Ok::<Event, Infallible>))
    });
    let closing = stream::once(async move {
        let u = usage.lock().map(|u| *u).unwrap_or_default();
        stream::iter(tail(u).into_iter().map(Ok::<Event, Infallible>))
    })
    .flatten();
    Sse::new(merged.chain(closing)).into_response()
}

/// A data-only event holding `v` (completions and chat completions).
pub(crate) fn data(v: &Json_) -> Event {
    Event::default().data(v.to_string())
}

/// The closing events of a completions or chat stream: the usage chunk if asked, `[DONE]`.
pub(crate) fn done_events(usage_chunk: Option<Json_>) -> Vec<Event> {
    let mut events: Vec<Event> = usage_chunk.iter().map(data).collect();
    events.push(Event::default().data("[DONE]"));
    events
}
