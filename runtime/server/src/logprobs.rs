//! Log-probabilities in the two OpenAI shapes: the legacy completions object (parallel
//! arrays) and the chat object (one entry per token, with its UTF-8 bytes).

use serde_json::{json, Map, Value};

use engine::TokenOutput;
use models::tokenizer::Tokenizer;

/// One sampled token's log-probability and the most likely alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    pub logprob: f32,
    pub top: Vec<(u32, f32)>,
}

impl TokenLogprob {
    pub fn of(t: &TokenOutput) -> Self {
        TokenLogprob {
            token: t.token,
            logprob: t.logprob,
            top: t.top_logprobs.clone(),
        }
    }
}

/// A token's text on its own (a byte-level piece may not be valid UTF-8 alone: lossy).
fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id], false).unwrap_or_default()
}

/// `{"tokens", "token_logprobs", "top_logprobs", "text_offset"}`; offsets start at `offset`.
pub fn completion_json(tok: &Tokenizer, entries: &[TokenLogprob], offset: usize) -> Value {
    let mut tokens = Vec::with_capacity(entries.len());
    let mut offsets = Vec::with_capacity(entries.len());
    let mut at = offset;
    for e in entries {
        let p = piece(tok, e.token);
        offsets.push(at);
        at += p.len();
        tokens.push(p);
    }
    let top: Vec<Value> = entries
        .iter()
        .map(|e| {
            let m: Map<String, Value> = e
                .top
                .iter()
                .map(|&(id, lp)| (piece(tok, id), json!(lp)))
                .collect();
            Value::Object(m)
        })
        .collect();
    json!({
        "tokens": tokens,
        "token_logprobs": entries.iter().map(|e| e.logprob).collect::<Vec<_>>(),
        "top_logprobs": top,
        "text_offset": offsets,
    })
}

/// `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`.
pub fn chat_json(tok: &Tokenizer, entries: &[TokenLogprob]) -> Value {
    let one = |id: u32, lp: f32| {
        let p = piece(tok, id);
        json!({"token": p, "logprob": lp, "bytes": p.as_bytes()})
    };
    let content: Vec<Value> = entries
        .iter()
        .map(|e| {
            let mut v = one(e.token, e.logprob);
            v["top_logprobs"] = e.top.iter().map(|&(id, lp)| one(id, lp)).collect();
            v
        })
        .collect();
    json!({ "content": content })
}
