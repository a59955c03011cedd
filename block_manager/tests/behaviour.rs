//! Behaviour of the block manager through its public API, one concern per test.

use block_manager::{BlockError, BlockManager, BlockManagerConfig, Location};

fn bm(block_size: usize, blocks: usize) -> BlockManager {
    BlockManager::new(BlockManagerConfig::new(block_size, blocks).with_watermark(0.0)).unwrap()
}

fn admit_prompt(m: &mut BlockManager, seq: u64, prompt: &[u32]) -> usize {
    let hit = m.lookup_prefix(prompt, None);
    let cached = hit.num_cached_tokens;
    m.admit(seq, &hit, prompt.len() - cached).unwrap();
    cached
}

fn ok(m: &BlockManager) {
    m.check_invariants().unwrap();
}

#[test]
fn block_size_must_be_a_power_of_two_up_to_256() {
    for bad in [0, 3, 24, 512] {
        let e = BlockManager::new(BlockManagerConfig::new(bad, 8)).unwrap_err();
        assert!(matches!(e, BlockError::InvalidConfig(_)), "{bad}");
    }
    for good in [1, 2, 16, 256] {
        BlockManager::new(BlockManagerConfig::new(good, 8)).unwrap();
    }
    let e = BlockManager::new(BlockManagerConfig::new(16, 8).with_watermark(1.5)).unwrap_err();
    assert!(matches!(e, BlockError::InvalidConfig(_)));
}

#[test]
fn allocate_slots_is_all_or_nothing_and_says_what_is_missing() {
    let mut m = bm(4, 4);
    admit_prompt(&mut m, 1, &[1, 2, 3, 4, 5]); // 2 pages
    let before = m.stats();
    let err = m.allocate_slots(1, 12).unwrap_err(); // needs 3 more, 2 free
    assert_eq!(
        err,
        BlockError::OutOfBlocks {
            needed: 3,
            free: 2,
            missing: 1
        }
    );
    assert_eq!(m.stats(), before);
    assert_eq!(m.num_tokens(1).unwrap(), 5);
    assert_eq!(m.append_shortfall(1, 12).unwrap(), 1);
    assert_eq!(m.append_shortfall(1, 11).unwrap(), 0);
    let a = m.allocate_slots(1, 11).unwrap();
    assert_eq!(a.new_blocks, 2);
    assert_eq!(a.cow, None);
    assert_eq!(m.num_free_blocks(), 0);
    // Filling the last page needs nothing.
    assert_eq!(m.num_tokens(1).unwrap(), 16);
    ok(&m);
}

#[test]
fn pages_of_a_freed_sequence_are_reused_tail_first() {
    let mut m = bm(2, 8);
    m.admit(1, &m.lookup_prefix(&[], None), 6).unwrap(); // pages 0 1 2
    assert_eq!(m.block_table(1).unwrap(), &[0, 1, 2]);
    m.free(1).unwrap();
    // Free list: 3 4 5 6 7 then 2 1 0 (reverse order). Take all 8.
    m.admit(2, &m.lookup_prefix(&[], None), 16).unwrap();
    assert_eq!(m.block_table(2).unwrap(), &[3, 4, 5, 6, 7, 2, 1, 0]);
    ok(&m);
}

#[test]
fn admission_keeps_the_watermark_but_running_sequences_may_use_it() {
    let cfg = BlockManagerConfig::new(4, 10).with_watermark(0.2); // 2 pages kept free
    let mut m = BlockManager::new(cfg).unwrap();
    assert_eq!(m.watermark_blocks(), 2);
    let hit = m.lookup_prefix(&[], None);
    assert_eq!(m.admit_shortfall(&hit, 36), 1);
    let err = m.admit(1, &hit, 36).unwrap_err(); // 9 pages, only 8 allowed
    assert!(matches!(err, BlockError::OutOfBlocks { missing: 1, .. }));
    assert!(!m.contains(1));
    m.admit(1, &hit, 32).unwrap(); // 8 pages
    m.allocate_slots(1, 8).unwrap(); // the running sequence takes the last 2
    assert_eq!(m.num_free_blocks(), 0);
    ok(&m);
}

