//! KV-cache events: which full pages became findable in the prefix cache and which stopped
//! being findable, recorded so that a router outside the process can know what this cache
//! holds (vLLM's `BlockStored` / `BlockRemoved` / `AllBlocksCleared`).
//!
//! The block manager only records them, in order, into a buffer its owner drains after every
//! step ([`crate::BlockManager::take_events`]); it never sends anything. Recording is off
//! until [`crate::BlockManager::record_events`] turns it on, so the simulator and a server
//! without subscribers pay nothing.
//!
//! What is published is exactly what [`crate::BlockManager::lookup_prefix`] can find:
//! - a page is *stored* when it gets a prefix-cache identity (only pages whose parent is
//!   current get one, so its whole chain from the sequence's first page is findable) and its
//!   parent was announced;
//! - pages cached under an extra key (a cache salt) are never announced: a router hashes
//!   token ids only and would credit requests of another salt with them;
//! - a page announced as stored is *removed* when it loses its identity: evicted for reuse,
//!   or cached on top of a page that was;
//! - resetting the prefix cache is one *all cleared*.

use crate::{BlockHash, BlockId, TokenId};

/// One change to the set of findable cached pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvEvent {
    /// A chain of full pages became findable: `hashes[i]` holds
    /// `tokens[i * block_size..(i + 1) * block_size]`, `hashes[i]`'s parent is
    /// `hashes[i - 1]`, and the first page's parent is `parent` (`None`: it starts a
    /// sequence).
    Stored {
        hashes: Vec<BlockHash>,
        parent: Option<BlockHash>,
        tokens: Vec<TokenId>,
    },
    /// Pages announced as stored are no longer findable.
    Removed { hashes: Vec<BlockHash> },
    /// Every cached page stopped being findable.
    AllCleared,
}

/// The recorded events and which pages were announced as stored (only those are announced
/// as removed).
#[derive(Debug, Clone, Default)]
pub(crate) struct EventLog {
    on: bool,
    events: Vec<KvEvent>,
    announced: Vec<bool>,
}

impl EventLog {
    pub(crate) fn new(num_blocks: usize) -> Self {
        EventLog {
            on: false,
            events: Vec::new(),
            announced: vec![false; num_blocks],
        }
    }

    pub(crate) fn set_on(&mut self, on: bool) {
        self.on = on;
    }

    pub(crate) fn is_on(&self) -> bool {
        self.on
    }

    pub(crate) fn take(&mut self) -> Vec<KvEvent> {
        std::mem::take(&mut self.events)
    }

    /// Page `b` (hash `hash`, holding `tokens`) became findable on top of page `parent` (its
    /// id and hash; `None` for a sequence's first page). Announced only if the parent was, so
    /// that a subscriber can chain it. Extends the last event when it is a store ending in
    /// `parent`, so a prompt's pages stored in one step make one event.
    pub(crate) fn stored(
        &mut self,
        b: BlockId,
        hash: BlockHash,
        parent: Option<(BlockId, BlockHash)>,
        tokens: &[TokenId],
    ) {
        if !self.on || parent.is_some_and(|(p, _)| !self.announced[p as usize]) {
            return;
        }
        let parent = parent.map(|(_, h)| h);
        self.announced[b as usize] = true;
        if let (
            Some(p),
            Some(KvEvent::Stored {
                hashes, tokens: t, ..
            }),
        ) = (parent, self.events.last_mut())
        {
            if hashes.last() == Some(&p) {
                hashes.push(hash);
                t.extend_from_slice(tokens);
                return;
            }
        }
        self.events.push(KvEvent::Stored {
            hashes: vec![hash],
            parent,
            tokens: tokens.to_vec(),
        });
    }

    /// Page `b`, which had hash `hash`, lost its identity.
    pub(crate) fn forgotten(&mut self, b: BlockId, hash: BlockHash) {
        if !std::mem::take(&mut self.announced[b as usize]) {
            return;
        }
        if let Some(KvEvent::Removed { hashes }) = self.events.last_mut() {
            hashes.push(hash);
        } else {
            self.events.push(KvEvent::Removed { hashes: vec![hash] });
        }
    }

    /// The whole prefix cache was forgotten.
    pub(crate) fn cleared(&mut self) {
        let any = self.announced.iter().any(|&a| a);
        self.announced.iter_mut().for_each(|a| *a = false);
        if self.on && any {
            self.events.push(KvEvent::AllCleared);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_pages_of_one_chain_make_one_store_and_removals_coalesce() {
        let mut log = EventLog::new(8);
        log.stored(0, 10, None, &[1, 2]);
        assert!(log.take().is_empty(), "recording is off by default");
        log.set_on(true);
        log.stored(1, 10, None, &[1, 2]);
        log.stored(2, 11, Some((1, 10)), &[3, 4]);
        log.stored(4, 99, None, &[7, 8]);
        log.stored(3, 20, Some((4, 99)), &[5, 6]);
        log.stored(6, 30, Some((0, 10)), &[5, 6]); // parent 0 never announced: nor is 6
        log.forgotten(1, 10);
        log.forgotten(5, 55); // never announced: nothing to remove
        log.forgotten(2, 11);
        let want = vec![
            KvEvent::Stored {
                hashes: vec![10, 11],
                parent: None,
                tokens: vec![1, 2, 3, 4],
            },
            KvEvent::Stored {
                hashes: vec![99, 20],
                parent: None,
                tokens: vec![7, 8, 5, 6],
            },
            KvEvent::Removed {
                hashes: vec![10, 11],
            },
        ];
        assert_eq!(log.take(), want);
        log.forgotten(2, 11);
        assert!(log.take().is_empty(), "a page is removed once");
        log.cleared();
        assert_eq!(log.take(), vec![KvEvent::AllCleared]);
        log.cleared();
        assert!(log.take().is_empty(), "nothing announced: nothing to clear");
    }
}
