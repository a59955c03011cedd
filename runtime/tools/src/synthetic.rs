//! Engine steps of a chosen shape over synthetic cached K/V, for benchmarks and calibration:
//! the work of a step does not depend on the cached values, and building real contexts of
//! thousands of tokens would take minutes on a CPU.

use engine::KvDtype;

use engine::backend::{Backend, BackendError, Batch, BatchSeq};
use engine::model::{KvCache, KvSpec, LayerCache, ModelConfig};

/// A step with `decodes` sequences that each add token `t` to `t` cached tokens, plus (if
/// `prefill > 0`) one sequence computing its first `prefill` prompt tokens; and the cache it
/// runs over, filled with distinct values (pages never written would all map to one shared
/// zero page and read unrealistically fast).
pub fn synthetic_step<B: Backend>(
    b: &B,
    cfg: &ModelConfig,
    decodes: usize,
    t: usize,
    prefill: usize,
    bs: usize,
    kv_dtype: KvDtype,
) -> Result<(KvCache<B>, Batch), BackendError> {
    let pages = (t + 1).div_ceil(bs);
    let prefill_pages = prefill.div_ceil(bs);
    let mut cache = KvCache::new(b, &KvSpec::of(cfg, kv_dtype), 0, bs)?;
    cache.layout.num_blocks = decodes * pages + prefill_pages;
    let elems = cache.layout.elems();
    let fill = |seed: usize| -> Vec<f32> {
        (0..elems)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 * 1e-3 - 1.0)
            .collect()
    };
    cache.layers = (0..cfg.num_layers)
        .map(|l| {
            Ok(LayerCache {
                k: b.kv_upload(fill(2 * l), kv_dtype)?,
                v: b.kv_upload(fill(2 * l + 1), kv_dtype)?,
            })
        })
        .collect::<Result<_, BackendError>>()?;
    let mut batch = Batch::default();
    for s in 0..decodes {
        let first = s * pages;
        batch
            .block_tables
            .extend((first..first + pages).map(|p| p as u32));
        batch.input_ids.push(100 + s as u32);
        batch.positions.push(t);
        batch
            .slot_mapping
            .push(((first + t / bs) * bs + t % bs) as i64);
        batch.seqs.push(BatchSeq {
            query_start: s,
            query_len: 1,
            context_len: t + 1,
            table_offset: s * pages,
            table_len: pages,
        });
        batch.logit_rows.push(s);
    }
    if prefill > 0 {
        let first = decodes * pages;
        let table_offset = batch.block_tables.len();
        batch
            .block_tables
            .extend((first..first + prefill_pages).map(|p| p as u32));
        let row = batch.input_ids.len();
        for pos in 0..prefill {
            batch.input_ids.push(100 + (pos % 1000) as u32);
            batch.positions.push(pos);
            batch
                .slot_mapping
                .push(((first + pos / bs) * bs + pos % bs) as i64);
        }
        batch.seqs.push(BatchSeq {
            query_start: row,
            query_len: prefill,
            context_len: prefill,
            table_offset,
            table_len: prefill_pages,
        });
        batch.logit_rows.push(row + prefill - 1);
    }
    Ok((cache, batch))
}
