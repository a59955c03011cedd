//! KV-cache events against an independent reference: a subscriber that knows only the events
//! (as a router does) must find, for every prompt, exactly the cached pages the block
//! manager's own lookup finds.

use std::collections::{HashMap, HashSet};

use block_manager::{chain_hash, BlockHash, BlockManager, BlockManagerConfig, KvEvent, ROOT_HASH};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What a subscriber knows: the announced pages still findable, with their parents.
#[derive(Default)]
struct Subscriber {
    live: HashMap<BlockHash, Option<BlockHash>>,
    /// Events seen: stored, removed, all cleared.
    seen: [usize; 3],
}

impl Subscriber {
    fn apply(&mut self, events: Vec<KvEvent>, block_size: usize) {
        for e in events {
            match e {
                KvEvent::Stored {
                    hashes,
                    parent,
                    tokens,
                } => {
                    self.seen[0] += 1;
                    assert_eq!(tokens.len(), hashes.len() * block_size);
                    if let Some(p) = parent {
                        assert!(self.live.contains_key(&p), "parent {p} was never announced");
                    }
                    let mut prev = parent;
                    for (i, h) in hashes.into_iter().enumerate() {
                        // The hash is the page's chained hash of exactly these tokens.
                        let page = &tokens[i * block_size..(i + 1) * block_size];
                        assert_eq!(h, chain_hash(prev.unwrap_or(ROOT_HASH), page, None));
                        assert!(self.live.insert(h, prev).is_none(), "{h} stored twice");
                        prev = Some(h);
                    }
                }
                KvEvent::Removed { hashes } => {
                    self.seen[1] += 1;
                    for h in hashes {
                        assert!(self.live.remove(&h).is_some(), "{h} removed unannounced");
                    }
                }
                KvEvent::AllCleared => {
                    self.seen[2] += 1;
                    self.live.clear();
                }
            }
        }
    }

    /// Leading full pages of `prompt` the subscriber believes are cached (never the last
    /// token, as the engine recomputes it).
    fn cached_pages(&self, prompt: &[u32], block_size: usize) -> usize {
        let mut parent = ROOT_HASH;
        let max = (prompt.len() - 1) / block_size;
        let mut n = 0;
        for page in prompt.chunks_exact(block_size).take(max) {
            let h = chain_hash(parent, page, None);
            if !self.live.contains_key(&h) {
                break;
            }
            parent = h;
            n += 1;
        }
        n
    }
}

#[test]
fn a_subscriber_of_the_events_sees_exactly_what_lookup_finds() {
    let bs = 4;
    let mut rng = StdRng::seed_from_u64(7);
    // Prompts sharing prefixes: 3 roots, each with branches, so pages are shared and evicted.
    let prompts: Vec<Vec<u32>> = (0..24)
        .map(|i| {
            let root = (i % 3) as u32 * 1000;
            let branch = (i % 7) as u32;
            let len = 5 + (i * 7) % 23;
            (0..len as u32)
                .map(|t| {
                    if t < 9 {
                        root + t
                    } else {
                        root + branch * 100 + t
                    }
                })
                .collect()
        })
        .collect();
    let mut m = BlockManager::new(BlockManagerConfig::new(bs, 40).with_watermark(0.0)).unwrap();
    m.record_events(true);
    let mut sub = Subscriber::default();
    let mut running: Vec<(u64, usize)> = Vec::new();
    let mut salted = HashSet::new();
    let mut next = 0u64;
    for step in 0..4000 {
        match rng.random_range(0..10) {
            0..=4 => {
                let p = rng.random_range(0..prompts.len());
                let salt = (rng.random_range(0..8) == 0).then_some(5);
                let hit = m.lookup_prefix(&prompts[p], salt);
                let new = prompts[p].len() - hit.num_cached_tokens;
                if m.admit(next, &hit, new).is_ok() {
                    // Chunked prefill: the K/V of only part of the prompt is written now.
                    let done = rng.random_range(hit.num_cached_tokens..=prompts[p].len());
                    m.cache_full_blocks(next, &prompts[p][..done]).unwrap();
                    if salt.is_some() {
                        salted.insert(next);
                    }
                    running.push((next, p));
                }
                next += 1;
            }
            5 if !running.is_empty() => {
                // The rest of a prompt's prefill (perhaps after a reset of the cache).
                let (seq, p) = running[rng.random_range(0..running.len())];
                m.cache_full_blocks(seq, &prompts[p]).unwrap();
            }
            6..=8 if !running.is_empty() => {
                let (seq, _) = running.swap_remove(rng.random_range(0..running.len()));
                m.free(seq).unwrap();
            }
            _ => {}
        }
        if step % 300 == 299 {
            m.reset_prefix_cache();
        }
        sub.apply(m.take_events(), bs);
        m.check_invariants().unwrap();
        for p in &prompts {
            let want = m.lookup_prefix(p, None).blocks.len();
            assert_eq!(sub.cached_pages(p, bs), want, "step {step}: {p:?}");
        }
    }
    assert!(!salted.is_empty() && next > 1000);
    assert!(
        sub.seen.iter().all(|&n| n > 5),
        "every kind of event happened: {:?}",
        sub.seen
    );
}

#[test]
fn recording_is_off_until_turned_on_and_then_announces_what_a_subscriber_can_chain() {
    let mut m = BlockManager::new(BlockManagerConfig::new(4, 8)).unwrap();
    let prompt: Vec<u32> = (0..9).collect();
    let hit = m.lookup_prefix(&prompt, None);
    m.admit(1, &hit, 9).unwrap();
    m.cache_full_blocks(1, &prompt).unwrap();
    assert!(!m.records_events());
    assert!(m.take_events().is_empty());
    m.free(1).unwrap();
    m.record_events(true);
    // Pages cached before recording started are not announced, nor are pages on top of them
    // (a subscriber could not chain them to anything it knows).
    let mut longer = prompt.clone();
    longer.extend(9..13);
    let hit = m.lookup_prefix(&longer, None);
    assert_eq!(hit.num_cached_tokens, 8);
    m.admit(2, &hit, longer.len() - hit.num_cached_tokens)
        .unwrap();
    m.cache_full_blocks(2, &longer).unwrap();
    assert!(m.take_events().is_empty());
    // A new prompt's pages are, as one chain.
    let other: Vec<u32> = (100..109).collect();
    let hit = m.lookup_prefix(&other, None);
    m.admit(3, &hit, other.len()).unwrap();
    m.cache_full_blocks(3, &other).unwrap();
    let h0 = chain_hash(ROOT_HASH, &other[..4], None);
    let h1 = chain_hash(h0, &other[4..8], None);
    assert_eq!(
        m.take_events(),
        vec![KvEvent::Stored {
            hashes: vec![h0, h1],
            parent: None,
            tokens: other[..8].to_vec(),
        }]
    );
}
