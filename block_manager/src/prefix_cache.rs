//! Prefix caching: content identities of full pages and the hash map that finds them.
//!
//! A full page's identity is a chained hash of (the previous page's hash, its token ids, an
//! optional extra key such as a cache salt). The hash only *finds* a candidate; a hit is then
//! verified against what the page really holds: its stored token ids, its extra key, and a link
//! to the exact page (id and generation) that preceded it when it was written. Because the link
//! is checked level by level from the first page, a 64-bit hash collision can cost a hit but
//! can never hand out K/V computed for other tokens.
//!
//! A page's generation increases every time it loses its identity (evicted for reuse, or the
//! cache reset), so links to the old content stop matching. The pages cached on top of it
//! could then never be found again: they lose their identities with it (each page keeps the
//! list of its cached children), so every page with an identity is reachable from a
//! sequence's first page, and its hash is free for the same content computed again.

use rustc_hash::FxHashMap;
use xxhash_rust::xxh3::Xxh3;

use crate::free_list::NIL;
use crate::{BlockHash, BlockId, TokenId};

/// The exact page (and its generation) a cached page was computed on top of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PageLink {
    pub block: BlockId,
    pub generation: u32,
}

impl PageLink {
    /// The link of a sequence's first page: nothing precedes it.
    pub const ROOT: PageLink = PageLink {
        block: NIL,
        generation: 0,
    };
}

/// Hash value chained into a sequence's first page.
pub const ROOT_HASH: BlockHash = 0x243f_6a88_85a3_08d3;

/// The identity of a cached page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PageIdentity {
    pub hash: BlockHash,
    pub parent: PageLink,
    pub extra_key: Option<u64>,
}

/// The chained hash of one full page.
pub fn chain_hash(parent: BlockHash, tokens: &[TokenId], extra_key: Option<u64>) -> BlockHash {
    let mut h = Xxh3::new();
    h.update(&parent.to_le_bytes());
    match extra_key {
        Some(k) => {
            h.update(&[1]);
            h.update(&k.to_le_bytes());
        }
        None => h.update(&[0]),
    }
    // Hash the tokens through a stack buffer: one `update` per page, no allocation.
    let mut buf = [0u8; 256];
    for chunk in tokens.chunks(64) {
        for (i, t) in chunk.iter().enumerate() {
            buf[4 * i..4 * i + 4].copy_from_slice(&t.to_le_bytes());
        }
        h.update(&buf[..4 * chunk.len()]);
    }
    h.digest()
}

#[derive(Debug, Clone)]
pub(crate) struct PrefixCache {
    block_size: usize,
    map: FxHashMap<BlockHash, BlockId>,
    identity: Vec<Option<PageIdentity>>,
    generation: Vec<u32>,
    /// Token ids of every cached page, `block_size` per page, for hit verification.
    tokens: Vec<TokenId>,
    /// The cached pages whose parent is this page: an intrusive doubly linked list per page.
    first_child: Vec<BlockId>,
    next_sibling: Vec<BlockId>,
    prev_sibling: Vec<BlockId>,
    /// The work list of [`Self::forget`], kept so that evictions do not allocate.
    scratch: Vec<BlockId>,
}

impl PrefixCache {
    pub(crate) fn new(num_blocks: usize, block_size: usize) -> Self {
        PrefixCache {
            block_size,
            map: FxHashMap::default(),
            identity: vec![None; num_blocks],
            generation: vec![0; num_blocks],
            tokens: vec![0; num_blocks * block_size],
            first_child: vec![NIL; num_blocks],
            next_sibling: vec![NIL; num_blocks],
            prev_sibling: vec![NIL; num_blocks],
            scratch: Vec::new(),
        }
    }

    /// Whether `link` names a page that holds, now, the identity it had when linked (or is the
    /// root): what a new page must be computed on top of to be findable.
    pub(crate) fn is_current(&self, link: PageLink) -> bool {
        link == PageLink::ROOT
            || (self.identity(link.block).is_some() && self.link(link.block) == link)
    }

    pub(crate) fn link(&self, b: BlockId) -> PageLink {
        PageLink {
            block: b,
            generation: self.generation[b as usize],
        }
    }

    pub(crate) fn generation(&self, b: BlockId) -> u32 {
        self.generation[b as usize]
    }

    pub(crate) fn identity(&self, b: BlockId) -> Option<&PageIdentity> {
        self.identity[b as usize].as_ref()
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = (BlockHash, BlockId)> + '_ {
        self.map.iter().map(|(&h, &b)| (h, b))
    }

    pub(crate) fn stored_tokens(&self, b: BlockId) -> &[TokenId] {
        let s = b as usize * self.block_size;
        &self.tokens[s..s + self.block_size]
    }

    /// Whether page `b` holds exactly this content on top of exactly this parent.
    pub(crate) fn matches(
        &self,
        b: BlockId,
        hash: BlockHash,
        parent: PageLink,
        extra_key: Option<u64>,
        tokens: &[TokenId],
    ) -> bool {
        match self.identity(b) {
            Some(id) => {
                id.hash == hash
                    && id.parent == parent
                    && id.extra_key == extra_key
                    && self.stored_tokens(b) == tokens
            }
            None => false,
        }
    }

