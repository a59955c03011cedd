//! The block manager: sequences, their block tables, and the operations the scheduler calls.

use rustc_hash::FxHashMap;

use crate::config::BlockManagerConfig;
use crate::device::DevicePages;
use crate::error::BlockError;
use crate::free_list::NIL;
use crate::pool::BlockPool;
use crate::prefix_cache::{chain_hash, PageIdentity, PageLink, ROOT_HASH};
use crate::{BlockCopy, BlockHash, BlockId, KvEvent, Location, SeqId, TokenId};

/// The longest run of cached full pages for a prompt, as found by
/// [`BlockManager::lookup_prefix`]. Pass it to [`BlockManager::admit`]; it goes stale (and
/// `admit` refuses it) if any of its pages is evicted in between.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixHit {
    /// The cached pages, in order, each with the generation it had when found.
    pub blocks: Vec<PageLink>,
    /// Tokens whose K/V are already in those pages: `blocks.len() * block_size`, and always
    /// less than the prompt length (the last prompt token is computed for its logits).
    pub num_cached_tokens: usize,
    /// Length of the prompt that was looked up (counted as prefix-cache queries on admission).
    pub num_query_tokens: usize,
    pub extra_key: Option<u64>,
    last_hash: BlockHash,
    block_size: usize,
}

impl PrefixHit {
    /// No cached pages (prefix caching off, or nothing found).
    fn miss(num_query_tokens: usize, extra_key: Option<u64>, block_size: usize) -> Self {
        PrefixHit {
            blocks: Vec::new(),
            num_cached_tokens: 0,
            num_query_tokens,
            extra_key,
            last_hash: ROOT_HASH,
            block_size,
        }
    }
}

/// What an allocation did, beyond growing the block table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Allocation {
    /// Pages newly taken from the free list (not counting revived prefix-cache pages).
    pub new_blocks: usize,
    /// A copy-on-write order: the sequence's last page was shared and partly filled, so it now
    /// writes into `dst`, which must first receive a copy of `src`.
    pub cow: Option<BlockCopy>,
}

#[derive(Debug, Clone)]
pub(crate) struct SeqState {
    pub blocks: Vec<BlockId>,
    /// Token slots the sequence holds (its logical length in the cache).
    pub num_tokens: usize,
    /// Leading full pages already processed by `cache_full_blocks`.
    pub num_hashed_blocks: usize,
    /// Link to the canonical cached page for the last hashed page (the parent of the next).
    pub last_link: PageLink,
    pub last_hash: BlockHash,
    pub extra_key: Option<u64>,
    pub location: Location,
    /// `blocks.last()` kept inline, so the per-step fast path does not touch the table.
    pub tail: BlockId,
    /// False when the last page is certainly held by this sequence alone (true after a fork
    /// or swap-in until the next append checks the real reference count).
    pub tail_maybe_shared: bool,
}

impl SeqState {
    pub(crate) fn sync_tail(&mut self) {
        self.tail = self.blocks.last().copied().unwrap_or(NIL);
    }
}

/// Page accounting for one KV cache (see the crate docs).
#[derive(Debug, Clone)]
pub struct BlockManager {
    pub(crate) cfg: BlockManagerConfig,
    pub(crate) dev: DevicePages,
    pub(crate) host: BlockPool,
    /// For each host page, the cached device page it was copied from (if that page was a
    /// prefix-cache page), so that swap-in can revive it instead of copying.
    pub(crate) host_origin: Vec<Option<PageLink>>,
    pub(crate) seqs: FxHashMap<SeqId, SeqState>,
    pub(crate) watermark_blocks: usize,
    pub(crate) logical_tokens: usize,
    pub(crate) host_logical_tokens: usize,
    pub(crate) prefix_queries: u64,
    pub(crate) prefix_hits: u64,
}

/// Whether `tokens` ends inside a page (the last page is partly filled).
#[inline]
pub(crate) fn ends_mid_page(tokens: usize, block_size: usize) -> bool {
    tokens & (block_size - 1) != 0
}

#[inline]
pub(crate) fn blocks_for(tokens: usize, block_size: usize) -> usize {
    // Block sizes are powers of two: shift instead of dividing (this is on the per-step path).
    (tokens + block_size - 1) >> block_size.trailing_zeros()
}

