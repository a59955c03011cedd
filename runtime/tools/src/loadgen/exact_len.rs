//! Random prompts of exactly the requested number of tokens, as vLLM's random dataset has
//! them, when the tokenizer is known: the target's own (`/tokenize`, `/detokenize`) or a
//! local one (`--tokenizer`). Words are about one token each in BPE vocabularies but five in
//! a byte-level one; without a tokenizer the lengths are only approximate.

use std::sync::Arc;

use models::tokenizer::Tokenizer;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::{json, Value};

use super::dataset::{words, BenchRequest};
use super::http::{request, Endpoint};
use crate::error::ToolError;

/// Where token counts come from.
pub enum Tokens {
    Local(Arc<Tokenizer>),
    /// The server's `/tokenize` and `/detokenize` (pagedrt's and vLLM's).
    Server {
        endpoint: Endpoint,
        api_key: Option<String>,
    },
}

impl Tokens {
    async fn call(&self, path: &str, body: Value) -> Result<Value, ToolError> {
        let Tokens::Server { endpoint, api_key } = self else {
            unreachable!("only the server is called")
        };
        let r = request(
            endpoint,
            "POST",
            path,
            Some(body.to_string().into_bytes()),
            api_key.as_deref(),
        )
        .await?;
        if r.status != 200 {
            return Err(ToolError::Http(format!("POST {path}: status {}", r.status)));
        }
        serde_json::from_str(&r.body_text()).map_err(|e| ToolError::Http(format!("{path}: {e}")))
    }

    pub async fn encode(&self, text: &str) -> Result<Vec<u32>, ToolError> {
        match self {
            Tokens::Local(t) => t.encode(text).map_err(|e| ToolError::Input(e.to_string())),
            Tokens::Server { .. } => {
                let v = self.call("/tokenize", json!({ "prompt": text })).await?;
                v["tokens"]
                    .as_array()
                    .and_then(|a| a.iter().map(|t| t.as_u64().map(|x| x as u32)).collect())
                    .ok_or_else(|| ToolError::Http("/tokenize: no token list".into()))
            }
        }
    }

    pub async fn decode(&self, ids: &[u32]) -> Result<String, ToolError> {
        match self {
            Tokens::Local(t) => t
                .decode(ids, true)
                .map_err(|e| ToolError::Input(e.to_string())),
            Tokens::Server { .. } => {
                let v = self.call("/detokenize", json!({ "tokens": ids })).await?;
                v["prompt"]
                    .as_str()
                    .map(str::to_string)
                    .ok_or_else(|| ToolError::Http("/detokenize: no prompt".into()))
            }
        }
    }
}

/// Makes every prompt exactly `prompt_len` tokens long: cut at that many tokens and re-read,
/// or more words appended, until the count is right (a few rounds). Returns how many prompts
/// could not be made exact (they keep the nearest length found, and `prompt_len` says it).
pub async fn fit_lengths(
    reqs: &mut [BenchRequest],
    tokens: &Tokens,
    seed: u64,
) -> Result<usize, ToolError> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x01e5_74e5);
    let mut missed = 0;
    for r in reqs.iter_mut() {
        let want = r.prompt_len;
        let mut text = std::mem::take(&mut r.prompt);
        let mut got = tokens.encode(&text).await?;
        for _ in 0..8 {
            if got.len() == want {
                break;
            }
            if got.len() > want {
                text = tokens.decode(&got[..want]).await?;
            } else {
                text.push_str(&words(&mut rng, want - got.len()));
            }
            got = tokens.encode(&text).await?;
        }
        if got.len() != want {
            missed += 1;
        }
        r.prompt = text;
        r.prompt_len = got.len();
    }
    Ok(missed)
}
