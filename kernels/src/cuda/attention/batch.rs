//! A step's attention metadata on the device, uploaded once per step and used by every
//! layer: block tables, context lengths, query offsets, and the split of the batch between
//! the kernels (decode rows to the decode kernel, prefill chunks to the prefill kernel's
//! tiles). All of it is packed into one buffer and sent with one copy: each host-to-device
//! copy from pageable memory costs a driver call and a wait, and a step had six of them.

use super::meta::AttentionMeta;
use super::{decode, prefill};
use crate::cuda::elem::GpuElem;
use crate::cuda::launch::{check, Device};
use crate::cuda::region::{region, Region};
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

/// Where one array lies in the step's packed metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Span {
    start: usize,
    len: usize,
}

/// Builds the packed metadata on the host; each array starts 64 bytes after the previous
/// one's start at least, aligned as a buffer of its own would be for vector loads.
#[derive(Default)]
struct Packer(Vec<i32>);

impl Packer {
    const ALIGN: usize = 16;

    fn push(&mut self, v: &[i32]) -> Span {
        let start = self.0.len().div_ceil(Self::ALIGN) * Self::ALIGN;
        self.0.resize(start, 0);
        self.0.extend_from_slice(v);
        Span {
            start,
            len: v.len(),
        }
    }
}

/// Decode rows: which sequences, and the longest of their contexts (it sizes split-K).
pub(super) struct DecodeRows {
    pub seq_ids: Span,
    pub rows: usize,
    pub max_context: usize,
}

/// The prefill kernel's work list: one tile per (sequence, first query row).
pub(super) struct PrefillTiles {
    pub tile_seq: Span,
    pub tile_first: Span,
    pub tiles: usize,
    pub tokens_per_tile: usize,
}

/// One step's batch on device `D` for kernels of element type `dtype`.
pub struct AttentionBatch<D: Device> {
    pub(super) shape: AttentionShape,
    pub(super) dtype: &'static str,
    pub(super) num_tokens: usize,
    pub(super) max_blocks: usize,
    /// Every array below, in one device buffer.
    packed: D::Buf<i32>,
    pub(super) tables: Span,
    pub(super) context_lens: Span,
    pub(super) cu_query: Span,
    pub(super) decode: Option<DecodeRows>,
    pub(super) prefill: Option<PrefillTiles>,
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
        let mut packed = Packer::default();
        let decode = if decode_seqs.is_empty() {
            None
        } else {
            let ids: Vec<i32> = decode_seqs.iter().map(|&s| s as i32).collect();
            Some(DecodeRows {
                seq_ids: packed.push(&ids),
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
                tile_seq: packed.push(&seq),
                tile_first: packed.push(&first),
                tokens_per_tile: per_tile,
            })
        };
        let tables = packed.push(&meta.tables);
        let context_lens = packed.push(&meta.context_lens);
        let cu_query = packed.push(&meta.cu_query);
        Ok(AttentionBatch {
            shape,
            dtype: E::SUFFIX,
            num_tokens: meta.num_tokens,
            max_blocks: meta.max_blocks,
            packed: dev.upload(&packed.0)?,
            tables,
            context_lens,
            cu_query,
            decode,
            prefill,
        })
    }

    /// One array of the packed metadata, as a kernel argument takes it.
    pub(super) fn view(&self, dev: &D, s: Span) -> Result<Region<'_, i32>, CudaError> {
        region(
            dev,
            "attention metadata",
            &self.packed,
            s.start..s.start + s.len,
        )
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

#[cfg(test)]
mod tests {
    use super::Packer;

    #[test]
    fn packed_arrays_keep_their_values_apart_and_aligned() {
        let mut p = Packer::default();
        let a = p.push(&[1, 2, 3]);
        let b = p.push(&[]);
        let c = p.push(&(10..40).collect::<Vec<i32>>());
        for s in [a, b, c] {
            assert_eq!(s.start % Packer::ALIGN, 0, "{s:?}");
        }
        assert_eq!(&p.0[a.start..a.start + a.len], &[1, 2, 3]);
        assert_eq!(b.len, 0);
        assert_eq!(
            p.0[c.start..c.start + c.len],
            (10..40).collect::<Vec<i32>>()[..]
        );
        assert!(a.start + a.len <= c.start);
    }
}