impl BlockManager {
    pub fn new(cfg: BlockManagerConfig) -> Result<Self, BlockError> {
        cfg.validate()?;
        Ok(BlockManager {
            dev: DevicePages::new(cfg.num_device_blocks, cfg.block_size)?,
            host: BlockPool::new(cfg.num_host_blocks, cfg.block_size)?,
            host_origin: vec![None; cfg.num_host_blocks],
            seqs: FxHashMap::default(),
            watermark_blocks: (cfg.watermark * cfg.num_device_blocks as f64) as usize,
            logical_tokens: 0,
            host_logical_tokens: 0,
            prefix_queries: 0,
            prefix_hits: 0,
            cfg,
        })
    }

    pub fn config(&self) -> &BlockManagerConfig {
        &self.cfg
    }

    pub fn block_size(&self) -> usize {
        self.cfg.block_size
    }

    pub fn num_free_blocks(&self) -> usize {
        self.dev.pool.num_free()
    }

    pub fn num_free_host_blocks(&self) -> usize {
        self.host.num_free()
    }

    /// Pages admission leaves free for running sequences.
    pub fn watermark_blocks(&self) -> usize {
        self.watermark_blocks
    }

    pub fn contains(&self, seq: SeqId) -> bool {
        self.seqs.contains_key(&seq)
    }

    pub fn num_sequences(&self) -> usize {
        self.seqs.len()
    }

    fn state(&self, seq: SeqId) -> Result<&SeqState, BlockError> {
        self.seqs.get(&seq).ok_or(BlockError::UnknownSequence(seq))
    }

    /// The sequence's pages in logical order (device or host pages, see [`Self::location`]).
    pub fn block_table(&self, seq: SeqId) -> Result<&[BlockId], BlockError> {
        Ok(&self.state(seq)?.blocks)
    }

    /// Token slots the sequence holds.
    pub fn num_tokens(&self, seq: SeqId) -> Result<usize, BlockError> {
        Ok(self.state(seq)?.num_tokens)
    }

    pub fn location(&self, seq: SeqId) -> Result<Location, BlockError> {
        Ok(self.state(seq)?.location)
    }

    /// Reference count of a device page (tables pointing at it).
    pub fn ref_count(&self, b: BlockId) -> u32 {
        self.dev.pool.ref_count(b)
    }

    /// Reference count of a host page.
    pub fn host_ref_count(&self, b: BlockId) -> u32 {
        self.host.ref_count(b)
    }

    /// Token ids stored for a cached device page, or `None` if it has no prefix-cache entry.
    pub fn cached_tokens(&self, b: BlockId) -> Option<&[TokenId]> {
        self.dev
            .prefix
            .identity(b)
            .map(|_| self.dev.prefix.stored_tokens(b))
    }

    fn device_state(&self, seq: SeqId) -> Result<&SeqState, BlockError> {
        let st = self.state(seq)?;
        match st.location {
            Location::Device => Ok(st),
            Location::Host => Err(BlockError::SequenceSwappedOut(seq)),
        }
    }

    /// The longest run of verified cached full pages that starts `tokens`. Never covers the
    /// last token. Pure: counters move only when the hit is used by [`Self::admit`].
    pub fn lookup_prefix(&self, tokens: &[TokenId], extra_key: Option<u64>) -> PrefixHit {
        let bs = self.cfg.block_size;
        let mut hit = PrefixHit::miss(tokens.len(), extra_key, bs);
        if !self.cfg.enable_prefix_caching {
            return hit;
        }
        let max_blocks = tokens.len().saturating_sub(1) / bs;
        let mut parent = PageLink::ROOT;
        for page in tokens.chunks_exact(bs).take(max_blocks) {
            let h = chain_hash(hit.last_hash, page, extra_key);
            match self.dev.prefix.find(h, parent, extra_key, page) {
                Some(b) => {
                    parent = self.dev.prefix.link(b);
                    hit.blocks.push(parent);
                    hit.last_hash = h;
                }
                None => break,
            }
        }
        hit.num_cached_tokens = hit.blocks.len() * bs;
        hit
    }

    /// Free pages `admit(hit, num_new_tokens)` would still need, watermark included
    /// (0 = it would succeed).
    pub fn admit_shortfall(&self, hit: &PrefixHit, num_new_tokens: usize) -> usize {
        let (needed, _) = self.admit_need(hit, num_new_tokens);
        (needed + self.watermark_blocks).saturating_sub(self.num_free_blocks())
    }

