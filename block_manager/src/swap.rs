//! Swapping sequences between the device pool and the host pool.
//!
//! Sequences are swapped as a group (a parallel-sampling family shares pages): a page shared
//! inside the group is copied once and stays shared on the other side. The executor must carry
//! out a step's swap-out copies before anything else writes device pages in that step, since the
//! pages they free may be handed out again in the same scheduling pass.

use rustc_hash::FxHashMap;

use crate::error::BlockError;
use crate::manager::BlockManager;
use crate::{BlockCopy, BlockId, Location, SeqId};

impl BlockManager {
    fn check_group(&self, group: &[SeqId], at: Location) -> Result<(), BlockError> {
        for (i, &seq) in group.iter().enumerate() {
            let st = self
                .seqs
                .get(&seq)
                .ok_or(BlockError::UnknownSequence(seq))?;
            if st.location != at {
                return Err(match at {
                    Location::Device => BlockError::SequenceSwappedOut(seq),
                    Location::Host => BlockError::SequenceNotSwappedOut(seq),
                });
            }
            if group[..i].contains(&seq) {
                return Err(BlockError::DuplicateInGroup(seq));
            }
        }
        Ok(())
    }

    /// Distinct pages of the group's tables, in first-use order, each with the number of table
    /// entries of the group that point at it.
    fn page_refs(&self, group: &[SeqId]) -> Vec<(BlockId, u32)> {
        let mut index: FxHashMap<BlockId, usize> = FxHashMap::default();
        let mut out: Vec<(BlockId, u32)> = Vec::new();
        for seq in group {
            for &b in &self.seqs[seq].blocks {
                let i = *index.entry(b).or_insert_with(|| {
                    out.push((b, 0));
                    out.len() - 1
                });
                out[i].1 += 1;
            }
        }
        out
    }

    /// Host pages `swap_out(group)` would still need (0 = it would succeed).
    pub fn swap_out_shortfall(&self, group: &[SeqId]) -> Result<usize, BlockError> {
        self.check_group(group, Location::Device)?;
        Ok(self
            .page_refs(group)
            .len()
            .saturating_sub(self.host.num_free()))
    }

    /// Moves a group of running sequences to the host pool. Returns the device→host copies;
    /// the device pages are released (cached full pages stay findable on the device).
    pub fn swap_out(&mut self, group: &[SeqId]) -> Result<Vec<BlockCopy>, BlockError> {
        self.check_group(group, Location::Device)?;
        let pages = self.page_refs(group);
        let free = self.host.num_free();
        if pages.len() > free {
            return Err(BlockError::OutOfHostBlocks {
                needed: pages.len(),
                free,
                missing: pages.len() - free,
            });
        }
        let mut map: FxHashMap<BlockId, BlockId> = FxHashMap::default();
        let mut copies = Vec::with_capacity(pages.len());
        for &(d, refs) in &pages {
            let h = self.host.allocate().expect("counted above");
            for _ in 1..refs {
                self.host.retain(h);
            }
            self.host.set_fill(h, self.dev.pool.fill(d));
            self.host_origin[h as usize] =
                self.dev.pool.is_cached(d).then(|| self.dev.prefix.link(d));
            map.insert(d, h);
            copies.push(BlockCopy { src: d, dst: h });
        }
        self.remap(group, &map, Location::Host);
        // Release device references tail first, so cached heads outlive tails.
        for &(d, refs) in pages.iter().rev() {
            for _ in 0..refs {
                self.dev.release(d)?;
            }
        }
        Ok(copies)
    }

    /// Device pages `swap_in(group)` would still need, watermark included (0 = it would
    /// succeed).
    pub fn swap_in_shortfall(&self, group: &[SeqId]) -> Result<usize, BlockError> {
        self.check_group(group, Location::Host)?;
        let (fresh, revived) = self.swap_in_need(&self.page_refs(group));
        Ok((fresh + revived + self.watermark_blocks).saturating_sub(self.num_free_blocks()))
    }

    /// The device page a host page can be revived from without a copy: the cached page it was
    /// copied from, if that page still holds the same content.
    fn revivable(&self, h: BlockId) -> Option<BlockId> {
        let link = self.host_origin[h as usize]?;
        (self.dev.prefix.generation(link.block) == link.generation
            && self.dev.pool.is_cached(link.block))
        .then_some(link.block)
    }

    /// (fresh pages to allocate, free cached pages to revive).
    fn swap_in_need(&self, pages: &[(BlockId, u32)]) -> (usize, usize) {
        let mut fresh = 0;
        let mut revived = 0;
        for &(h, _) in pages {
            match self.revivable(h) {
                Some(d) if self.dev.pool.ref_count(d) == 0 => revived += 1,
                Some(_) => {}
                None => fresh += 1,
            }
        }
        (fresh, revived)
    }

    /// Brings a swapped-out group back to the device. Returns the host→device copies. Pages
    /// whose content is still in the device prefix cache are revived, not copied. All or
    /// nothing; leaves the watermark free.
    pub fn swap_in(&mut self, group: &[SeqId]) -> Result<Vec<BlockCopy>, BlockError> {
        self.check_group(group, Location::Host)?;
        let pages = self.page_refs(group);
        let (fresh, revived) = self.swap_in_need(&pages);
        let free = self.num_free_blocks();
        let needed = fresh + revived + self.watermark_blocks;
        if needed > free {
            return Err(BlockError::OutOfBlocks {
                needed,
                free,
                missing: needed - free,
            });
        }
        let mut map: FxHashMap<BlockId, BlockId> = FxHashMap::default();
        // Revive first, so that allocating fresh pages cannot evict them.
        for &(h, refs) in &pages {
            if let Some(d) = self.revivable(h) {
                for _ in 0..refs {
                    self.dev.retain(d);
                }
                map.insert(h, d);
            }
        }
        let mut copies = Vec::with_capacity(fresh);
        for &(h, refs) in &pages {
            if map.contains_key(&h) {
                continue;
            }
            let d = self.dev.allocate().expect("counted above");
            for _ in 1..refs {
                self.dev.retain(d);
            }
            self.dev.set_fill(d, self.host.fill(h));
            map.insert(h, d);
            copies.push(BlockCopy { src: h, dst: d });
        }
        self.remap(group, &map, Location::Device);
        for &(h, refs) in pages.iter().rev() {
            for _ in 0..refs {
                self.host.release(h)?;
            }
        }
        Ok(copies)
    }

    /// Points the group's tables at their pages in the other pool and moves their token counts.
    fn remap(&mut self, group: &[SeqId], map: &FxHashMap<BlockId, BlockId>, to: Location) {
        for seq in group {
            let st = self.seqs.get_mut(seq).expect("checked");
            for b in st.blocks.iter_mut() {
                *b = map[b];
            }
            st.sync_tail();
            // Pages shared inside the group are shared again on the other side.
            st.tail_maybe_shared = true;
            st.location = to;
            match to {
                Location::Host => {
                    self.logical_tokens -= st.num_tokens;
                    self.host_logical_tokens += st.num_tokens;
                }
                Location::Device => {
                    self.host_logical_tokens -= st.num_tokens;
                    self.logical_tokens += st.num_tokens;
                }
            }
        }
    }
}
