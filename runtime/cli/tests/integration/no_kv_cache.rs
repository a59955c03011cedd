//! The KV cache changes nothing but speed: the engine with its paged cache and the no-cache
//! loop (the whole sequence recomputed every step) give the same greedy tokens, and both
//! match the float64 reference where its margins are safely above float32 noise.

use crate::common;

use common::{default_model, golden};
use engine::sampler::SamplingParams;
use engine::{run_to_completion, EngineConfig};
use tools::engines::cpu_engine;
use tools::no_cache::{full_recompute_batch, NoCacheRunner};

const STEPS: usize = 8;

#[test]
fn cached_and_uncached_greedy_tokens_agree_on_the_golden_prompts() {
    let mut core = cpu_engine(&default_model(), EngineConfig::default())
        .unwrap()
        .0;
    let gold = golden();
    let params = SamplingParams {
        ignore_eos: true,
        ..SamplingParams::greedy(STEPS)
    };
    for (i, g) in gold.iter().enumerate() {
        core.add_request(common::request(i as u64, g.prompt.clone(), params.clone()))
            .unwrap();
    }
    let cached = run_to_completion(&mut core).unwrap();
    let prompts: Vec<Vec<u32>> = gold.iter().map(|g| g.prompt.clone()).collect();
    let mut runner = NoCacheRunner::new(core.backend(), core.model());
    let uncached = runner.generate(&prompts, &params, &[]).unwrap();
    for (i, g) in gold.iter().enumerate() {
        let c = &cached[&(i as u64, 0)].tokens;
        let u = &uncached[i];
        assert_eq!(u.len(), STEPS);
        let n = g.trusted.min(STEPS);
        assert!(
            n >= 4,
            "case {i}: too few trusted steps ({n}) to mean anything"
        );
        assert_eq!(
            &u[..n],
            &g.want[..n],
            "case {i}: no-cache vs float64 reference"
        );
        assert_eq!(&c[..n], &u[..n], "case {i}: cached vs no-cache");
    }
}

#[test]
fn full_recompute_batches_lay_sequences_out_back_to_back() {
    let (b, pages) = full_recompute_batch(&[&[1, 2, 3], &[4, 5, 6, 7, 8]], 4);
    assert_eq!(pages, 1 + 2);
    assert_eq!(b.input_ids, vec![1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(b.positions, vec![0, 1, 2, 0, 1, 2, 3, 4]);
    assert_eq!(b.slot_mapping, vec![0, 1, 2, 4, 5, 6, 7, 8]);
    assert_eq!(b.block_tables, vec![0, 1, 2]);
    assert_eq!(b.logit_rows, vec![2, 7]);
    assert_eq!((b.seqs[1].query_start, b.seqs[1].context_len), (3, 5));
}