    /// (pages to take off the free list, of which revived cached pages).
    fn admit_need(&self, hit: &PrefixHit, num_new_tokens: usize) -> (usize, usize) {
        let total = blocks_for(hit.num_cached_tokens + num_new_tokens, self.cfg.block_size);
        let fresh = total.saturating_sub(hit.blocks.len());
        let revived = hit
            .blocks
            .iter()
            .filter(|l| self.dev.pool.ref_count(l.block) == 0)
            .count();
        (fresh + revived, revived)
    }

    fn check_hit(&self, hit: &PrefixHit) -> Result<(), BlockError> {
        if hit.block_size != self.cfg.block_size
            || hit.num_cached_tokens != hit.blocks.len() * hit.block_size
        {
            return Err(BlockError::ForeignPrefixHit("block size does not match"));
        }
        for l in &hit.blocks {
            if l.block as usize >= self.cfg.num_device_blocks {
                return Err(BlockError::ForeignPrefixHit("page id out of range"));
            }
            if self.dev.prefix.generation(l.block) != l.generation
                || self.dev.prefix.identity(l.block).is_none()
            {
                return Err(BlockError::StalePrefixHit(l.block));
            }
        }
        Ok(())
    }

    /// Registers a new sequence holding the hit's cached pages plus slots for
    /// `num_new_tokens` more tokens. All or nothing; leaves the watermark free.
    pub fn admit(
        &mut self,
        seq: SeqId,
        hit: &PrefixHit,
        num_new_tokens: usize,
    ) -> Result<Allocation, BlockError> {
        if self.seqs.contains_key(&seq) {
            return Err(BlockError::SequenceExists(seq));
        }
        self.check_hit(hit)?;
        let (needed, revived) = self.admit_need(hit, num_new_tokens);
        let free = self.num_free_blocks();
        if needed + self.watermark_blocks > free {
            return Err(BlockError::OutOfBlocks {
                needed: needed + self.watermark_blocks,
                free,
                missing: needed + self.watermark_blocks - free,
            });
        }
        let bs = self.cfg.block_size;
        let num_tokens = hit.num_cached_tokens + num_new_tokens;
        let mut blocks = Vec::with_capacity(blocks_for(num_tokens, bs).max(4));
        // Revive the hit pages before allocating, so allocation cannot evict them.
        for l in &hit.blocks {
            self.dev.retain(l.block);
            blocks.push(l.block);
        }
        let fresh = needed - revived;
        for _ in 0..fresh {
            let b = self.dev.allocate().expect("free pages were counted above");
            blocks.push(b);
        }
        let mut st = SeqState {
            blocks,
            num_tokens: hit.num_cached_tokens,
            num_hashed_blocks: hit.blocks.len(),
            last_link: hit.blocks.last().copied().unwrap_or(PageLink::ROOT),
            last_hash: hit.last_hash,
            extra_key: hit.extra_key,
            location: Location::Device,
            tail: NIL,
            tail_maybe_shared: false,
        };
        st.sync_tail();
        grow_fill(&mut self.dev, &mut st, num_tokens, bs);
        self.logical_tokens += num_tokens;
        if self.cfg.enable_prefix_caching {
            self.prefix_queries += hit.num_query_tokens as u64;
            self.prefix_hits += hit.num_cached_tokens as u64;
        }
        self.seqs.insert(seq, st);
        Ok(Allocation {
            new_blocks: fresh,
            cow: None,
        })
    }

    /// Free pages `allocate_slots(seq, n)` would still need (0 = it would succeed).
    pub fn append_shortfall(&self, seq: SeqId, num_new_tokens: usize) -> Result<usize, BlockError> {
        let st = self.device_state(seq)?;
        let needed = append_need(st, &self.dev, num_new_tokens, self.cfg.block_size);
        Ok(needed.saturating_sub(self.num_free_blocks()))
    }

