//! A step's attention metadata on the host, checked once per step: what the kernels would
//! otherwise read out of bounds or silently get wrong.

use crate::cuda::launch::check;
use crate::cuda::CudaError;
use crate::layout::KvLayout;

/// The most sequences a step may have: they are a grid's y dimension.
pub const MAX_SEQS: usize = 65_535;

const KERNEL: &str = "paged_attention";

/// One sequence of a step, as the CPU kernel takes it too: `query_len` query rows from row
/// `query_start` (the sequences' rows consecutive and in order), attending to the
/// `context_len` tokens in its cache (the chunk's own included, written first) whose pages
/// `block_table` lists.
pub use crate::cpu::SeqChunk;

/// The batch in the kernels' shapes: block tables padded to one width, context and query
/// lengths, query offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttentionMeta {
    /// `[num_seqs, max_blocks]` block numbers.
    pub tables: Vec<i32>,
    pub max_blocks: usize,
    pub context_lens: Vec<i32>,
    pub query_lens: Vec<usize>,
    /// `num_seqs + 1` offsets of the sequences' first query rows.
    pub cu_query: Vec<i32>,
    pub num_tokens: usize,
    /// Pages each table really lists (the rest is padding).
    table_lens: Vec<usize>,
    /// The largest block number any table lists.
    max_entry: Option<u32>,
}

impl AttentionMeta {
    /// Checks and packs `seqs`. A sequence's context must cover its queries, except a decode
    /// row (one query) with an empty context, whose output is zeros.
    pub fn new(seqs: &[SeqChunk<'_>]) -> Result<Self, CudaError> {
        check(KERNEL, seqs.len() <= MAX_SEQS, || {
            format!("{} sequences (at most {MAX_SEQS})", seqs.len())
        })?;
        let max_blocks = seqs
            .iter()
            .map(|s| s.block_table.len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut tables = vec![0i32; seqs.len() * max_blocks];
        let mut cu_query = Vec::with_capacity(seqs.len() + 1);
        cu_query.push(0);
        let mut next = 0usize;
        let mut max_entry = None;
        for (i, s) in seqs.iter().enumerate() {
            check(KERNEL, s.query_start == next, || {
                "sequences' queries must be consecutive, in order".into()
            })?;
            check(
                KERNEL,
                s.context_len >= s.query_len || (s.query_len == 1 && s.context_len == 0),
                || {
                    format!(
                        "sequence {i}: {} queries but only {} tokens of context",
                        s.query_len, s.context_len
                    )
                },
            )?;
            next += s.query_len;
            check(KERNEL, next <= i32::MAX as usize, || {
                "too many query rows".into()
            })?;
            cu_query.push(next as i32);
            for (j, &b) in s.block_table.iter().enumerate() {
                check(KERNEL, b <= i32::MAX as u32, || {
                    format!("sequence {i}: block number {b}")
                })?;
                tables[i * max_blocks + j] = b as i32;
                max_entry = max_entry.max(Some(b));
            }
        }
        Ok(AttentionMeta {
            tables,
            max_blocks,
            context_lens: seqs.iter().map(|s| s.context_len as i32).collect(),
            query_lens: seqs.iter().map(|s| s.query_len).collect(),
            cu_query,
            num_tokens: next,
            table_lens: seqs.iter().map(|s| s.block_table.len()).collect(),
            max_entry,
        })
    }

    pub fn num_seqs(&self) -> usize {
        self.query_lens.len()
    }

    /// The longest context.
    pub fn max_context(&self) -> usize {
        self.context_lens
            .iter()
            .map(|&c| c as usize)
            .max()
            .unwrap_or(0)
    }

    /// Every context fits the pages its table lists, and every listed page exists in a cache
    /// of `layout`.
    pub fn check_layout(&self, layout: &KvLayout) -> Result<(), CudaError> {
        for (i, (&ctx, &pages)) in self.context_lens.iter().zip(&self.table_lens).enumerate() {
            check(KERNEL, ctx as usize <= pages * layout.block_size, || {
                format!(
                    "sequence {i}: {ctx} tokens of context in {pages} pages of {}",
                    layout.block_size
                )
            })?;
        }
        if let Some(b) = self.max_entry {
            check(KERNEL, (b as usize) < layout.num_blocks, || {
                format!(
                    "block number {b} in a cache of {} blocks",
                    layout.num_blocks
                )
            })?;
        }
        Ok(())
    }
}
