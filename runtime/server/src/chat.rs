//! `POST /v1/chat/completions`: messages through the chat template (with the request's
//! tools), an optional structured output or tool-call constraint, and answers whose
//! assistant message carries the tool calls its text holds (`tool_calls`), streamed as
//! OpenAI streams them: a call's first `delta.tool_calls` entry has its id, type and name,
//! later ones pieces of its arguments; `finish_reason` is `tool_calls` when a call was made.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value as Json};

use crate::api_responses::{
    AssistantMessage, AssistantRole, ChatChoice, ChatCompletionResponse, ChatLogprobs, ErrorBody,
};
use crate::api_types::ChatRequest;
use crate::error::ApiError;
use crate::generation::{finish_str, Choice};
use crate::handlers::{check_model, parse, respond, Body, Flavor, S};
use crate::structured::{self, Spec};
use crate::tool_calls::{deltas, CallShape, ParsedMessage, ToolCallStream};
use crate::tools::{self, parse_choice, parse_tools};
use crate::validate::{chat_messages, sampling_params};
use crate::AppState;
use engine::{Constraint, TokenOutput};
use models::tokenizer::ChatMessage;

/// The prefix of the ids of choice `index`'s calls in response `response_id` (OpenAI's
/// look: `call_` and hex digits; the call's number ends it).
pub(crate) fn call_id_prefix(response_id: &str, index: usize) -> String {
    let h = response_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("call_{h:016x}{index:02x}")
}

/// The finish reason a choice reports: a normal stop that made calls is `tool_calls`.
pub(crate) fn finish_with_calls(
    finish: Option<&'static str>,
    called: bool,
) -> Option<&'static str> {
    match finish {
        Some("stop") if called => Some("tool_calls"),
        f => f,
    }
}

/// One non-streamed chat choice.
pub(crate) fn chat_choice(
    index: usize,
    c: &Choice,
    logprobs: Option<ChatLogprobs>,
    calls: Option<&CallShape>,
    response_id: &str,
) -> ChatChoice {
    let m = match calls {
        Some(shape) => {
            let mut parser = ToolCallStream::new(shape.clone(), call_id_prefix(response_id, index));
            ParsedMessage::of(&mut parser, &c.text)
        }
        None => ParsedMessage {
            content: c.text.clone(),
            calls: vec![],
        },
    };
    let called = !m.calls.is_empty();
    let content = if m.content.is_empty() && called {
        None
    } else {
        Some(m.content)
    };
    ChatChoice {
        index,
        logprobs,
        message: AssistantMessage {
            role: AssistantRole::Is,
            content,
            tool_calls: m.calls,
        },
        finish_reason: finish_with_calls(c.finish, called),
    }
}

/// The streamed choices of a chat response: each choice's tool-call parser and whether its
/// role went out yet.
pub(crate) struct ChatChunks {
    calls: Option<CallShape>,
    response_id: String,
    parsers: HashMap<usize, ToolCallStream>,
    started: HashSet<usize>,
}

impl ChatChunks {
    pub(crate) fn new(calls: Option<CallShape>, response_id: &str) -> Self {
        ChatChunks {
            calls,
            response_id: response_id.to_string(),
            parsers: HashMap::new(),
            started: HashSet::new(),
        }
    }

    /// The chunk choices one token of choice `index` makes (none while a parser holds text
    /// back); the first carries the role and the logprobs, the last the finish reason.
    pub(crate) fn choices(&mut self, index: usize, t: &TokenOutput, logprobs: Json) -> Vec<Json> {
        let (mut ds, called) = match &self.calls {
            None => (vec![json!({"content": t.text})], false),
            Some(shape) => {
                let prefix = call_id_prefix(&self.response_id, index);
                let p = self
                    .parsers
                    .entry(index)
                    .or_insert_with(|| ToolCallStream::new(shape.clone(), prefix));
                let mut pieces = p.push(&t.text);
                if t.finish.is_some() {
                    pieces.extend(p.finish());
                }
                (deltas(&pieces), p.called())
            }
        };
        if ds.is_empty() {
            if t.finish.is_none() {
                return vec![];
            }
            ds.push(json!({}));
        }
        if self.started.insert(index) {
            ds[0]["role"] = json!("assistant");
        }
        let last = ds.len() - 1;
        ds.into_iter()
            .enumerate()
            .map(|(i, d)| {
                let lp = if i == 0 { logprobs.clone() } else { Json::Null };
                let finish = if i == last {
                    finish_with_calls(finish_str(t), called)
                } else {
                    None
                };
                json!({"index": index, "delta": d, "logprobs": lp, "finish_reason": finish})
            })
            .collect()
    }
}

