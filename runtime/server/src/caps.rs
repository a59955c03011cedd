//! What one request may ask for at most. Each bound is on a field whose cost grows with its
//! size and is paid before any token is generated (samples forked per prompt, log-probability
//! rows per token, stop strings scanned per token, schemas compiled into grammars, messages
//! rendered by the template), so that one request cannot buy unbounded work or memory. A
//! request over a bound gets a 400 that names the field and the bound; nothing is truncated
//! silently. The request body is capped separately (`MAX_BODY_BYTES`, 413).

use serde_json::Value as Json;

use crate::error::ApiError;

/// Samples per prompt (`n`), and `best_of`.
pub const MAX_N: i64 = 64;
/// Log-probabilities per token (`logprobs` on completions, `top_logprobs` on chat), as
/// OpenAI's API bounds them.
pub const MAX_LOGPROBS: i64 = 20;
/// Stop strings per request.
pub const MAX_STOPS: usize = 16;
/// Bytes of one stop string.
pub const MAX_STOP_BYTES: usize = 1024;
/// Prompts in one completions request (each is its own engine request).
pub const MAX_PROMPTS: usize = 256;
/// Messages in one chat request or Responses input.
pub const MAX_MESSAGES: usize = 2048;
/// Tools in one request (OpenAI's own bound).
pub const MAX_TOOLS: usize = 128;
/// Bytes of one schema, regex or grammar (a structured output, or one tool's parameters),
/// serialized: llguidance's compile time grows with it.
pub const MAX_SCHEMA_BYTES: usize = 64 << 10;

fn over(param: &str, what: String) -> ApiError {
    ApiError::bad_request(what, Some(param))
}

/// `count` items of `param` against `cap`.
pub fn count(param: &str, count: usize, cap: usize, noun: &str) -> Result<(), ApiError> {
    if count > cap {
        return Err(over(
            param,
            format!("at most {cap} {noun} per request, got {count}"),
        ));
    }
    Ok(())
}

/// A schema, regex or grammar of `param` against [`MAX_SCHEMA_BYTES`].
pub fn schema_size(param: &str, bytes: usize) -> Result<(), ApiError> {
    if bytes > MAX_SCHEMA_BYTES {
        return Err(over(
            param,
            format!("{param} is {bytes} bytes; at most {MAX_SCHEMA_BYTES} are accepted"),
        ));
    }
    Ok(())
}

/// The serialized size of a JSON value (what a schema costs to compile).
pub fn json_bytes(v: &Json) -> usize {
    serde_json::to_vec(v).map_or(usize::MAX, |b| b.len())
}
