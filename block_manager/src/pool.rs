//! A pool of fixed-size pages: reference counts, fill levels and the free list.
//!
//! The pool knows nothing of sequences or hashes. It only knows, per page, how many block
//! tables point at it (`ref_count`), how many of its token slots hold a token (`fill`), and
//! whether it carries a prefix-cache identity (`cached`), so that it can count cached-but-free
//! pages in O(1). Pages with `ref_count == 0` are exactly the pages on the free list.

use crate::error::BlockError;
use crate::free_list::FreeList;
use crate::BlockId;

/// Page counts of one pool, read in O(1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolStats {
    /// Pages in the pool.
    pub total_blocks: usize,
    /// Pages on the free list (`ref_count == 0`), cached or not.
    pub free_blocks: usize,
    /// Pages referenced by at least one block table: `total_blocks - free_blocks`.
    pub used_blocks: usize,
    /// Free pages that still hold a prefix-cache entry: reusable by a prefix hit until evicted.
    pub cached_free_blocks: usize,
}

/// Per-page counters, kept together so the per-step path touches one cache line per page.
#[derive(Debug, Clone, Copy, Default)]
struct PageMeta {
    ref_count: u32,
    fill: u32,
}

#[derive(Debug, Clone)]
pub struct BlockPool {
    meta: Vec<PageMeta>,
    cached: Vec<bool>,
    free: FreeList,
    cached_free: usize,
    block_size: usize,
}

impl BlockPool {
    /// A pool of `num_blocks` free pages of `block_size` token slots each.
    pub fn new(num_blocks: usize, block_size: usize) -> Result<Self, BlockError> {
        if num_blocks >= u32::MAX as usize {
            return Err(BlockError::InvalidConfig(format!(
                "num_blocks {num_blocks} does not fit a 32-bit page id"
            )));
        }
        Ok(BlockPool {
            meta: vec![PageMeta::default(); num_blocks],
            cached: vec![false; num_blocks],
            free: FreeList::full(num_blocks),
            cached_free: 0,
            block_size,
        })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    pub fn num_blocks(&self) -> usize {
        self.meta.len()
    }

    pub fn num_free(&self) -> usize {
        self.free.len()
    }

    pub fn stats(&self) -> PoolStats {
        PoolStats {
            total_blocks: self.num_blocks(),
            free_blocks: self.free.len(),
            used_blocks: self.num_blocks() - self.free.len(),
            cached_free_blocks: self.cached_free,
        }
    }

    /// Takes the least recently freed page and gives it one reference. The caller must evict
    /// its prefix-cache entry if [`BlockPool::is_cached`] says it has one.
    #[inline]
    pub fn allocate(&mut self) -> Option<BlockId> {
        let b = self.free.pop_front()?;
        if self.cached[b as usize] {
            self.cached_free -= 1;
        }
        self.meta[b as usize] = PageMeta {
            ref_count: 1,
            fill: 0,
        };
        Some(b)
    }

    /// Drops one reference; at zero the page goes to the tail of the free list (it keeps its
    /// prefix-cache entry, if any, until it is reused). Returns whether the page became free.
    #[inline]
    pub fn release(&mut self, b: BlockId) -> Result<bool, BlockError> {
        let rc = &mut self
            .meta
            .get_mut(b as usize)
            .ok_or(BlockError::DoubleFree(b))?
            .ref_count;
        if *rc == 0 {
            return Err(BlockError::DoubleFree(b));
        }
        *rc -= 1;
        if *rc == 0 {
            self.free.push_back(b);
            if self.cached[b as usize] {
                self.cached_free += 1;
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Adds one reference, reviving the page from the free list if it was free (a prefix hit).
    #[inline]
    pub(crate) fn retain(&mut self, b: BlockId) {
        let i = b as usize;
        if self.meta[i].ref_count == 0 {
            self.free.remove(b);
            if self.cached[i] {
                self.cached_free -= 1;
            }
        }
        self.meta[i].ref_count += 1;
    }

    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.meta[b as usize].ref_count
    }

    pub fn is_free(&self, b: BlockId) -> bool {
        self.free.contains(b)
    }

    /// Number of this page's token slots that hold a token.
    pub fn fill(&self, b: BlockId) -> u32 {
        self.meta[b as usize].fill
    }

    pub(crate) fn set_fill(&mut self, b: BlockId, fill: u32) {
        self.meta[b as usize].fill = fill;
    }

    pub fn is_cached(&self, b: BlockId) -> bool {
        self.cached[b as usize]
    }

    pub(crate) fn set_cached(&mut self, b: BlockId, cached: bool) {
        let i = b as usize;
        if self.cached[i] == cached {
            return;
        }
        if self.free.contains(b) {
            if cached {
                self.cached_free += 1;
            } else {
                self.cached_free -= 1;
            }
        }
        self.cached[i] = cached;
    }

    /// Free pages from least to most recently freed (the eviction order).
    pub fn free_blocks_in_eviction_order(&self) -> impl Iterator<Item = BlockId> + '_ {
        std::iter::successors(self.free.head(), |&b| self.free.next_of(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocate_takes_head_release_goes_to_tail() {
        let mut p = BlockPool::new(3, 4).unwrap();
        assert_eq!(p.allocate(), Some(0));
        assert_eq!(p.allocate(), Some(1));
        assert!(p.release(0).unwrap());
        // 2 was freed before 0, so it is reused first.
        assert_eq!(p.allocate(), Some(2));
        assert_eq!(p.allocate(), Some(0));
        assert_eq!(p.allocate(), None);
        assert_eq!(p.stats().free_blocks, 0);
        assert_eq!(p.stats().used_blocks, 3);
    }

    #[test]
    fn release_of_a_free_page_is_a_double_free() {
        let mut p = BlockPool::new(2, 4).unwrap();
        let b = p.allocate().unwrap();
        p.release(b).unwrap();
        assert_eq!(p.release(b), Err(BlockError::DoubleFree(b)));
        assert_eq!(p.release(99), Err(BlockError::DoubleFree(99)));
        assert_eq!(p.stats().free_blocks, 2);
    }

    #[test]
    fn cached_free_count_follows_the_free_list() {
        let mut p = BlockPool::new(2, 4).unwrap();
        let b = p.allocate().unwrap();
        p.set_cached(b, true);
        assert_eq!(p.stats().cached_free_blocks, 0);
        p.release(b).unwrap();
        assert_eq!(p.stats().cached_free_blocks, 1);
        p.retain(b);
        assert_eq!(p.stats().cached_free_blocks, 0);
        assert_eq!(p.ref_count(b), 1);
        p.release(b).unwrap();
        p.set_cached(b, false);
        assert_eq!(p.stats().cached_free_blocks, 0);
    }
}