    /// Gives a running sequence slots for `num_new_tokens` more tokens. All or nothing (no
    /// watermark: running sequences may use it). If the last page is shared and partly filled
    /// it is copied first (copy-on-write), so no shared page is ever written.
    pub fn allocate_slots(
        &mut self,
        seq: SeqId,
        num_new_tokens: usize,
    ) -> Result<Allocation, BlockError> {
        // One map lookup: this runs for every running sequence in every step.
        let st = self
            .seqs
            .get_mut(&seq)
            .ok_or(BlockError::UnknownSequence(seq))?;
        if st.location != Location::Device {
            return Err(BlockError::SequenceSwappedOut(seq));
        }
        let bs = self.cfg.block_size;
        // Fast path (most decode steps): the tokens fit in the exclusively held last page.
        let room = (bs - (st.num_tokens & (bs - 1))) & (bs - 1);
        if num_new_tokens <= room && !st.tail_maybe_shared {
            let new_total = st.num_tokens + num_new_tokens;
            let fill = new_total - ((new_total - 1) & !(bs - 1));
            self.dev.pool.set_fill(st.tail, fill as u32);
            self.dev.filled_slots += num_new_tokens;
            self.logical_tokens += num_new_tokens;
            st.num_tokens = new_total;
            return Ok(Allocation::default());
        }
        let needed = append_need(st, &self.dev, num_new_tokens, bs);
        let free = self.dev.pool.num_free();
        if needed > free {
            return Err(BlockError::OutOfBlocks {
                needed,
                free,
                missing: needed - free,
            });
        }
        let mut out = Allocation::default();
        if num_new_tokens == 0 {
            return Ok(out);
        }
        if ends_mid_page(st.num_tokens, bs) {
            let last = st.blocks.len() - 1;
            let src = st.blocks[last];
            if self.dev.pool.ref_count(src) > 1 {
                let dst = self.dev.allocate().expect("counted above");
                let fill = self.dev.pool.fill(src);
                self.dev.set_fill(dst, fill);
                self.dev.release(src)?;
                st.blocks[last] = dst;
                out.cow = Some(BlockCopy { src, dst });
            }
        }
        let target = blocks_for(st.num_tokens + num_new_tokens, bs);
        while st.blocks.len() < target {
            let b = self.dev.allocate().expect("counted above");
            st.blocks.push(b);
            out.new_blocks += 1;
        }
        let new_total = st.num_tokens + num_new_tokens;
        grow_fill(&mut self.dev, st, new_total, bs);
        st.sync_tail();
        // The last page is now fresh, copied, or was found unshared.
        st.tail_maybe_shared = false;
        self.logical_tokens += num_new_tokens;
        Ok(out)
    }

    /// Records that the K/V of `tokens` (the sequence's tokens from position 0) are now in its
    /// pages, and gives every newly full page a prefix-cache identity. Call it after the
    /// forward pass that wrote them. Partial pages are never cached.
    pub fn cache_full_blocks(&mut self, seq: SeqId, tokens: &[TokenId]) -> Result<(), BlockError> {
        let st = self.device_state(seq)?;
        if tokens.len() > st.num_tokens {
            return Err(BlockError::TooManyTokens {
                seq,
                given: tokens.len(),
                held: st.num_tokens,
            });
        }
        if !self.cfg.enable_prefix_caching {
            return Ok(());
        }
        let bs = self.cfg.block_size;
        let st = self.seqs.get_mut(&seq).expect("checked above");
        let full = tokens.len() / bs;
        for i in st.num_hashed_blocks..full {
            let page = &tokens[i * bs..(i + 1) * bs];
            let h = chain_hash(st.last_hash, page, st.extra_key);
            let b = st.blocks[i];
            let prefix = &mut self.dev.prefix;
            let canonical = if prefix.identity(b).is_some() {
                // Shared with a sequence that cached it first (fork).
                b
            } else if let Some(twin) = prefix.find(h, st.last_link, st.extra_key, page) {
                // Same content computed twice (two sequences prefilled it at once): children
                // link to the page that is findable.
                twin
            } else if !prefix.is_current(st.last_link) || prefix.hash_taken(h) {
                // Its parent lost its identity (evicted, or the cache was reset), so no lookup
                // could reach this page; or a true hash collision. Leave it uncached.
                b
            } else {
                let id = PageIdentity {
                    hash: h,
                    parent: st.last_link,
                    extra_key: st.extra_key,
                };
                prefix.insert(b, id, page);
                self.dev.pool.set_cached(b, true);
                // A router hashes token ids only: salted pages are not announced.
                if st.extra_key.is_none() {
                    let parent = (i > 0).then_some((st.last_link.block, st.last_hash));
                    self.dev.events.stored(b, h, parent, page);
                }
                b
            };
            st.last_link = self.dev.prefix.link(canonical);
            st.last_hash = h;
            st.num_hashed_blocks = i + 1;
        }
        Ok(())
    }

