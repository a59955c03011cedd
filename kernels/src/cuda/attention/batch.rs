//! A step's attention metadata on the device, uploaded once per step and used by every
//! layer: block tables, context lengths, query offsets, and the split of the batch between
//! the kernels (decode rows to the decode kernel, prefill chunks to the prefill kernel's
//! tiles).

use super::meta::AttentionMeta;
use super::{decode, prefill};
use crate::cuda::elem::GpuElem;
use crate::cuda::launch::{check, Device};
use crate::cuda::CudaError;
use crate::layout::KvLayout;

/// The shape every layer of a model shares.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub layout: KvLayout,
    pub num_heads: usize,
    /// Elements between consecutive tokens' query rows (a multiple of 16 bytes).
    pub q_stride: usize,
    pub scale: f32,
}

impl AttentionShape {
    pub fn group(&self) -> usize {
        self.num_heads / self.layout.num_kv_heads.max(1)
    }
}

/// Which kernel serves which rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Decode rows (one query) to the decode kernel when it supports the shape, the rest to
    /// the prefill kernel.
    Split,
    /// Every row through the prefill kernel (the self-test checks it on decode rows too).
    PrefillOnly,
}

/// Decode rows: which sequences, and the longest of their contexts (it sizes split-K).
pub(super) struct DecodeRows<D: Device> {
    pub seq_ids: D::Buf<i32>,
    pub rows: usize,
    pub max_context: usize,
}

/// The prefill kernel's work list: one tile per (sequence, first query row).
pub(super) struct PrefillTiles<D: Device> {
    pub tile_seq: D::Buf<i32>,
    pub tile_first: D::Buf<i32>,
    pub tiles: usize,
    pub tokens_per_tile: usize,
}

/// One step's batch on device `D` for kernels of element type `dtype`.
pub struct AttentionBatch<D: Device> {
    pub(super) shape: AttentionShape,
    pub(super) dtype: &'static str,
    pub(super) num_tokens: usize,
    pub(super) max_blocks: usize,
    pub(super) tables: D::Buf<i32>,
    pub(super) context_lens: D::Buf<i32>,
    pub(super) cu_query: D::Buf<i32>,
    pub(super) decode: Option<DecodeRows<D>>,
    pub(super) prefill: Option<PrefillTiles<D>>,
}

impl<D: Device> AttentionBatch<D> {
    /// Checks `meta` against `shape` and uploads it, split by `route`, for kernels of `E`.
    pub fn new<E: GpuElem>(
        dev: &D,
        meta: &AttentionMeta,
        shape: AttentionShape,
        route: Route,
    ) -> Result<Self, CudaError> {
        let k = "paged_attention";
        let l = &shape.layout;
        check(
            k,
            l.num_kv_heads > 0 && shape.num_heads.is_multiple_of(l.num_kv_heads),
            || "num_heads must be a multiple of num_kv_heads".into(),
        )?;
        check(
            k,
            shape.q_stride >= shape.num_heads * l.head_dim
                && (shape.q_stride * std::mem::size_of::<E>()).is_multiple_of(16),
            || "q rows must cover every head and start 16 bytes apart".into(),
        )?;
        check(k, l.block_size.is_power_of_two(), || {
            format!("block size {} is not a power of two", l.block_size)
        })?;
        meta.check_layout(l)?;
        let (g, hd) = (shape.group(), l.head_dim);
        let decode_ok = route == Route::Split && decode::supports(E::SUFFIX, g, hd);
        let (mut decode_seqs, mut prefill_seqs) = (Vec::new(), Vec::new());
        for (s, &q) in meta.query_lens.iter().enumerate() {
            match q {
                0 => {}
                1 if decode_ok => decode_seqs.push(s),
                _ => prefill_seqs.push(s),
            }
        }
        if !prefill_seqs.is_empty() {
            check(k, prefill::supports(E::SUFFIX, g, hd), || {
                format!(
                    "the prefill kernel has no {} instance for {g} query heads per KV head at \
                     head_dim {hd}",
                    E::SUFFIX
                )
            })?;
            for &s in &prefill_seqs {
                check(
                    k,
                    meta.context_lens[s] as usize >= meta.query_lens[s],
                    || format!("sequence {s}: an empty context for the prefill kernel"),
                )?;
            }
        }
        let decode = if decode_seqs.is_empty() {
            None
        } else {
            let ids: Vec<i32> = decode_seqs.iter().map(|&s| s as i32).collect();
            Some(DecodeRows {
                seq_ids: dev.upload(&ids)?,
                rows: ids.len(),
                max_context: decode_seqs
                    .iter()
                    .map(|&s| meta.context_lens[s] as usize)
                    .max()
                    .unwrap_or(0),
            })
        };
        let prefill = if prefill_seqs.is_empty() {
            None
        } else {
            let per_tile = prefill::tokens_per_tile(E::SUFFIX, g, hd);
            let (mut seq, mut first) = (Vec::new(), Vec::new());
            for &s in &prefill_seqs {
                for f in (0..meta.query_lens[s]).step_by(per_tile) {
                    seq.push(s as i32);
                    first.push(f as i32);
                }
            }
            Some(PrefillTiles {
                tiles: seq.len(),
                tile_seq: dev.upload(&seq)?,
                tile_first: dev.upload(&first)?,
                tokens_per_tile: per_tile,
            })
        };
        Ok(AttentionBatch {
            shape,
            dtype: E::SUFFIX,
            num_tokens: meta.num_tokens,
            max_blocks: meta.max_blocks,
            tables: dev.upload(&meta.tables)?,
            context_lens: dev.upload(&meta.context_lens)?,
            cu_query: dev.upload(&meta.cu_query)?,
            decode,
            prefill,
        })
    }

    pub fn shape(&self) -> &AttentionShape {
        &self.shape
    }

    pub fn num_tokens(&self) -> usize {
        self.num_tokens
    }

    /// How many rows go to the decode kernel and how many tiles to the prefill kernel.
    pub fn split(&self) -> (usize, usize) {
        (
            self.decode.as_ref().map_or(0, |d| d.rows),
            self.prefill.as_ref().map_or(0, |p| p.tiles),
        )
    }
}
