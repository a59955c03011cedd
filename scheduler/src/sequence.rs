//! Requests as they enter, and sequences as the scheduler tracks them.

use block_manager::{SeqId, TokenId};

/// A generation request as submitted.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub id: SeqId,
    pub prompt: Vec<TokenId>,
    /// Upper bound on generated tokens (the caller still decides when to stop).
    pub max_tokens: usize,
    /// When it arrived (seconds on the caller's clock).
    pub arrival_s: f64,
    /// Smaller is more urgent (as in vLLM).
    pub priority: i32,
    /// Separates prefix-cache entries of different tenants.
    pub cache_salt: Option<u64>,
}

impl Request {
    pub fn new(id: SeqId, prompt: Vec<TokenId>, max_tokens: usize) -> Self {
        Request {
            id,
            prompt,
            max_tokens,
            arrival_s: 0.0,
            priority: 0,
            cache_salt: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStatus {
    Waiting,
    Running,
    Swapped,
}

/// Why a sequence finished (decided by the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    Stop,
    Length,
    Abort,
}

impl FinishReason {
    /// The OpenAI API's name (`stop`, `length`, `abort`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// A request inside the scheduler. `tokens` is prompt + generated; `num_computed` of them
/// have their K/V in the cache. Every kind of work (prefill, chunked prefill, prefix hit,
/// decode, recompute after preemption) just moves `num_computed` toward `tokens.len()`.
#[derive(Debug, Clone)]
pub struct Sequence {
    pub id: SeqId,
    pub tokens: Vec<TokenId>,
    pub prompt_len: usize,
    pub max_tokens: usize,
    pub num_computed: usize,
    pub arrival_s: f64,
    pub priority: i32,
    pub cache_salt: Option<u64>,
    pub status: SeqStatus,
    pub num_preemptions: u32,
    /// Prompt tokens found in the prefix cache when the sequence was first admitted.
    pub num_cached_prompt_tokens: Option<usize>,
    /// The policy's static ordering key (smaller goes first), fixed at arrival so that a
    /// preempted sequence comes back to its place in line.
    pub(crate) key: OrderKey,
    /// Scheduled in the step in flight with `samples` set: `update` expects its token.
    pub(crate) awaiting_sample: bool,
}

impl Sequence {
    pub(crate) fn from_request(r: Request) -> Self {
        Sequence {
            id: r.id,
            prompt_len: r.prompt.len(),
            tokens: r.prompt,
            max_tokens: r.max_tokens,
            num_computed: 0,
            arrival_s: r.arrival_s,
            priority: r.priority,
            cache_salt: r.cache_salt,
            status: SeqStatus::Waiting,
            num_preemptions: 0,
            num_cached_prompt_tokens: None,
            key: OrderKey::default(),
            awaiting_sample: false,
        }
    }

    pub fn num_output_tokens(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to compute before the next sample.
    pub fn num_uncomputed(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    pub fn prompt(&self) -> &[TokenId] {
        &self.tokens[..self.prompt_len]
    }

    pub fn output(&self) -> &[TokenId] {
        &self.tokens[self.prompt_len..]
    }
}

/// A total order over policy keys: (key, then request id for ties).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct OrderKey {
    bits: u64,
    pub id: SeqId,
}

impl OrderKey {
    pub fn new(key: f64, id: SeqId) -> Self {
        // Map f64 to u64 preserving order (sign-magnitude to offset binary).
        let b = key.to_bits();
        let bits = if b >> 63 == 1 { !b } else { b | (1 << 63) };
        OrderKey { bits, id }
    }
}