    /// A new sequence `child` sharing every page of `parent` (parallel sampling, beam search).
    /// No page is copied now; the first write into a shared partial page copies it.
    pub fn fork(&mut self, parent: SeqId, child: SeqId) -> Result<(), BlockError> {
        if self.seqs.contains_key(&child) {
            return Err(BlockError::SequenceExists(child));
        }
        let mut st = self.device_state(parent)?.clone();
        for &b in &st.blocks {
            self.dev.retain(b);
        }
        st.tail_maybe_shared = true;
        if let Some(p) = self.seqs.get_mut(&parent) {
            p.tail_maybe_shared = true;
        }
        self.logical_tokens += st.num_tokens;
        self.seqs.insert(child, st);
        Ok(())
    }

    /// Drops a sequence (finished, aborted or preempted by recompute) and releases its pages,
    /// last page first so that the tail of a prompt is evicted before its shareable head.
    /// Full cached pages stay findable until they are reused.
    pub fn free(&mut self, seq: SeqId) -> Result<(), BlockError> {
        let st = self
            .seqs
            .remove(&seq)
            .ok_or(BlockError::UnknownSequence(seq))?;
        match st.location {
            Location::Device => {
                for &b in st.blocks.iter().rev() {
                    self.dev.release(b)?;
                }
                self.logical_tokens -= st.num_tokens;
            }
            Location::Host => {
                for &b in st.blocks.iter().rev() {
                    self.host.release(b)?;
                }
                self.host_logical_tokens -= st.num_tokens;
            }
        }
        Ok(())
    }

    /// Forgets every prefix-cache entry (used pages keep their content, they just stop being
    /// findable). Returns how many entries were dropped. Sequences keep running; pages they
    /// fill later are cached again, chained to the forgotten ones and so not findable.
    pub fn reset_prefix_cache(&mut self) -> usize {
        let cached: Vec<BlockId> = self.dev.prefix.entries().map(|(_, b)| b).collect();
        // One "all cleared" says it: no removal per page.
        self.dev.events.cleared();
        for &b in &cached {
            self.dev.forget(b);
        }
        cached.len()
    }

    /// Turns the recording of [`KvEvent`]s on or off (off when made). While on, the owner
    /// must drain them with [`Self::take_events`] (the engine does after every step), or they
    /// accumulate.
    pub fn record_events(&mut self, on: bool) {
        self.dev.events.set_on(on);
    }

    pub fn records_events(&self) -> bool {
        self.dev.events.is_on()
    }

    /// The events recorded since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<KvEvent> {
        self.dev.events.take()
    }
}

/// Raises the fill of a sequence's pages to cover `new_total` tokens (only its last partial
/// page and fresh pages change: shared pages are full or were just copied). The old fill of
/// each page follows from the old token count, so no page is read.
fn grow_fill(dev: &mut DevicePages, st: &mut SeqState, new_total: usize, bs: usize) {
    let shift = bs.trailing_zeros();
    let old_total = st.num_tokens;
    for i in (old_total >> shift)..blocks_for(new_total, bs) {
        let start = i << shift;
        let old = old_total.saturating_sub(start).min(bs);
        let new = (new_total - start).min(bs);
        dev.pool.set_fill(st.blocks[i], new as u32);
        dev.filled_slots += new - old;
    }
    st.num_tokens = new_total;
}

/// Pages an append of `n` tokens takes off the free list: fresh pages plus one copy-on-write
/// page when the partly filled last page is shared.
fn append_need(st: &SeqState, dev: &DevicePages, n: usize, bs: usize) -> usize {
    if n == 0 {
        return 0;
    }
    let fresh = blocks_for(st.num_tokens + n, bs) - st.blocks.len();
    let cow = match st.blocks.last() {
        Some(&last) if ends_mid_page(st.num_tokens, bs) => dev.pool.ref_count(last) > 1,
        _ => false,
    };
    fresh + cow as usize
}
