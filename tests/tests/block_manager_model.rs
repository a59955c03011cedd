//! The block manager against a simple model: a seeded 100,000-operation fuzz loop, and
//! property tests over short random operation sequences (see `pagedrt_tests::block_model`).

use block_manager::BlockManagerConfig;
use pagedrt_tests::block_model::{Harness, Op};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::SeedableRng;

fn config(block_size: usize, device: usize, host: usize) -> BlockManagerConfig {
    BlockManagerConfig::new(block_size, device)
        .with_host_blocks(host)
        .with_watermark(0.05)
}

fn fuzz(seed: u64, cfg: BlockManagerConfig, ops: usize) -> Harness {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = Harness::new(cfg);
    for i in 0..ops {
        let op = Op::random(&mut rng);
        if let Err(e) = h.apply(&op) {
            panic!("seed {seed}, operation {i} ({op:?}): {e}");
        }
    }
    h.drain().unwrap();
    h
}

#[test]
fn hundred_thousand_random_operations_keep_every_invariant() {
    // Block sizes from 1 to 16 and caches small enough that allocation fails often.
    let plans = [
        (4, 48, 24, 40_000),
        (1, 96, 48, 20_000),
        (16, 24, 12, 40_000),
    ];
    for (i, &(bs, dev, host, ops)) in plans.iter().enumerate() {
        let h = fuzz(0xB10C + i as u64, config(bs, dev, host), ops);
        // The loop must really exercise the interesting paths, not just refuse everything.
        assert!(
            h.ok_ops > ops / 2,
            "bs {bs}: only {} ops succeeded",
            h.ok_ops
        );
        assert!(h.refused_ops > 100, "bs {bs}: the cache never ran out");
        assert!(h.prefix_hit_tokens > 1000, "bs {bs}: few prefix hits");
        // With one-token pages no page is ever partly filled, so nothing is copied on write.
        assert!(
            bs == 1 || h.cow_copies > 10,
            "bs {bs}: copy-on-write never happened"
        );
        let s = h.bm.stats();
        assert!(s.evictions > 0, "bs {bs}: no eviction");
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        (
            0u8..4,
            0u8..40,
            0u8..12,
            any::<u32>(),
            1u8..48,
            prop::option::of(0u8..2)
        )
            .prop_map(
                |(base, base_len, suffix_len, suffix_seed, chunk, salt)| Op::Admit {
                    base,
                    base_len,
                    suffix_len,
                    suffix_seed,
                    chunk,
                    salt
                }
            ),
        (any::<u16>(), 1u8..6, 0u32..50).prop_map(|(pick, n, token)| Op::Append { pick, n, token }),
        any::<u16>().prop_map(|pick| Op::Fork { pick }),
        any::<u16>().prop_map(|pick| Op::Free { pick }),
        (any::<u16>(), any::<bool>()).prop_map(|(pick, with_next)| Op::SwapOut { pick, with_next }),
        any::<u16>().prop_map(|pick| Op::SwapIn { pick }),
        Just(Op::ResetPrefixCache),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_operation_sequence_keeps_every_invariant(
        bs in prop::sample::select(vec![1usize, 2, 4, 8, 16]),
        dev in 4usize..40,
        host in 0usize..20,
        ops in prop::collection::vec(op_strategy(), 1..150),
    ) {
        let mut h = Harness::new(config(bs, dev, host));
        for op in &ops {
            if let Err(e) = h.apply(op) {
                return Err(TestCaseError::fail(format!("{op:?}: {e}")));
            }
        }
        if let Err(e) = h.drain() {
            return Err(TestCaseError::fail(e));
        }
    }
}
