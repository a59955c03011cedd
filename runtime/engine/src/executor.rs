//! From a scheduler plan to the model's batch, and the page copies that come before it.

use kernels::cpu::KvStore;
use kernels::KvDtype;
use scheduler::StepPlan;

use crate::backend::{Backend, BackendError, Batch, BatchSeq};
use crate::model::KvCache;

/// Flattens a plan: token ids, positions, the slot of every new token, block tables, and
/// which rows sample.
pub fn build_batch(plan: &StepPlan, block_size: usize) -> Batch {
    let mut b = Batch {
        input_ids: plan.input_ids.clone(),
        block_tables: plan.block_tables.clone(),
        ..Batch::default()
    };
    let n = plan.input_ids.len();
    b.positions.reserve(n);
    b.slot_mapping.reserve(n);
    let mut row = 0;
    for sc in &plan.seqs {
        let table = plan.block_table(sc);
        for pos in sc.start..sc.start + sc.len {
            b.positions.push(pos);
            let slot = table[pos / block_size] as usize * block_size + pos % block_size;
            b.slot_mapping.push(slot as i64);
        }
        b.seqs.push(BatchSeq {
            query_start: row,
            query_len: sc.len,
            context_len: sc.start + sc.len,
            table_offset: sc.table_offset,
            table_len: sc.table_len,
        });
        row += sc.len;
        if sc.samples {
            b.logit_rows.push(row - 1);
        }
    }
    b
}

/// Host copies of every layer's K and V (the swap pool).
pub struct HostCache {
    pub layers: Vec<(KvStore, KvStore)>,
}

impl HostCache {
    /// Swap space in the device cache's dtype (pages move as they are, never converted).
    pub fn new(num_layers: usize, elems: usize, dtype: KvDtype) -> Self {
        HostCache {
            layers: (0..num_layers)
                .map(|_| (KvStore::zeros(elems, dtype), KvStore::zeros(elems, dtype)))
                .collect(),
        }
    }
}

/// Carries out the plan's page copies in the required order: swap out, swap in, then
/// copy-on-write (pages freed by a swap-out may be reused in the same step).
pub fn run_copies<B: Backend>(
    backend: &B,
    plan: &StepPlan,
    cache: &mut KvCache<B>,
    host: Option<&mut HostCache>,
) -> Result<(), BackendError> {
    let pairs = |v: &[block_manager::BlockCopy]| -> Vec<(u32, u32)> {
        v.iter().map(|c| (c.src, c.dst)).collect()
    };
    let layout = cache.layout;
    if let Some(host) = host {
        let out = pairs(&plan.swap_out);
        let inn = pairs(&plan.swap_in);
        for (l, (hk, hv)) in cache.layers.iter_mut().zip(host.layers.iter_mut()) {
            if !out.is_empty() {
                backend.copy_to_host(hk, &l.k, &layout, &out)?;
                backend.copy_to_host(hv, &l.v, &layout, &out)?;
            }
            if !inn.is_empty() {
                backend.copy_from_host(&mut l.k, hk, &layout, &inn)?;
                backend.copy_from_host(&mut l.v, hv, &layout, &inn)?;
            }
        }
    }
    let cow = pairs(&plan.cow);
    if !cow.is_empty() {
        for l in cache.layers.iter_mut() {
            backend.copy_blocks(&mut l.k, &layout, &cow)?;
            backend.copy_blocks(&mut l.v, &layout, &cow)?;
        }
    }
    Ok(())
}
