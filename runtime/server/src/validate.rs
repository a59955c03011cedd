//! Turning request fields into engine parameters, refusing what is out of range with a 400
//! that names the field.

use crate::api_types::{ChatMessageIn, Logprobs, Sampling, Stop};
use crate::caps::{self, MAX_LOGPROBS, MAX_N, MAX_STOPS, MAX_STOP_BYTES};
use crate::error::ApiError;
use engine::sampler::SamplingParams;
use models::tokenizer::ChatMessage;

pub fn sampling_params(
    s: &Sampling,
    default_max: usize,
    max_len: usize,
) -> Result<SamplingParams, ApiError> {
    let bad = |m: String, p: &str| Err(ApiError::bad_request(m, Some(p)));
    // Both are checked, though max_completion_tokens wins: a bad max_tokens is an error
    // even beside a good max_completion_tokens.
    for (name, v) in [
        ("max_tokens", s.max_tokens),
        ("max_completion_tokens", s.max_completion_tokens),
    ] {
        match v {
            Some(m) if m < 1 => return bad(format!("{name} must be at least 1, got {m}"), name),
            Some(m) if m as u64 > max_len as u64 => {
                return bad(
                    format!("{name} {m} exceeds the maximum model length {max_len}"),
                    name,
                )
            }
            _ => {}
        }
    }
    let max_tokens = s
        .max_completion_tokens
        .or(s.max_tokens)
        .unwrap_or(default_max as i64);
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return bad(
            format!("temperature must be in [0, 2], got {temperature}"),
            "temperature",
        );
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return bad(format!("top_p must be in (0, 1], got {top_p}"), "top_p");
    }
    let n = s.n.unwrap_or(1);
    if !(1..=MAX_N).contains(&n) {
        return bad(format!("n must be in 1..={MAX_N}, got {n}"), "n");
    }
    // pagedrt returns every sample it draws: best_of may only repeat n.
    if let Some(b) = s.best_of {
        if !(1..=MAX_N).contains(&b) {
            return bad(
                format!("best_of must be in 1..={MAX_N}, got {b}"),
                "best_of",
            );
        }
        if b != n {
            return bad(
                format!("best_of {b} differs from n {n}: ranking extra samples is not supported"),
                "best_of",
            );
        }
    }
    let top_k = s.top_k.unwrap_or(0);
    if top_k < -1 {
        return bad(
            format!("top_k must be -1, 0 or positive, got {top_k}"),
            "top_k",
        );
    }
    let min_p = s.min_p.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&min_p) {
        return bad(format!("min_p must be in [0, 1], got {min_p}"), "min_p");
    }
    let rep = s.repetition_penalty.unwrap_or(1.0);
    if !(rep > 0.0 && rep <= 10.0) {
        return bad(
            format!("repetition_penalty must be in (0, 10], got {rep}"),
            "repetition_penalty",
        );
    }
    for (name, v) in [
        ("presence_penalty", s.presence_penalty),
        ("frequency_penalty", s.frequency_penalty),
    ] {
        if let Some(v) = v {
            if !(-2.0..=2.0).contains(&v) {
                return bad(format!("{name} must be in [-2, 2], got {v}"), name);
            }
        }
    }
    let stop: Vec<String> = match &s.stop {
        None => vec![],
        Some(Stop::One(x)) => vec![x.clone()],
        Some(Stop::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return bad(
            format!("at most {MAX_STOPS} stop strings, got {}", stop.len()),
            "stop",
        );
    }
    if stop.iter().any(String::is_empty) {
        return bad("stop strings must not be empty".into(), "stop");
    }
    if let Some(long) = stop.iter().find(|x| x.len() > MAX_STOP_BYTES) {
        return bad(
            format!(
                "a stop string is {} bytes; at most {MAX_STOP_BYTES} are accepted",
                long.len()
            ),
            "stop",
        );
    }
    if let Some(k) = s.top_logprobs {
        if !(0..=MAX_LOGPROBS).contains(&k) {
            return bad(
                format!("top_logprobs must be in 0..={MAX_LOGPROBS}, got {k}"),
                "top_logprobs",
            );
        }
    }
    let logprobs = match s.logprobs {
        Some(Logprobs::Count(k)) => Some(k as usize),
        Some(Logprobs::Flag(true)) => Some(s.top_logprobs.unwrap_or(0) as usize),
        Some(Logprobs::Flag(false)) | None => None,
    };
    if let Some(k) = logprobs.filter(|&k| k > MAX_LOGPROBS as usize) {
        return bad(
            format!("logprobs must be at most {MAX_LOGPROBS}, got {k}"),
            "logprobs",
        );
    }
    Ok(SamplingParams {
        temperature: temperature as f32,
        top_p: top_p as f32,
        top_k: top_k.max(0) as usize,
        min_p: min_p as f32,
        repetition_penalty: rep as f32,
        presence_penalty: s.presence_penalty.unwrap_or(0.0) as f32,
        frequency_penalty: s.frequency_penalty.unwrap_or(0.0) as f32,
        seed: s.seed,
        max_tokens: max_tokens as usize,
        stop_token_ids: vec![],
        stop,
        ignore_eos: s.ignore_eos,
        n: n as usize,
        logprobs,
    })
}

