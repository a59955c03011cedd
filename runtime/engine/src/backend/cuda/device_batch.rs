//! One step's batch metadata on the device. Every layer of a step sees the same batch, so it
//! is uploaded once per step instead of four times per layer (each upload from pageable
//! memory also waits for the stream).

use kernels::cuda::attention::{AttentionBatch, AttentionMeta};
use kernels::cuda::{CudaError, Device};

use super::super::{Batch, BatchSeq};

pub(super) struct DeviceBatch<D: Device> {
    /// What it was built from, to recognise the batch again.
    host: (Vec<usize>, Vec<i64>, Vec<u32>, Vec<BatchSeq>),
    pub(super) positions: D::Buf<i32>,
    pub(super) slots: D::Buf<i64>,
    pub(super) meta: AttentionMeta,
    /// The attention kernels' view of the batch, built by the step's first attention call.
    pub(super) attention: Option<AttentionBatch<D>>,
}

impl<D: Device> DeviceBatch<D> {
    pub(super) fn is_for(&self, b: &Batch) -> bool {
        let (p, s, t, q) = &self.host;
        *p == b.positions && *s == b.slot_mapping && *t == b.block_tables && *q == b.seqs
    }

    pub(super) fn upload(dev: &D, b: &Batch) -> Result<Self, CudaError> {
        let positions: Vec<i32> = b.positions.iter().map(|&p| p as i32).collect();
        Ok(DeviceBatch {
            positions: dev.upload(&positions)?,
            slots: dev.upload(&b.slot_mapping)?,
            meta: AttentionMeta::new(&b.chunks())?,
            attention: None,
            host: (
                b.positions.clone(),
                b.slot_mapping.clone(),
                b.block_tables.clone(),
                b.seqs.clone(),
            ),
        })
    }
}
