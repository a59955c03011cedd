//! Statistics of the KV cache, maintained incrementally and read in O(1).
//!
//! Definitions (device pool unless named otherwise), used by the fragmentation study and the
//! live metrics:
//! - *logical tokens*: Σ over device-resident sequences of the token slots each holds. A token
//!   in a page shared by k sequences counts k times.
//! - *allocated slots*: `used_blocks × block_size`: the token slots of every page in use.
//! - *filled slots*: Σ over used pages of their fill (slots holding a token). Each physical
//!   token state counts once however many sequences share it.
//! - *internal fragmentation*: `allocated − filled`: slots reserved in partly filled pages.
//! - *shared tokens* (sharing savings): `logical − filled`: token states served to a sequence
//!   by a page some other sequence also holds, i.e. the slots sharing saved.
//! - *prefix queries / hits*: prompt tokens looked up, and tokens found cached, counted when a
//!   sequence is admitted with its [`crate::PrefixHit`].
//! - *evictions*: cached free pages whose prefix-cache entry was dropped for reuse.

use crate::manager::BlockManager;
use crate::pool::PoolStats;

/// A snapshot of the block manager's statistics (see the module docs for the definitions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KvStats {
    pub block_size: usize,
    pub device: PoolStats,
    pub host: PoolStats,
    pub logical_tokens: usize,
    pub allocated_slots: usize,
    pub filled_slots: usize,
    pub host_logical_tokens: usize,
    pub num_sequences: usize,
    pub prefix_cache_entries: usize,
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub evictions: u64,
}

impl KvStats {
    pub fn internal_fragmentation_slots(&self) -> usize {
        self.allocated_slots - self.filled_slots
    }

    pub fn shared_tokens(&self) -> usize {
        self.logical_tokens - self.filled_slots
    }

    /// Fraction of device pages in use, in [0, 1] (vLLM's `kv_cache_usage_perc`).
    pub fn usage(&self) -> f64 {
        ratio(self.device.used_blocks, self.device.total_blocks)
    }

    /// Fraction of allocated slots that do not hold a token.
    pub fn internal_fragmentation(&self) -> f64 {
        ratio(self.internal_fragmentation_slots(), self.allocated_slots)
    }

    /// Fraction of prefix-cache queries that hit.
    pub fn prefix_hit_rate(&self) -> f64 {
        if self.prefix_queries == 0 {
            0.0
        } else {
            self.prefix_hits as f64 / self.prefix_queries as f64
        }
    }
}

fn ratio(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

impl BlockManager {
    /// The statistics, in O(1).
    pub fn stats(&self) -> KvStats {
        let device = self.dev.pool.stats();
        KvStats {
            block_size: self.cfg.block_size,
            device,
            host: self.host.stats(),
            logical_tokens: self.logical_tokens,
            allocated_slots: device.used_blocks * self.cfg.block_size,
            filled_slots: self.dev.filled_slots,
            host_logical_tokens: self.host_logical_tokens,
            num_sequences: self.seqs.len(),
            prefix_cache_entries: self.dev.prefix.len(),
            prefix_queries: self.prefix_queries,
            prefix_hits: self.prefix_hits,
            evictions: self.dev.evictions,
        }
    }
}
