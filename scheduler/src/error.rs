//! Errors of the scheduler.

use block_manager::{BlockError, SeqId};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SchedulerError {
    #[error("request {0} already exists")]
    DuplicateRequest(SeqId),
    #[error("unknown request {0}")]
    UnknownRequest(SeqId),
    #[error("request {0} has an empty prompt")]
    EmptyPrompt(SeqId),
    /// Prompt plus `max_tokens` can never fit, however empty the cache: queuing it would
    /// make it wait forever.
    #[error(
        "request {id} needs {needed_tokens} tokens of KV cache (prompt + max_tokens) but the \
         whole cache holds {capacity_tokens}"
    )]
    NeverFits {
        id: SeqId,
        needed_tokens: usize,
        capacity_tokens: usize,
    },
    #[error("request {id}: prompt + max_tokens = {tokens} exceeds max_model_len {max_model_len}")]
    TooLong {
        id: SeqId,
        tokens: usize,
        max_model_len: usize,
    },
    #[error(
        "request {id}: {tokens} tokens (prompt + max_tokens) exceed the step budget {budget} \
         and chunked prefill is off"
    )]
    ExceedsBudget {
        id: SeqId,
        tokens: usize,
        budget: usize,
    },
    /// Only a running sequence that has just sampled (everything but its last token computed)
    /// can be forked.
    #[error("request {0} cannot be forked now: it must be running and have just sampled")]
    NotForkable(SeqId),
    /// A sequence sampled in the step but `update` got neither a token nor a finish for it.
    #[error("request {0} sampled in the last step but no token was reported for it")]
    MissingSample(SeqId),
    #[error("sampled token for request {0}, which did not sample in the last step")]
    UnexpectedSample(SeqId),
    #[error("invalid scheduler configuration: {0}")]
    InvalidConfig(String),
    #[error("block manager: {0}")]
    Block(#[from] BlockError),
}