    /// The verified cached page for this content, if any.
    pub(crate) fn find(
        &self,
        hash: BlockHash,
        parent: PageLink,
        extra_key: Option<u64>,
        tokens: &[TokenId],
    ) -> Option<BlockId> {
        let &b = self.map.get(&hash)?;
        self.matches(b, hash, parent, extra_key, tokens)
            .then_some(b)
    }

    /// Whether some page is registered under `hash` (verified or not).
    pub(crate) fn hash_taken(&self, hash: BlockHash) -> bool {
        self.map.contains_key(&hash)
    }

    /// Gives page `b` an identity and makes it findable. The hash must not be taken and the
    /// parent must be current ([`Self::is_current`]).
    pub(crate) fn insert(&mut self, b: BlockId, id: PageIdentity, tokens: &[TokenId]) {
        debug_assert!(!self.map.contains_key(&id.hash));
        debug_assert!(self.is_current(id.parent));
        let s = b as usize * self.block_size;
        self.tokens[s..s + self.block_size].copy_from_slice(tokens);
        self.map.insert(id.hash, b);
        if id.parent != PageLink::ROOT {
            let p = id.parent.block as usize;
            let first = self.first_child[p];
            self.next_sibling[b as usize] = first;
            self.prev_sibling[b as usize] = NIL;
            if first != NIL {
                self.prev_sibling[first as usize] = b;
            }
            self.first_child[p] = b;
        }
        self.identity[b as usize] = Some(id);
    }

    /// Removes page `b`'s identity (it is being reused or the cache is reset) and those of
    /// the pages cached on top of it, which no lookup could reach any more. Returns each
    /// page that lost its identity, with the hash it had, to `gone` (`b` first; nothing if
    /// `b` had none).
    pub(crate) fn forget(&mut self, b: BlockId, mut gone: impl FnMut(BlockId, BlockHash)) {
        let mut stack = std::mem::take(&mut self.scratch);
        stack.push(b);
        while let Some(x) = stack.pop() {
            let Some(id) = self.identity[x as usize].take() else {
                continue;
            };
            if self.map.get(&id.hash) == Some(&x) {
                self.map.remove(&id.hash);
            }
            self.generation[x as usize] = self.generation[x as usize].wrapping_add(1);
            self.unlink(x, id.parent);
            let mut c = self.first_child[x as usize];
            while c != NIL {
                stack.push(c);
                c = self.next_sibling[c as usize];
            }
            gone(x, id.hash);
        }
        self.scratch = stack;
    }

    /// Takes `b` out of its parent's list of children.
    fn unlink(&mut self, b: BlockId, parent: PageLink) {
        if parent == PageLink::ROOT {
            return;
        }
        let (prev, next) = (self.prev_sibling[b as usize], self.next_sibling[b as usize]);
        if prev == NIL {
            self.first_child[parent.block as usize] = next;
        } else {
            self.next_sibling[prev as usize] = next;
        }
        if next != NIL {
            self.prev_sibling[next as usize] = prev;
        }
        self.prev_sibling[b as usize] = NIL;
        self.next_sibling[b as usize] = NIL;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_hash_depends_on_parent_tokens_and_extra_key() {
        let t = [1, 2, 3, 4];
        let h = chain_hash(ROOT_HASH, &t, None);
        assert_eq!(h, chain_hash(ROOT_HASH, &t, None));
        assert_ne!(h, chain_hash(ROOT_HASH + 1, &t, None));
        assert_ne!(h, chain_hash(ROOT_HASH, &[1, 2, 3, 5], None));
        assert_ne!(h, chain_hash(ROOT_HASH, &t, Some(0)));
        assert_ne!(
            chain_hash(ROOT_HASH, &t, Some(1)),
            chain_hash(ROOT_HASH, &t, Some(2))
        );
        // Long pages hash through several buffer chunks.
        let long: Vec<u32> = (0..256).collect();
        let mut other = long.clone();
        other[200] = 7;
        assert_ne!(
            chain_hash(ROOT_HASH, &long, None),
            chain_hash(ROOT_HASH, &other, None)
        );
    }

    #[test]
    fn find_verifies_tokens_parent_and_key_not_just_the_hash() {
        let mut c = PrefixCache::new(4, 2);
        let id = PageIdentity {
            hash: 42,
            parent: PageLink::ROOT,
            extra_key: None,
        };
        c.insert(1, id, &[7, 8]);
        assert_eq!(c.find(42, PageLink::ROOT, None, &[7, 8]), Some(1));
        // Same hash (a forced collision), other content: no hit.
        assert_eq!(c.find(42, PageLink::ROOT, None, &[7, 9]), None);
        assert_eq!(c.find(42, PageLink::ROOT, Some(3), &[7, 8]), None);
        let other_parent = PageLink {
            block: 0,
            generation: 0,
        };
        assert_eq!(c.find(42, other_parent, None, &[7, 8]), None);
        c.forget(1, |_, _| {});
        assert_eq!(c.find(42, PageLink::ROOT, None, &[7, 8]), None);
        assert_eq!(c.generation(1), 1);
    }
}