/// A message's text: a string, text parts joined, or nothing (null).
pub fn content_text(content: &serde_json::Value, param: &str) -> Result<String, ApiError> {
    match content {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Array(parts) => Ok(parts
            .iter()
            .map(|p| {
                let kind = p.get("type").and_then(|t| t.as_str());
                match (kind, p.get("text")) {
                    (
                        Some("text" | "input_text" | "output_text"),
                        Some(serde_json::Value::String(t)),
                    ) => Ok(t.clone()),
                    _ => Err(ApiError::bad_request(
                        "only text content parts are supported",
                        Some(param),
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()?
            .join("")),
        serde_json::Value::Null => Ok(String::new()),
        _ => Err(ApiError::bad_request(
            "message content must be a string",
            Some(param),
        )),
    }
}

/// An assistant message's calls as templates take them: the arguments (a JSON string on
/// the wire) parsed into an object, as vLLM and transformers hand them over.
fn template_calls(calls: &[serde_json::Value]) -> Result<Vec<serde_json::Value>, ApiError> {
    calls
        .iter()
        .map(|c| {
            let f = c.get("function").ok_or_else(|| {
                ApiError::bad_request("a tool call needs a `function`", Some("messages"))
            })?;
            let args = match f.get("arguments") {
                Some(serde_json::Value::String(a)) => {
                    serde_json::from_str(a).unwrap_or_else(|_| serde_json::json!(a))
                }
                Some(other) => other.clone(),
                None => serde_json::json!({}),
            };
            let mut c = c.clone();
            c["function"]["arguments"] = args;
            if c.get("type").is_none() {
                c["type"] = serde_json::json!("function");
            }
            Ok(c)
        })
        .collect()
}

/// Chat messages for the template: text content (parts joined), `developer` as `system`,
/// assistant tool calls and `tool` results kept.
pub fn chat_messages(msgs: &[ChatMessageIn]) -> Result<Vec<ChatMessage>, ApiError> {
    if msgs.is_empty() {
        return Err(ApiError::bad_request(
            "messages must not be empty",
            Some("messages"),
        ));
    }
    caps::count("messages", msgs.len(), caps::MAX_MESSAGES, "messages")?;
    msgs.iter()
        .map(|m| {
            let role = if m.role == "developer" {
                "system"
            } else {
                m.role.as_str()
            };
            let mut out = ChatMessage::new(role, content_text(&m.content, "messages")?);
            if let Some(calls) = m.tool_calls.as_ref().filter(|c| !c.is_empty()) {
                out.tool_calls = Some(template_calls(calls)?);
            }
            out.tool_call_id = m.tool_call_id.clone();
            out.name = m.name.clone();
            Ok(out)
        })
        .collect()
}