#[test]
fn fork_shares_pages_and_copy_on_write_protects_the_shared_partial_page() {
    let mut m = bm(4, 8);
    admit_prompt(&mut m, 1, &[1, 2, 3, 4, 5, 6]); // pages: [full, 2/4]
    m.fork(1, 2).unwrap();
    let t1 = m.block_table(1).unwrap().to_vec();
    assert_eq!(m.block_table(2).unwrap(), t1.as_slice());
    assert!(t1.iter().all(|&b| m.ref_count(b) == 2));
    let s = m.stats();
    assert_eq!(
        (s.logical_tokens, s.filled_slots, s.shared_tokens()),
        (12, 6, 6)
    );

    // Parent appends into the shared partial page: it gets a copy.
    let a = m.allocate_slots(1, 1).unwrap();
    let copy = a.cow.expect("copy-on-write");
    assert_eq!(copy.src, t1[1]);
    assert_eq!(m.block_table(1).unwrap(), &[t1[0], copy.dst]);
    assert_eq!(m.ref_count(t1[1]), 1);
    assert_eq!(m.ref_count(t1[0]), 2);
    // Child now owns the old page alone and writes in place.
    let a = m.allocate_slots(2, 1).unwrap();
    assert_eq!(a.cow, None);
    assert_eq!(m.block_table(2).unwrap(), &[t1[0], t1[1]]);
    // Appends that start a fresh page never copy.
    m.fork(1, 3).unwrap();
    m.allocate_slots(1, 1).unwrap(); // fills page 2 of seq 1: shared with 3 → copy
    m.allocate_slots(3, 1).unwrap();
    m.fork(3, 4).unwrap(); // seq 3/4 share a full last page
    assert_eq!(m.allocate_slots(4, 1).unwrap().cow, None);
    ok(&m);
    for s in 1..=4 {
        m.free(s).unwrap();
    }
    assert_eq!(m.stats().device.used_blocks, 0);
    ok(&m);
}

#[test]
fn prefix_hits_reuse_full_pages_and_never_cover_the_last_token() {
    let mut m = bm(4, 16);
    let prompt: Vec<u32> = (100..112).collect(); // exactly 3 pages
    assert_eq!(admit_prompt(&mut m, 1, &prompt), 0);
    m.cache_full_blocks(1, &prompt).unwrap();
    let pages = m.block_table(1).unwrap().to_vec();
    assert_eq!(m.cached_tokens(pages[2]), Some(&prompt[8..12]));

    // Same prompt: the last page holds the last token, so only 2 pages hit.
    let hit = m.lookup_prefix(&prompt, None);
    assert_eq!(hit.num_cached_tokens, 8);
    m.admit(2, &hit, 4).unwrap();
    assert_eq!(&m.block_table(2).unwrap()[..2], &pages[..2]);
    assert_ne!(m.block_table(2).unwrap()[2], pages[2]);

    // A longer prompt hits all 3, a diverging one hits up to the divergence.
    let mut longer = prompt.clone();
    longer.push(7);
    assert_eq!(m.lookup_prefix(&longer, None).num_cached_tokens, 12);
    let mut diverge = prompt.clone();
    diverge[5] = 0;
    assert_eq!(m.lookup_prefix(&diverge, None).num_cached_tokens, 4);
    // The extra key (cache salt) separates tenants.
    assert_eq!(m.lookup_prefix(&longer, Some(9)).num_cached_tokens, 0);

    let s = m.stats();
    assert_eq!((s.prefix_queries, s.prefix_hits), (24, 8));
    ok(&m);
}

#[test]
fn freed_cached_pages_stay_findable_until_reused_in_lru_order() {
    let mut m = bm(2, 6);
    let a = [1, 2, 3, 4, 5];
    let b = [6, 7, 8, 9, 10];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    m.free(1).unwrap();
    admit_prompt(&mut m, 2, &b);
    m.cache_full_blocks(2, &b).unwrap();
    m.free(2).unwrap();
    assert_eq!(m.stats().device.cached_free_blocks, 4);
    assert_eq!(m.lookup_prefix(&a, None).num_cached_tokens, 4);
    // Taking 2 pages reuses the oldest free ones: first the never-used, then a's pages.
    m.admit(3, &m.lookup_prefix(&[], None), 2).unwrap();
    assert_eq!(m.stats().evictions, 0);
    m.admit(4, &m.lookup_prefix(&[], None), 2).unwrap();
    assert_eq!(m.stats().evictions, 1);
    // a's tail page went first; its head page is still findable, b is whole.
    assert_eq!(m.lookup_prefix(&a, None).num_cached_tokens, 2);
    assert_eq!(m.lookup_prefix(&b, None).num_cached_tokens, 4);
    ok(&m);
}

