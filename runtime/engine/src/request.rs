//! A generation request, validated once against what the engine can run.
//!
//! Why a type: the same checks (empty prompt, token ids inside the vocabulary, prompt +
//! `max_tokens` within the model's length, at least one token and one sample) used to run in
//! the server, again in the engine and partly again in the scheduler. A [`ValidatedRequest`]
//! can only be made by [`RequestLimits::validate`], so whoever holds one (the engine) knows
//! they hold, and the server turns each failure into a 400 that names the field. What is
//! left to the engine and the scheduler is their own capacity: the queue, the KV cache, the
//! step budget.

use crate::constraint::Constraint;
use crate::sampler::SamplingParams;

/// What a request may ask of one engine: its model's vocabulary and longest sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub vocab_size: usize,
    /// Prompt plus generated tokens, at most (the scheduler's `max_model_len`, itself at
    /// most the model's positions).
    pub max_model_len: usize,
}

/// Why a request was refused; each names the request field at fault ([`Self::param`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} is outside the vocabulary (size {vocab_size})")]
    TokenOutsideVocabulary { token: u32, vocab_size: usize },
    #[error(
        "prompt ({prompt} tokens) + max_tokens ({max_tokens}) exceeds the maximum model length \
         {max_model_len}"
    )]
    TooLong {
        prompt: usize,
        max_tokens: usize,
        max_model_len: usize,
    },
    #[error("max_tokens must be at least 1")]
    NoTokens,
    #[error("n must be at least 1")]
    NoSamples,
    /// A structured-output request whose end-of-sequence could never be sampled: it must be
    /// able to stop when its grammar is complete.
    #[error("a structured output cannot be combined with ignore_eos")]
    ConstraintIgnoresEos,
}

impl InvalidRequest {
    /// The OpenAI request field the error is about.
    pub fn param(&self) -> &'static str {
        match self {
            InvalidRequest::EmptyPrompt | InvalidRequest::TokenOutsideVocabulary { .. } => "prompt",
            InvalidRequest::TooLong { .. } | InvalidRequest::NoTokens => "max_tokens",
            InvalidRequest::NoSamples => "n",
            InvalidRequest::ConstraintIgnoresEos => "ignore_eos",
        }
    }
}

/// A prompt and its sampling parameters that passed [`RequestLimits::validate`].
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedRequest {
    prompt: Vec<u32>,
    params: SamplingParams,
    priority: i32,
    cache_salt: Option<u64>,
    constraint: Option<Constraint>,
}

impl RequestLimits {
    /// Checks `prompt` and `params` against these limits.
    pub fn validate(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
    ) -> Result<ValidatedRequest, InvalidRequest> {
        self.validate_constrained(prompt, params, None)
    }

    /// [`Self::validate`] for a request whose tokens `constraint` restricts (a structured
    /// output, compiled by `structured::GrammarCompiler`).
    pub fn validate_constrained(
        &self,
        prompt: Vec<u32>,
        params: SamplingParams,
        constraint: Option<Constraint>,
    ) -> Result<ValidatedRequest, InvalidRequest> {
        if prompt.is_empty() {
            return Err(InvalidRequest::EmptyPrompt);
        }
        if let Some(&token) = prompt.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(InvalidRequest::TokenOutsideVocabulary {
                token,
                vocab_size: self.vocab_size,
            });
        }
        if params.max_tokens == 0 {
            return Err(InvalidRequest::NoTokens);
        }
        if params.n == 0 {
            return Err(InvalidRequest::NoSamples);
        }
        if prompt.len() + params.max_tokens > self.max_model_len {
            return Err(InvalidRequest::TooLong {
                prompt: prompt.len(),
                max_tokens: params.max_tokens,
                max_model_len: self.max_model_len,
            });
        }
        if constraint.is_some() && params.ignore_eos {
            return Err(InvalidRequest::ConstraintIgnoresEos);
        }
        Ok(ValidatedRequest {
            prompt,
            params,
            priority: 0,
            cache_salt: None,
            constraint,
        })
    }
}

impl ValidatedRequest {
    /// The same request scheduled with `priority` (higher first, under `--policy priority`).
    pub fn with_priority(mut self, priority: i32) -> Self {
        self.priority = priority;
        self
    }

    /// The same request whose prefix-cache hits are limited to requests of the same salt.
    pub fn with_cache_salt(mut self, cache_salt: Option<u64>) -> Self {
        self.cache_salt = cache_salt;
        self
    }

    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    pub fn priority(&self) -> i32 {
        self.priority
    }

    pub fn cache_salt(&self) -> Option<u64> {
        self.cache_salt
    }

    /// What restricts the request's tokens, if anything.
    pub fn constraint(&self) -> Option<&Constraint> {
        self.constraint.as_ref()
    }

    /// The prompt, parameters and constraint, taken apart.
    pub fn into_parts(self) -> (Vec<u32>, SamplingParams, Option<Constraint>) {
        (self.prompt, self.params, self.constraint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> RequestLimits {
        RequestLimits {
            vocab_size: 10,
            max_model_len: 8,
        }
    }

    fn params(max_tokens: usize, n: usize) -> SamplingParams {
        SamplingParams {
            max_tokens,
            n,
            ..SamplingParams::default()
        }
    }

    #[test]
    fn each_limit_is_refused_with_its_field() {
        let l = limits();
        let cases = [
            (vec![], params(1, 1), "prompt"),
            (vec![3, 10], params(1, 1), "prompt"),
            (vec![1], params(0, 1), "max_tokens"),
            (vec![1], params(1, 0), "n"),
            (vec![1, 2, 3], params(6, 1), "max_tokens"),
        ];
        for (prompt, p, field) in cases {
            let e = l.validate(prompt.clone(), p).unwrap_err();
            assert_eq!(e.param(), field, "{prompt:?}: {e}");
        }
        let ok = l.validate(vec![1, 2, 9], params(5, 2)).unwrap();
        assert_eq!(ok.prompt(), &[1, 2, 9]);
        assert_eq!(ok.params().n, 2);
        assert_eq!(ok.with_priority(3).priority(), 3);
    }
}
