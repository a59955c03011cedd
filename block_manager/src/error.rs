//! The one error type of the block manager.
//!
//! Every misuse a caller can trigger (unknown sequence, stale prefix hit, a request for more
//! pages than exist) comes back as one of these values. None of them leaves the manager in a
//! changed state: operations are all-or-nothing.

use crate::{BlockId, SeqId};

/// Why a block-manager operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The device pool cannot give `needed` pages (plus the admission watermark, when it applies).
    /// `missing` is how many more free pages the operation would need.
    #[error("out of device KV pages: {needed} needed, {free} free, {missing} missing")]
    OutOfBlocks {
        needed: usize,
        free: usize,
        missing: usize,
    },
    /// The host (swap) pool cannot hold the pages of the sequences being swapped out.
    #[error("out of host swap pages: {needed} needed, {free} free, {missing} missing")]
    OutOfHostBlocks {
        needed: usize,
        free: usize,
        missing: usize,
    },
    #[error("unknown sequence {0}")]
    UnknownSequence(SeqId),
    #[error("sequence {0} already exists")]
    SequenceExists(SeqId),
    #[error("sequence {0} is swapped out to the host pool")]
    SequenceSwappedOut(SeqId),
    #[error("sequence {0} is not swapped out")]
    SequenceNotSwappedOut(SeqId),
    #[error("sequence {0} appears twice in one swap group")]
    DuplicateInGroup(SeqId),
    /// A [`crate::PrefixHit`] was used after one of its pages had been evicted or the prefix
    /// cache reset. Look the prefix up again.
    #[error("prefix hit is stale: page {0} was evicted since the lookup")]
    StalePrefixHit(BlockId),
    /// A prefix hit or token count that does not fit this manager's block size.
    #[error("prefix hit does not belong to this block manager: {0}")]
    ForeignPrefixHit(&'static str),
    /// `cache_full_blocks` was given more tokens than the sequence holds slots for.
    #[error("sequence {seq} holds {held} token slots but {given} tokens were given")]
    TooManyTokens {
        seq: SeqId,
        given: usize,
        held: usize,
    },
    /// A page was released more often than it was referenced: a bug in the caller's bookkeeping.
    #[error("page {0} freed twice")]
    DoubleFree(BlockId),
    #[error("invalid block manager configuration: {0}")]
    InvalidConfig(String),
}
