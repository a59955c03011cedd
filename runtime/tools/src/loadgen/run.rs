//! Sends the requests at their times (bounded by a concurrency limit and a per-request
//! timeout) and measures each stream as a client sees it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::dataset::BenchRequest;
use super::http::{request, Endpoint};
use super::sse::SseParser;
use crate::error::ToolError;
use models::tokenizer::Tokenizer;

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct Target {
    pub endpoint: Endpoint,
    /// `/v1/completions` or `/v1/chat/completions`.
    pub path: String,
    pub model: String,
    pub api_key: Option<String>,
    pub ignore_eos: bool,
    pub timeout: Duration,
    /// Counts output tokens from the text when the server sends no `usage`.
    pub tokenizer: Option<Arc<Tokenizer>>,
}

impl Target {
    pub fn is_chat(&self) -> bool {
        self.path.ends_with("/chat/completions")
    }

    fn body(&self, r: &BenchRequest) -> Value {
        let mut b = json!({
            "model": self.model, "max_tokens": r.output_len, "temperature": 0.0,
            "stream": true, "stream_options": {"include_usage": true},
        });
        if self.is_chat() {
            b["messages"] = json!([{"role": "user", "content": r.prompt}]);
        } else {
            b["prompt"] = json!(r.prompt);
        }
        if self.ignore_eos {
            b["ignore_eos"] = json!(true);
        }
        b
    }
}

/// One request as the client saw it.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// When it was sent, seconds from the start of the run.
    pub sent_s: f64,
    pub error: Option<String>,
    pub ttft_s: Option<f64>,
    /// Gaps between consecutive token events.
    pub itls_s: Vec<f64>,
    pub e2e_s: f64,
    /// From the server's `usage`, else the tokenizer on the text, else the token events.
    pub output_tokens: usize,
    /// Which of those counted `output_tokens`.
    pub counted_by: TokenCount,
    pub prompt_tokens: usize,
    pub text: String,
    /// The request's shared prefix, if it had one ([`BenchRequest::prefix_group`]).
    pub prefix_group: Option<u32>,
}

/// Where an outcome's output-token count came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenCount {
    /// The server's `usage.completion_tokens`.
    #[default]
    Usage,
    /// The client's tokenizer over the streamed text (`--tokenizer`).
    Tokenizer,
    /// One per streamed token event: exact for servers that stream one token per chunk.
    Events,
}

impl TokenCount {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenCount::Usage => "usage",
            TokenCount::Tokenizer => "tokenizer",
            TokenCount::Events => "stream events",
        }
    }
}

impl Outcome {
    pub fn ok(&self) -> bool {
        self.error.is_none()
    }
    /// (latency − TTFT) / (output tokens − 1).
    pub fn tpot_s(&self) -> Option<f64> {
        let t = self.ttft_s?;
        (self.output_tokens > 1).then(|| (self.e2e_s - t) / (self.output_tokens - 1) as f64)
    }
}

/// The token text a chunk carries (`None`: the chunk carries no token, like a usage chunk or
/// a chat stream's opening role-only delta), or the error it reports.
fn chunk_token(v: &Value, chat: bool) -> Result<Option<String>, ToolError> {
    if let Some(e) = v.get("error") {
        return Err(ToolError::Http(format!(
            "stream error: {}",
            e["message"].as_str().unwrap_or("(no message)")
        )));
    }
    let c = &v["choices"][0];
    if chat {
        let d = &c["delta"];
        let text = d["content"].as_str();
        // vLLM opens a chat stream with {"role": "assistant", "content": ""} before any token.
        if d.get("role").is_some() && text == Some("") && c["finish_reason"].is_null() {
            return Ok(None);
        }
        Ok(text.map(str::to_string))
    } else {
        // Every completion chunk is a token, even one whose text is held back (partial UTF-8).
        Ok(c["text"].as_str().map(str::to_string))
    }
}