#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "openai",
    summary = "Answers a conversation (server-sent events with `stream`).",
    request_body = ChatRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The answer, or with `stream` its chunks as server-sent events (`data: {...}` lines, then `data: [DONE]`).", content(
            (ChatCompletionResponse = "application/json"),
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
pub async fn chat_completions(State(st): S, body: Body) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body)?;
    check_model(&req.model, &st)?;
    let mut params = sampling_params(
        &req.sampling,
        st.limits.max_model_len,
        st.limits.max_model_len,
    )?;
    let msgs = chat_messages(&req.messages)?;
    let requested = structured::spec_of(&req.structured)?;
    let tooling = ToolFields {
        tools: req.tools.as_ref(),
        tool_choice: req.tool_choice.as_ref(),
        parallel: req.parallel_tool_calls,
        flat: false,
    };
    let Prepared {
        prompt,
        constraint,
        shape,
    } = prepare(&st, &msgs, tooling, requested, "messages").await?;
    if req.sampling.max_tokens.is_none() && req.sampling.max_completion_tokens.is_none() {
        // No limit given: whatever room the context leaves.
        params.max_tokens = st.limits.max_model_len.saturating_sub(prompt.len()).max(1);
    }
    respond(
        &st,
        Flavor::Chat,
        vec![prompt],
        params,
        &req.sampling,
        constraint,
        shape,
    )
    .await
}

/// A request's tool fields, in chat's or (`flat`) the Responses API's shape.
pub(crate) struct ToolFields<'a> {
    pub tools: Option<&'a Json>,
    pub tool_choice: Option<&'a Json>,
    pub parallel: Option<bool>,
    pub flat: bool,
}

/// A conversation made ready to submit.
pub(crate) struct Prepared {
    pub prompt: Vec<u32>,
    pub constraint: Option<Constraint>,
    pub shape: Option<CallShape>,
}

/// The prompt (messages and tools through the chat template), the output constraint (the
/// requested structured output, or the one a tool choice needs) and how the output carries
/// tool calls; shared by chat and the Responses API. `param` names the input field.
pub(crate) async fn prepare(
    st: &AppState,
    msgs: &[ChatMessage],
    t: ToolFields<'_>,
    requested: Option<Spec>,
    param: &str,
) -> Result<Prepared, ApiError> {
    let tool_defs = match t.tools {
        Some(v) => parse_tools(v, t.flat)?,
        None => vec![],
    };
    let choice = t.tool_choice.map(|c| parse_choice(c, t.flat)).transpose()?;
    let plan = tools::plan(
        &tool_defs,
        choice,
        t.parallel.unwrap_or(true),
        st.tool_format,
    )?;
    if let (Some(r), Some(_)) = (&requested, &plan.shape) {
        return Err(ApiError::bad_request(
            format!(
                "{} cannot be combined with tool calls; use tool_choice none, or drop {}",
                r.param, r.param
            ),
            Some(r.param),
        ));
    }
    let spec = requested.or(plan.constraint.map(|output| Spec {
        output,
        param: "tool_choice",
    }));
    let constraint = structured::compile(&st.grammars, spec).await?;
    let text = st
        .tokenizer
        .apply_chat_template_with_tools(msgs, &plan.prompt_tools, true)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some(param)))?;
    let prompt = st
        .tokenizer
        .encode(&text)
        .map_err(|e| ApiError::bad_request(e.to_string(), Some(param)))?;
    Ok(Prepared {
        prompt,
        constraint,
        shape: plan.shape,
    })
}
