//! The device pool together with its prefix cache and the counters that depend on both.
//!
//! Kept apart from the sequence map so that code holding a `&mut` sequence state can still
//! allocate and release pages (disjoint field borrows), and so that every path that changes a
//! page's state updates `filled_slots` and `evictions` the same way.

use crate::events::EventLog;
use crate::pool::BlockPool;
use crate::prefix_cache::PrefixCache;
use crate::BlockId;

#[derive(Debug, Clone)]
pub(crate) struct DevicePages {
    pub pool: BlockPool,
    pub prefix: PrefixCache,
    /// Σ over used pages of `fill`: token slots that hold a token.
    pub filled_slots: usize,
    /// Cached free pages whose identity was dropped because the page was reused.
    pub evictions: u64,
    /// What the prefix cache gained and lost, for a publisher (off unless turned on).
    pub events: EventLog,
}

impl DevicePages {
    pub(crate) fn new(num_blocks: usize, block_size: usize) -> Result<Self, crate::BlockError> {
        Ok(DevicePages {
            pool: BlockPool::new(num_blocks, block_size)?,
            prefix: PrefixCache::new(num_blocks, block_size),
            filled_slots: 0,
            evictions: 0,
            events: EventLog::new(num_blocks),
        })
    }

    /// A fresh page (fill 0), evicting its old prefix-cache identity if it had one.
    #[inline]
    pub(crate) fn allocate(&mut self) -> Option<BlockId> {
        let b = self.pool.allocate()?;
        if self.pool.is_cached(b) {
            self.forget(b);
            self.evictions += 1;
        }
        Some(b)
    }

    /// Drops the prefix-cache identity of page `b` and of every page cached on top of it.
    pub(crate) fn forget(&mut self, b: BlockId) {
        let (pool, events) = (&mut self.pool, &mut self.events);
        self.prefix.forget(b, |x, hash| {
            pool.set_cached(x, false);
            events.forgotten(x, hash);
        });
    }

    /// One more reference; a free (cached) page comes back into use with its content.
    #[inline]
    pub(crate) fn retain(&mut self, b: BlockId) {
        if self.pool.ref_count(b) == 0 {
            self.filled_slots += self.pool.fill(b) as usize;
        }
        self.pool.retain(b);
    }

    #[inline]
    pub(crate) fn release(&mut self, b: BlockId) -> Result<(), crate::BlockError> {
        if self.pool.release(b)? {
            self.filled_slots -= self.pool.fill(b) as usize;
        }
        Ok(())
    }

    /// Sets a used page's fill level, keeping `filled_slots` in step.
    #[inline]
    pub(crate) fn set_fill(&mut self, b: BlockId, fill: u32) {
        let old = self.pool.fill(b);
        self.filled_slots = self.filled_slots + fill as usize - old as usize;
        self.pool.set_fill(b, fill);
    }
}