/// Sends one request and measures it.
pub async fn send_one(target: &Target, r: &BenchRequest, run_start: Instant) -> Outcome {
    let started = Instant::now();
    let mut o = Outcome {
        sent_s: (started - run_start).as_secs_f64(),
        prompt_tokens: r.prompt_len,
        prefix_group: r.prefix_group,
        ..Outcome::default()
    };
    let body = target.body(r).to_string().into_bytes();
    let call = request(
        &target.endpoint,
        "POST",
        &target.path,
        Some(body),
        target.api_key.as_deref(),
    );
    let resp = match tokio::time::timeout(target.timeout, call).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            o.error = Some(e.to_string());
            return o;
        }
        Err(_) => {
            o.error = Some(format!("timed out after {:?}", target.timeout));
            return o;
        }
    };
    o.e2e_s = resp
        .frames
        .last()
        .map_or(0.0, |f| (f.0 - started).as_secs_f64());
    if resp.status != 200 {
        let text = resp.body_text();
        let msg = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| text.chars().take(200).collect());
        o.error = Some(format!("HTTP {}: {msg}", resp.status));
        return o;
    }
    let mut parser = SseParser::default();
    let mut last: Option<Instant> = None;
    let (mut events, mut usage_tokens, mut done) = (0usize, None, false);
    for (at, bytes) in &resp.frames {
        for (t, data) in parser.feed(bytes, *at) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&data) else {
                o.error = Some(format!(
                    "not JSON: {}",
                    data.chars().take(100).collect::<String>()
                ));
                return o;
            };
            if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                usage_tokens = u["completion_tokens"].as_u64().map(|x| x as usize);
                if let Some(p) = u["prompt_tokens"].as_u64() {
                    o.prompt_tokens = p as usize;
                }
            }
            match chunk_token(&v, target.is_chat()) {
                Err(e) => {
                    o.error = Some(e.to_string());
                    return o;
                }
                Ok(Some(text)) => {
                    let since = (t - started).as_secs_f64();
                    match last {
                        None => o.ttft_s = Some(since),
                        Some(prev) => o.itls_s.push((t - prev).as_secs_f64()),
                    }
                    last = Some(t);
                    events += 1;
                    o.text.push_str(&text);
                }
                Ok(None) => {}
            }
        }
    }
    if !done {
        o.error = Some("the stream ended without [DONE]".into());
    } else if o.ttft_s.is_none() {
        o.error = Some("no token in the stream".into());
    }
    (o.output_tokens, o.counted_by) = match (usage_tokens, &target.tokenizer) {
        (Some(n), _) => (n, TokenCount::Usage),
        (None, Some(tok)) => match tok.count_tokens(&o.text) {
            Ok(n) => (n, TokenCount::Tokenizer),
            Err(_) => (events, TokenCount::Events),
        },
        (None, None) => (events, TokenCount::Events),
    };
    o
}

/// Sends `reqs[i]` at `arrivals[i]` seconds (with at most `max_concurrency` in flight) and
/// returns every outcome, in request order, and the run's wall time. `progress` is called
/// once per finished request.
pub async fn run(
    target: Arc<Target>,
    reqs: Vec<BenchRequest>,
    arrivals: Vec<f64>,
    max_concurrency: Option<usize>,
    progress: Arc<dyn Fn() + Send + Sync>,
) -> (Vec<Outcome>, f64) {
    let start = Instant::now();
    let limit = Arc::new(tokio::sync::Semaphore::new(
        max_concurrency.unwrap_or(tokio::sync::Semaphore::MAX_PERMITS),
    ));
    let mut tasks = Vec::with_capacity(reqs.len());
    for (r, at) in reqs.into_iter().zip(arrivals) {
        let when = start + Duration::from_secs_f64(at.max(0.0));
        tokio::time::sleep_until(when.into()).await;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let (target, progress) = (target.clone(), progress.clone());
        tasks.push(tokio::spawn(async move {
            let o = send_one(&target, &r, start).await;
            drop(permit);
            progress();
            o
        }));
    }
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await.unwrap_or_else(|e| Outcome {
            error: Some(format!("task failed: {e}")),
            ..Outcome::default()
        }));
    }
    (out, start.elapsed().as_secs_f64())
}

/// The first model a server lists (for when `--model` is not given).
pub async fn first_model(ep: &Endpoint, api_key: Option<&str>) -> Result<String, ToolError> {
    let r = request(ep, "GET", "/v1/models", None, api_key).await?;
    let v: Value = serde_json::from_str(&r.body_text())
        .map_err(|e| ToolError::Http(format!("GET /v1/models: {e} (status {})", r.status)))?;
    v["data"][0]["id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| {
            ToolError::Http(format!(
                "GET /v1/models lists no model (status {})",
                r.status
            ))
        })
}
