//! How many KV pages fit on the device: measured, not configured. After the weights are
//! loaded, one profiling forward pass runs at the largest step the scheduler can make
//! (`max_num_batched_tokens` tokens over `max_num_seqs` sequences, every one sampling), so
//! the activation buffers of that shape are allocated (the model keeps them for reuse); what
//! is left of `utilization × total` after the weights, those buffers and a second set of
//! them (buffers of other step shapes kept by the reuse pool) goes to the KV cache. This is
//! vLLM's `--gpu-memory-utilization` rule.

use kernels::cuda::CudaError;

use super::super::{BackendError, Batch, BatchSeq};
use super::{CudaBackend, CudaDevice};
use crate::model::{KvCache, KvSpec, Model};

/// The largest step to profile and the share of the device to use.
#[derive(Debug, Clone, Copy)]
pub struct ProfileShape {
    pub max_num_batched_tokens: usize,
    pub max_num_seqs: usize,
    pub block_size: usize,
    /// Share of the device's total memory this process may use, in (0, 1].
    pub utilization: f64,
}

/// What the profiling pass found and the cache it leaves room for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvPlan {
    pub num_blocks: usize,
    pub kv_bytes: usize,
    /// Device memory in use after loading the weights, before the pass.
    pub weights_bytes: usize,
    /// What the pass's activations kept allocated.
    pub activation_bytes: usize,
    pub total_bytes: usize,
}

/// The profiling batch: `tokens` prompt tokens split over `seqs` sequences, each starting at
/// position 0 in pages of its own, each sampling its last token.
pub fn profile_batch(tokens: usize, seqs: usize, block_size: usize) -> Batch {
    let seqs = seqs.clamp(1, tokens.max(1));
    let mut b = Batch::default();
    let mut next_block = 0u32;
    for s in 0..seqs {
        let len = tokens / seqs + usize::from(s < tokens % seqs);
        let pages = len.div_ceil(block_size);
        let table: Vec<u32> = (next_block..next_block + pages as u32).collect();
        next_block += pages as u32;
        let row = b.input_ids.len();
        for pos in 0..len {
            b.input_ids.push((pos % 100) as u32);
            b.positions.push(pos);
            let slot = table[pos / block_size] as usize * block_size + pos % block_size;
            b.slot_mapping.push(slot as i64);
        }
        b.seqs.push(BatchSeq {
            query_start: row,
            query_len: len,
            context_len: len,
            table_offset: b.block_tables.len(),
            table_len: table.len(),
        });
        b.block_tables.extend(table);
        if len > 0 {
            b.logit_rows.push(row + len - 1);
        }
    }
    b
}

/// Runs the profiling pass of `model` on `backend` and sizes the KV cache of `spec`.
pub fn plan_kv_cache<D: CudaDevice>(
    backend: &CudaBackend<D>,
    model: &dyn Model<CudaBackend<D>>,
    spec: &KvSpec,
    shape: ProfileShape,
) -> Result<KvPlan, BackendError> {
    let err = |source: CudaError| BackendError::Cuda {
        op: "memory profile",
        source,
    };
    let used = || -> Result<(usize, usize), BackendError> {
        let dev = backend.device();
        dev.sync().map_err(err)?;
        let m = dev.memory().map_err(err)?;
        Ok((m.total - m.free, m.total))
    };
    let (weights_bytes, total_bytes) = used()?;
    let batch = profile_batch(
        shape.max_num_batched_tokens,
        shape.max_num_seqs,
        shape.block_size,
    );
    let pages = batch.block_tables.len().max(1);
    {
        let mut cache = KvCache::new(backend, spec, pages, shape.block_size)?;
        model.forward(backend, &batch, &mut cache)?;
    }
    let (after, _) = used()?;
    let activation_bytes = after.saturating_sub(weights_bytes);
    let budget = (total_bytes as f64 * shape.utilization.clamp(0.0, 1.0)) as usize;
    let kv_bytes = budget.saturating_sub(after + activation_bytes);
    let per_block = spec.bytes_per_block(shape.block_size).max(1);
    Ok(KvPlan {
        num_blocks: kv_bytes / per_block,
        kv_bytes,
        weights_bytes,
        activation_bytes,
        total_bytes,
    })
}

/// "12,345 pages of 16 tokens (197,520 tokens, 4.2 GiB): 48.2 sequences of 4,096 tokens at
/// once".
pub fn describe(plan: &KvPlan, block_size: usize, max_model_len: usize) -> String {
    let tokens = plan.num_blocks * block_size;
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    format!(
        "KV cache: {} pages of {block_size} tokens ({tokens} tokens, {:.2} GiB) after weights \
         {:.2} GiB and activations {:.2} GiB of {:.2} GiB: {:.1} sequences of {max_model_len} \
         tokens at once",
        plan.num_blocks,
        gib(plan.kv_bytes),
        gib(plan.weights_bytes),
        gib(plan.activation_bytes),
        gib(plan.total_bytes),
        tokens as f64 / max_model_len.max(1) as f64,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_batch_covers_every_token_in_pages_of_its_own() {
        let b = profile_batch(37, 4, 4);
        assert_eq!(b.num_tokens(), 37);
        assert_eq!(b.seqs.len(), 4);
        assert_eq!(b.logit_rows.len(), 4);
        let lens: Vec<usize> = b.seqs.iter().map(|s| s.query_len).collect();
        assert_eq!(lens, [10, 9, 9, 9]);
        let mut slots: Vec<i64> = b.slot_mapping.clone();
        slots.sort_unstable();
        slots.dedup();
        assert_eq!(slots.len(), 37, "two tokens share a slot");
        // More sequences than tokens: one token each.
        assert_eq!(profile_batch(3, 256, 16).seqs.len(), 3);
    }
}
