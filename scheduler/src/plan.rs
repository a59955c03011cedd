//! What one step runs: the scheduler's output and the executor's input.

use block_manager::{BlockCopy, BlockId, SeqId, TokenId};

/// One sequence's work in a step: tokens `start..start + len` of it are computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledSeq {
    pub seq: SeqId,
    /// Tokens already in the cache (also the position of the first token computed now).
    pub start: usize,
    pub len: usize,
    /// Whether the last computed token's logits are sampled (the chunk reaches the end).
    pub samples: bool,
    /// Where this sequence's block table lies in [`StepPlan::block_tables`].
    pub table_offset: usize,
    pub table_len: usize,
}

impl ScheduledSeq {
    /// Context the chunk attends to: cached tokens plus the chunk itself.
    pub fn context_len(&self) -> usize {
        self.start + self.len
    }
    pub fn is_decode(&self) -> bool {
        self.len == 1 && self.start > 0
    }
}

/// The plan of one engine step. The executor must carry out `swap_out`, then `swap_in`, then
/// `cow` copies, then the forward pass: pages freed by a swap-out may be reused in the same
/// step.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepPlan {
    pub seqs: Vec<ScheduledSeq>,
    /// All block tables, flat (one allocation per step).
    pub block_tables: Vec<BlockId>,
    /// The token ids to compute, flat, in `seqs` order.
    pub input_ids: Vec<TokenId>,
    pub cow: Vec<BlockCopy>,
    pub swap_in: Vec<BlockCopy>,
    pub swap_out: Vec<BlockCopy>,
    pub preempted: Vec<SeqId>,
}

impl StepPlan {
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty() && self.swap_out.is_empty() && self.swap_in.is_empty()
    }
    pub fn block_table(&self, s: &ScheduledSeq) -> &[BlockId] {
        &self.block_tables[s.table_offset..s.table_offset + s.table_len]
    }
    pub fn num_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.len).sum()
    }
    pub fn num_decode_seqs(&self) -> usize {
        self.seqs.iter().filter(|s| s.is_decode()).count()
    }
    pub fn num_prefill_tokens(&self) -> usize {
        self.seqs
            .iter()
            .filter(|s| !s.is_decode())
            .map(|s| s.len)
            .sum()
    }
    /// (query, key) pairs of the prefill chunks: n·s + n(n+1)/2 for n tokens after s.
    pub fn num_prefill_attention_pairs(&self) -> usize {
        self.seqs
            .iter()
            .filter(|s| !s.is_decode())
            .map(|s| s.len * s.start + s.len * (s.len + 1) / 2)
            .sum()
    }
    /// Σ context tokens attended (what attention reads from the cache).
    pub fn num_context_tokens(&self) -> usize {
        self.seqs.iter().map(|s| s.context_len()).sum()
    }
}

/// What the caller reports after running a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepResult {
    /// The token sampled for each sequence that sampled.
    pub sampled: Vec<(SeqId, TokenId)>,
    /// Sequences that finished (after their sampled token was appended).
    pub finished: Vec<(SeqId, crate::FinishReason)>,
}