#[test]
fn a_stale_prefix_hit_is_refused() {
    let mut m = bm(2, 3);
    let a = [1, 2, 3, 4, 5];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    m.free(1).unwrap();
    let hit = m.lookup_prefix(&a, None);
    assert_eq!(hit.num_cached_tokens, 4);
    // Something else takes every page: the hit's pages are evicted.
    m.admit(2, &m.lookup_prefix(&[], None), 6).unwrap();
    m.free(2).unwrap();
    assert!(matches!(
        m.admit(3, &hit, 1),
        Err(BlockError::StalePrefixHit(_))
    ));
    assert!(!m.contains(3));
    ok(&m);
}

#[test]
fn hit_pages_are_revived_before_allocation_can_evict_them() {
    let mut m = bm(2, 3);
    let a = [1, 2, 3, 4, 5];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    m.free(1).unwrap(); // free list: the unused page, then the 3 of seq 1, tail first
    let hit = m.lookup_prefix(&a, None);
    // 2 cached pages revived + 1 fresh page = all 3 pages.
    m.admit(2, &hit, 1).unwrap();
    let t = m.block_table(2).unwrap();
    assert_eq!(&t[..2], &[hit.blocks[0].block, hit.blocks[1].block]);
    ok(&m);
}

#[test]
fn reset_prefix_cache_forgets_every_entry() {
    let mut m = bm(2, 8);
    let a = [1, 2, 3, 4, 5];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    assert_eq!(m.reset_prefix_cache(), 2);
    assert_eq!(m.lookup_prefix(&a, None).num_cached_tokens, 0);
    m.free(1).unwrap();
    assert_eq!(m.stats().device.cached_free_blocks, 0);
    ok(&m);
}

#[test]
fn prefix_caching_can_be_turned_off() {
    let cfg = BlockManagerConfig::new(2, 8).with_prefix_caching(false);
    let mut m = BlockManager::new(cfg).unwrap();
    let a = [1, 2, 3, 4, 5];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    m.free(1).unwrap();
    assert_eq!(m.lookup_prefix(&a, None).num_cached_tokens, 0);
    assert_eq!(m.stats().prefix_queries, 0);
}

#[test]
fn cache_full_blocks_refuses_more_tokens_than_slots() {
    let mut m = bm(2, 8);
    admit_prompt(&mut m, 1, &[1, 2, 3]);
    let e = m.cache_full_blocks(1, &[1, 2, 3, 4]).unwrap_err();
    assert_eq!(
        e,
        BlockError::TooManyTokens {
            seq: 1,
            given: 4,
            held: 3
        }
    );
}

#[test]
fn swap_out_and_in_move_a_family_and_copy_shared_pages_once() {
    let cfg = BlockManagerConfig::new(2, 8)
        .with_host_blocks(4)
        .with_watermark(0.0)
        .with_prefix_caching(false);
    let mut m = BlockManager::new(cfg).unwrap();
    m.admit(1, &m.lookup_prefix(&[], None), 3).unwrap(); // 2 pages
    m.fork(1, 2).unwrap();
    m.allocate_slots(2, 2).unwrap(); // copy of the partial page + 1 fresh page
    let dev_pages = m.stats().device.used_blocks;
    assert_eq!(dev_pages, 4);
    let out = m.swap_out(&[1, 2]).unwrap();
    assert_eq!(out.len(), 4, "4 distinct pages, the shared one once");
    assert_eq!(m.stats().device.used_blocks, 0);
    assert_eq!(m.location(1).unwrap(), Location::Host);
    assert_eq!(m.stats().host_logical_tokens, 8);
    let shared_host = m.block_table(1).unwrap()[0];
    assert_eq!(m.host_ref_count(shared_host), 2);
    // Running operations are refused while swapped out.
    assert_eq!(
        m.allocate_slots(1, 1),
        Err(BlockError::SequenceSwappedOut(1))
    );
    assert_eq!(m.fork(1, 3), Err(BlockError::SequenceSwappedOut(1)));
    let back = m.swap_in(&[1, 2]).unwrap();
    assert_eq!(back.len(), 4);
    let srcs: Vec<u32> = out.iter().map(|c| c.dst).collect();
    assert_eq!(back.iter().map(|c| c.src).collect::<Vec<_>>(), srcs);
    assert_eq!(m.stats().host.used_blocks, 0);
    assert_eq!(m.ref_count(m.block_table(1).unwrap()[0]), 2);
    assert_eq!(m.swap_in(&[1]), Err(BlockError::SequenceNotSwappedOut(1)));
    assert_eq!(m.swap_out(&[1, 1]), Err(BlockError::DuplicateInGroup(1)));
    m.check_invariants().unwrap();
}

