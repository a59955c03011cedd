//! A from-scratch check of every invariant, for tests and debugging.
//!
//! It recomputes reference counts, free lists, fills and statistics from the block tables and
//! compares them with the incrementally kept values. O(pages + table entries): never call it on
//! a hot path.

use rustc_hash::FxHashMap;

use crate::manager::{blocks_for, BlockManager};
use crate::pool::BlockPool;
use crate::{BlockId, Location};

/// A broken block-manager invariant, described (a bug in the manager, never a caller's
/// misuse: those are [`crate::BlockError`]s).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block manager invariant broken: {0}")]
pub struct InvariantViolation(pub String);

impl BlockManager {
    /// Returns the first broken invariant, if any.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let bs = self.cfg.block_size;
        let mut dev_refs: FxHashMap<BlockId, u32> = FxHashMap::default();
        let mut host_refs: FxHashMap<BlockId, u32> = FxHashMap::default();
        let (mut logical, mut host_logical) = (0usize, 0usize);
        for (seq, st) in &self.seqs {
            if st.blocks.len() != blocks_for(st.num_tokens, bs) {
                return Err(InvariantViolation(format!(
                    "seq {seq}: {} pages for {} tokens",
                    st.blocks.len(),
                    st.num_tokens
                )));
            }
            if st.tail != st.blocks.last().copied().unwrap_or(crate::free_list::NIL) {
                return Err(InvariantViolation(format!(
                    "seq {seq}: inline tail out of date"
                )));
            }
            if st.location == Location::Device
                && !st.tail_maybe_shared
                && st.num_tokens % bs != 0
                && self.dev.pool.ref_count(st.tail) != 1
            {
                return Err(InvariantViolation(format!(
                    "seq {seq}: tail page shared but not marked so"
                )));
            }
            if st.num_hashed_blocks > st.num_tokens / bs {
                return Err(InvariantViolation(format!(
                    "seq {seq}: hashed a page that is not full"
                )));
            }
            let (refs, tokens) = match st.location {
                Location::Device => (&mut dev_refs, &mut logical),
                Location::Host => (&mut host_refs, &mut host_logical),
            };
            *tokens += st.num_tokens;
            for (i, &b) in st.blocks.iter().enumerate() {
                *refs.entry(b).or_default() += 1;
                let pool = match st.location {
                    Location::Device => &self.dev.pool,
                    Location::Host => &self.host,
                };
                let want = (st.num_tokens - i * bs).min(bs) as u32;
                if pool.fill(b) < want {
                    return Err(InvariantViolation(format!(
                        "seq {seq}: page {b} fill {} < {want}",
                        pool.fill(b)
                    )));
                }
                // A partly filled last page may be shared (after fork) but then both holders
                // hold exactly its fill: nobody has written past it.
                if pool.ref_count(b) > 1 && pool.fill(b) != want && want < bs as u32 {
                    return Err(InvariantViolation(format!(
                        "seq {seq}: shared page {b} written past its holders"
                    )));
                }
            }
        }
        check_pool("device", &self.dev.pool, &dev_refs)?;
        check_pool("host", &self.host, &host_refs)?;
        if logical != self.logical_tokens || host_logical != self.host_logical_tokens {
            return Err(InvariantViolation(format!(
                "logical tokens {}/{} (host {}/{})",
                self.logical_tokens, logical, self.host_logical_tokens, host_logical
            )));
        }
        let filled: usize = dev_refs
            .keys()
            .map(|&b| self.dev.pool.fill(b) as usize)
            .sum();
        if filled != self.dev.filled_slots {
            return Err(InvariantViolation(format!(
                "filled slots {} but recomputed {filled}",
                self.dev.filled_slots
            )));
        }
        if filled > logical {
            return Err(InvariantViolation(format!(
                "filled slots {filled} exceed logical tokens {logical}"
            )));
        }
        let mut cached = 0;
        for (hash, b) in self.dev.prefix.entries() {
            match self.dev.prefix.identity(b) {
                Some(id) if id.hash == hash => {}
                _ => {
                    return Err(InvariantViolation(format!(
                        "prefix entry {hash:#x} -> page {b} without identity"
                    )))
                }
            }
            if !self.dev.pool.is_cached(b) || self.dev.pool.fill(b) as usize != bs {
                return Err(InvariantViolation(format!(
                    "cached page {b} not flagged or not full"
                )));
            }
            cached += 1;
        }
        let flagged = (0..self.cfg.num_device_blocks as BlockId)
            .filter(|&b| self.dev.pool.is_cached(b))
            .count();
        if flagged != cached {
            return Err(InvariantViolation(format!(
                "{flagged} pages flagged cached, {cached} entries"
            )));
        }
        Ok(())
    }
}

fn check_pool(
    name: &str,
    pool: &BlockPool,
    refs: &FxHashMap<BlockId, u32>,
) -> Result<(), InvariantViolation> {
    let stats = pool.stats();
    if stats.free_blocks + stats.used_blocks != stats.total_blocks {
        return Err(InvariantViolation(format!("{name}: free + used != total")));
    }
    let mut cached_free = 0;
    for b in 0..pool.num_blocks() as BlockId {
        let want = refs.get(&b).copied().unwrap_or(0);
        if pool.ref_count(b) != want {
            return Err(InvariantViolation(format!(
                "{name} page {b}: ref count {} but {want} table entries",
                pool.ref_count(b)
            )));
        }
        if (want == 0) != pool.is_free(b) {
            return Err(InvariantViolation(format!(
                "{name} page {b}: ref count {want}, free {}",
                pool.is_free(b)
            )));
        }
        if want == 0 && pool.is_cached(b) {
            cached_free += 1;
        }
    }
    let walked = pool.free_blocks_in_eviction_order().count();
    if walked != stats.free_blocks || stats.used_blocks != refs.len() {
        return Err(InvariantViolation(format!(
            "{name}: free list walk {walked}, count {}",
            stats.free_blocks
        )));
    }
    if cached_free != stats.cached_free_blocks {
        return Err(InvariantViolation(format!(
            "{name}: cached free {} but recomputed {cached_free}",
            stats.cached_free_blocks
        )));
    }
    Ok(())
}
