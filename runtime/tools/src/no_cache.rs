//! The engine without a KV cache: every decode step runs the forward pass over the whole
//! sequence so far and keeps only the last position's logits, the naive loop that re-feeds
//! all `input_ids` each step.
//!
//! It is the cleanest reference for the cache itself (the cached engine must produce the
//! same greedy tokens) and the baseline of `pagedrt bench context-scaling`. Attention still
//! needs K and V of every position within one forward pass; they go to scratch pages that
//! are overwritten from position 0 at the next step, never reused across steps.

use engine::KvDtype;
use rand::rngs::StdRng;

use engine::backend::{Backend, BackendError, Batch, BatchSeq};
use engine::model::{KvCache, Model};
use engine::sampler::{sample, sample_rng, SamplingParams};

/// A batch that computes every token of each sequence from position 0, sequence `i` in
/// scratch pages laid out after those of sequence `i − 1`, with the logits of each
/// sequence's last token. Returns the batch and the number of pages it uses.
pub fn full_recompute_batch(seqs: &[&[u32]], block_size: usize) -> (Batch, usize) {
    let mut b = Batch::default();
    let mut page = 0usize;
    for s in seqs {
        let pages = s.len().div_ceil(block_size);
        let table_offset = b.block_tables.len();
        b.block_tables
            .extend((page..page + pages).map(|p| p as u32));
        let row = b.input_ids.len();
        b.input_ids.extend_from_slice(s);
        for pos in 0..s.len() {
            b.positions.push(pos);
            b.slot_mapping
                .push(((page + pos / block_size) * block_size + pos % block_size) as i64);
        }
        b.seqs.push(BatchSeq {
            query_start: row,
            query_len: s.len(),
            context_len: s.len(),
            table_offset,
            table_len: pages,
        });
        b.logit_rows.push(row + s.len() - 1);
        page += pages;
    }
    (b, page)
}

/// Runs `model` with no cache kept between steps.
pub struct NoCacheRunner<'a, B: Backend> {
    backend: &'a B,
    model: &'a dyn Model<B>,
    block_size: usize,
    scratch: Option<KvCache<B>>,
}

impl<'a, B: Backend> NoCacheRunner<'a, B> {
    pub fn new(backend: &'a B, model: &'a dyn Model<B>) -> Self {
        NoCacheRunner {
            backend,
            model,
            block_size: 16,
            scratch: None,
        }
    }

    /// One step: the whole of every sequence through every layer; returns the logits of
    /// each sequence's last token, `[seqs, vocab]`.
    pub fn step(&mut self, seqs: &[&[u32]]) -> Result<Vec<f32>, BackendError> {
        let (batch, pages) = full_recompute_batch(seqs, self.block_size);
        let big_enough = self
            .scratch
            .as_ref()
            .is_some_and(|c| c.layout.num_blocks >= pages);
        if !big_enough {
            self.scratch = Some(KvCache::new(
                self.backend,
                &self.model.kv_spec(KvDtype::F32),
                pages.next_power_of_two(),
                self.block_size,
            )?);
        }
        let cache = self.scratch.as_mut().expect("allocated above");
        self.model.forward(self.backend, &batch, cache)
    }

    /// Generates up to `params.max_tokens` tokens for each prompt (n = 1; stopping at an
    /// id of `eos_ids` unless `ignore_eos`, or at a stop token id), sampling exactly as the engine does: same
    /// sampler, same per-request seed (`params.seed`, else the request id `i`).
    pub fn generate(
        &mut self,
        prompts: &[Vec<u32>],
        params: &SamplingParams,
        eos_ids: &[u32],
    ) -> Result<Vec<Vec<u32>>, BackendError> {
        let vocab = self.model.config().vocab_size;
        let mut seqs: Vec<Vec<u32>> = prompts.to_vec();
        let mut outs: Vec<Vec<u32>> = vec![vec![]; prompts.len()];
        let mut rngs: Vec<StdRng> = (0..prompts.len() as u64)
            .map(|i| sample_rng(params, i, 0))
            .collect();
        let mut live: Vec<usize> = (0..prompts.len()).collect();
        while !live.is_empty() {
            let views: Vec<&[u32]> = live.iter().map(|&i| seqs[i].as_slice()).collect();
            let mut logits = self.step(&views)?;
            let mut still = Vec::with_capacity(live.len());
            for (row, &i) in live.iter().enumerate() {
                let l = &mut logits[row * vocab..(row + 1) * vocab];
                let s = sample(l, params, &prompts[i], &outs[i], None, &mut rngs[i]);
                outs[i].push(s.token);
                seqs[i].push(s.token);
                let eos = (!params.ignore_eos && eos_ids.contains(&s.token))
                    || params.stop_token_ids.contains(&s.token);
                if !eos && outs[i].len() < params.max_tokens {
                    still.push(i);
                }
            }
            live = still;
        }
        Ok(outs)
    }
}