#[test]
fn swap_is_all_or_nothing() {
    let cfg = BlockManagerConfig::new(2, 8)
        .with_host_blocks(2)
        .with_watermark(0.0);
    let mut m = BlockManager::new(cfg).unwrap();
    m.admit(1, &m.lookup_prefix(&[], None), 6).unwrap(); // 3 pages
    let before = m.stats();
    assert!(matches!(
        m.swap_out(&[1]),
        Err(BlockError::OutOfHostBlocks { missing: 1, .. })
    ));
    assert_eq!(m.stats(), before);
    m.free(1).unwrap();
    m.admit(2, &m.lookup_prefix(&[], None), 4).unwrap();
    m.swap_out(&[2]).unwrap();
    m.admit(3, &m.lookup_prefix(&[], None), 16).unwrap(); // device full
    let before = m.stats();
    assert!(matches!(
        m.swap_in(&[2]),
        Err(BlockError::OutOfBlocks { .. })
    ));
    assert_eq!(m.swap_in_shortfall(&[2]).unwrap(), 2);
    assert_eq!(m.stats(), before);
    m.check_invariants().unwrap();
}

#[test]
fn swap_in_revives_cached_pages_instead_of_copying() {
    let cfg = BlockManagerConfig::new(2, 8)
        .with_host_blocks(8)
        .with_watermark(0.0);
    let mut m = BlockManager::new(cfg).unwrap();
    let a = [1, 2, 3, 4, 5];
    admit_prompt(&mut m, 1, &a);
    m.cache_full_blocks(1, &a).unwrap();
    let table = m.block_table(1).unwrap().to_vec();
    let out = m.swap_out(&[1]).unwrap();
    assert_eq!(out.len(), 3);
    let back = m.swap_in(&[1]).unwrap();
    // The two full pages were still cached on the device: only the partial one is copied.
    assert_eq!(back.len(), 1);
    assert_eq!(&m.block_table(1).unwrap()[..2], &table[..2]);
    m.check_invariants().unwrap();
}

#[test]
fn unknown_and_duplicate_sequences_are_errors_not_panics() {
    let mut m = bm(4, 4);
    let hit = m.lookup_prefix(&[], None);
    assert_eq!(m.free(9), Err(BlockError::UnknownSequence(9)));
    assert_eq!(m.allocate_slots(9, 1), Err(BlockError::UnknownSequence(9)));
    assert_eq!(m.fork(9, 10), Err(BlockError::UnknownSequence(9)));
    assert!(m.block_table(9).is_err());
    m.admit(1, &hit, 1).unwrap();
    assert_eq!(m.admit(1, &hit, 1), Err(BlockError::SequenceExists(1)));
    assert_eq!(m.fork(1, 1), Err(BlockError::SequenceExists(1)));
    m.free(1).unwrap();
    assert_eq!(m.free(1), Err(BlockError::UnknownSequence(1)));
    // A hit from a manager with another block size is refused.
    let other = bm(8, 4);
    let foreign = other.lookup_prefix(&[1, 2, 3], None);
    assert!(matches!(
        m.admit(2, &foreign, 1),
        Err(BlockError::ForeignPrefixHit(_))
    ));
    assert_eq!(m.stats().device.used_blocks, 0);
}

#[test]
fn statistics_follow_their_definitions() {
    let mut m = bm(4, 16);
    let p: Vec<u32> = (0..10).collect();
    admit_prompt(&mut m, 1, &p); // 3 pages, 10 tokens
    m.cache_full_blocks(1, &p).unwrap();
    let s = m.stats();
    assert_eq!(s.allocated_slots, 12);
    assert_eq!(s.filled_slots, 10);
    assert_eq!(s.internal_fragmentation_slots(), 2);
    assert_eq!(s.shared_tokens(), 0);
    assert_eq!(s.prefix_cache_entries, 2);
    // A second sequence with the same prompt shares 2 pages (8 tokens).
    admit_prompt(&mut m, 2, &p);
    let s = m.stats();
    assert_eq!(s.logical_tokens, 20);
    assert_eq!(s.filled_slots, 12);
    assert_eq!(s.shared_tokens(), 8);
    assert_eq!(s.allocated_slots, 16);
    assert!((s.usage() - 4.0 / 16.0).abs() < 1e-12);
    assert!((s.prefix_hit_rate() - 8.0 / 20.0).abs() < 1e-12);
    ok(&m);
}
