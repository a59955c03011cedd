//! Log-probabilities in the two OpenAI shapes: the legacy completions object (parallel
//! arrays) and the chat object (one entry per token, with its UTF-8 bytes).

use crate::api_responses::{ChatLogprobs, ChatTokenLogprob, ChatTopLogprob, CompletionLogprobs};

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

/// A log-probability as JSON can carry it: a token the sampler could not pick (masked by a
/// structured output) has -inf, which JSON has no number for (serde_json would write
/// `null`); OpenAI and vLLM write -9999 instead.
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

/// The completions shape; text offsets start at `offset`.
pub fn completion_json(
    tok: &Tokenizer,
    entries: &[TokenLogprob],
    offset: usize,
) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for e in entries {
        let p = piece(tok, e.token);
        out.text_offset.push(at);
        at += p.len();
        out.tokens.push(p);
        out.token_logprobs.push(finite(e.logprob));
        out.top_logprobs.push(
            e.top
                .iter()
                .map(|&(id, lp)| (piece(tok, id), finite(lp)))
                .collect(),
        );
    }
    out
}

/// The chat shape: per token its text, log-probability, UTF-8 bytes and alternatives.
pub fn chat_json(tok: &Tokenizer, entries: &[TokenLogprob]) -> ChatLogprobs {
    let one = |id: u32, lp: f32| {
        let p = piece(tok, id);
        ChatTopLogprob {
            bytes: p.as_bytes().to_vec(),
            token: p,
            logprob: finite(lp),
        }
    };
    let content = entries
        .iter()
        .map(|e| {
            let t = one(e.token, e.logprob);
            ChatTokenLogprob {
                token: t.token,
                logprob: t.logprob,
                bytes: t.bytes,
                top_logprobs: e.top.iter().map(|&(id, lp)| one(id, lp)).collect(),
            }
        })
        .collect();
    ChatLogprobs { content }
}
