//! KV-cache page accounting for pagedrt.
//!
//! The block manager hands out fixed-size pages ("blocks") of KV cache to sequences and keeps
//! the books: per-sequence block tables, reference counts for pages shared between sequences
//! (parallel sampling, beam search, prefix caching), copy-on-write when a shared page would be
//! written, a prefix cache of full pages found by chained content hashes, and a host-side pool
//! for swapping sequences out. It moves no bytes itself: operations return the copy orders
//! (`BlockCopy`) that the executor performs on the real caches.
//!
//! It is pure and single-threaded: no locks, no clocks, no tensors, no requests (it knows
//! sequences only as ids and token counts). The scheduler owns one and
//! calls it once per step, so the simulator and the real engine share it.
//!
//! ```
//! use block_manager::{BlockManager, BlockManagerConfig};
//! let mut bm = BlockManager::new(BlockManagerConfig::new(16, 64)).unwrap();
//! let prompt: Vec<u32> = (0..40).collect();
//! let hit = bm.lookup_prefix(&prompt, None);
//! bm.admit(7, &hit, prompt.len() - hit.num_cached_tokens).unwrap();
//! assert_eq!(bm.block_table(7).unwrap().len(), 3);
//! bm.cache_full_blocks(7, &prompt).unwrap(); // after the forward pass wrote the K/V
//! bm.free(7).unwrap();
//! // A second request with the same prompt finds the first two full pages.
//! assert_eq!(bm.lookup_prefix(&prompt, None).num_cached_tokens, 32);
//! ```

mod audit;
mod config;
mod device;
mod error;
mod events;
mod free_list;
mod manager;
mod pool;
mod prefix_cache;
mod stats;
mod swap;

pub use audit::InvariantViolation;
pub use config::BlockManagerConfig;
pub use error::BlockError;
pub use events::KvEvent;
pub use manager::{Allocation, BlockManager, PrefixHit};
pub use pool::{BlockPool, PoolStats};
pub use prefix_cache::{chain_hash, PageLink, ROOT_HASH};
pub use stats::KvStats;

/// Index of a page in its pool.
pub type BlockId = u32;
/// A sequence, as named by the caller.
pub type SeqId = u64;
/// A token id.
pub type TokenId = u32;
/// A chained content hash of one full page.
pub type BlockHash = u64;

/// Which pool a page lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Location {
    Device,
    Host,
}

/// One page to copy: from `src` to `dst`. For copy-on-write both are device pages; for swap
/// out `src` is a device page and `dst` a host page; for swap in the reverse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockCopy {
    pub src: BlockId,
    pub dst: BlockId,
}
