//! The launchers' host-side checks, on the emulator (nothing here reaches a kernel unless
//! the check lets it).

use super::*;
use crate::cuda::{ops, Emu};
use crate::layout::KvLayout;

fn layout() -> KvLayout {
    KvLayout {
        num_blocks: 8,
        num_kv_heads: 2,
        block_size: 16,
        head_dim: 64,
    }
}

fn shape() -> AttentionShape {
    AttentionShape {
        layout: layout(),
        num_heads: 4,
        q_stride: 4 * 64,
        scale: 0.125,
    }
}

fn seq(query_start: usize, query_len: usize, context_len: usize, t: &[u32]) -> SeqChunk<'_> {
    SeqChunk {
        query_start,
        query_len,
        context_len,
        block_table: t,
    }
}

fn plan(seqs: &[SeqChunk]) -> Result<AttentionBatch<Emu>, CudaError> {
    let meta = AttentionMeta::new(seqs)?;
    AttentionBatch::new::<f32>(&Emu::new(), &meta, shape(), Route::Split)
}

fn err(r: Result<impl Sized, CudaError>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_batch_that_would_read_out_of_bounds_is_refused() {
    let t = [3u32, 1];
    assert!(plan(&[seq(0, 1, 32, &t)]).is_ok());
    let e = err(plan(&[seq(0, 1, 33, &t)]));
    assert!(e.contains("33 tokens of context in 2 pages of 16"), "{e}");
    let e = err(plan(&[seq(0, 1, 5, &[8])]));
    assert!(e.contains("block number 8 in a cache of 8 blocks"), "{e}");
    let e = err(plan(&[seq(0, 2, 1, &t)]));
    assert!(e.contains("2 queries but only 1 tokens of context"), "{e}");
    let e = err(plan(&[seq(0, 1, 5, &t), seq(2, 1, 5, &t)]));
    assert!(e.contains("consecutive"), "{e}");
    let many: Vec<SeqChunk> = (0..=MAX_SEQS).map(|i| seq(i, 1, 1, &t)).collect();
    let e = err(plan(&many));
    assert!(e.contains("65536 sequences (at most 65535)"), "{e}");
}

#[test]
fn decode_rows_of_a_mixed_batch_go_to_the_decode_kernel() {
    let t = [0u32, 1, 2];
    let b = plan(&[
        seq(0, 1, 40, &t),
        seq(1, 7, 20, &t),
        seq(8, 1, 3, &t),
        seq(9, 0, 3, &t),
    ])
    .unwrap();
    // Two decode rows; one prefill chunk of 7 tokens, 16 per tile with 2 heads per KV head.
    assert_eq!(b.split(), (2, 1));
    let meta = AttentionMeta::new(&[seq(0, 1, 40, &t), seq(1, 7, 20, &t)]).unwrap();
    let all = AttentionBatch::new::<f32>(&Emu::new(), &meta, shape(), Route::PrefillOnly).unwrap();
    assert_eq!(all.split(), (0, 2));
}

#[test]
fn misaligned_or_short_buffers_are_refused() {
    let dev = Emu::new();
    let t = [0u32];
    let meta = AttentionMeta::new(&[seq(0, 1, 4, &t), seq(1, 1, 4, &t)]).unwrap();
    let b = AttentionBatch::new::<f32>(&dev, &meta, shape(), Route::Split).unwrap();
    let row = 4 * 64;
    let q = dev.alloc_zeros::<f32>(2 * row + 4).unwrap();
    let kc = dev.alloc_zeros::<f32>(layout().elems()).unwrap();
    let mut out = dev.alloc_zeros::<f32>(2 * row).unwrap();
    let mut ws = AttentionWorkspace::default();
    let e = err(paged_attention(
        &dev,
        &mut out,
        &q.slice(1..),
        &kc,
        &kc,
        &b,
        &mut ws,
    ));
    assert!(e.contains("q is not 16-byte aligned"), "{e}");
    let e = err(paged_attention(
        &dev,
        &mut out,
        &q.slice(..row),
        &kc,
        &kc,
        &b,
        &mut ws,
    ));
    assert!(e.contains("q does not cover every token"), "{e}");
    let small = dev.alloc_zeros::<f32>(8).unwrap();
    let e = err(paged_attention(
        &dev, &mut out, &q, &small, &kc, &b, &mut ws,
    ));
    assert!(e.contains("cache size"), "{e}");
    paged_attention(&dev, &mut out, &q, &kc, &kc, &b, &mut ws).unwrap();
    let e = err(paged_attention::<Emu, half::bf16>(
        &dev,
        &mut dev.alloc_zeros(2 * row).unwrap(),
        &dev.alloc_zeros(2 * row).unwrap(),
        &dev.alloc_zeros(layout().elems()).unwrap(),
        &dev.alloc_zeros(layout().elems()).unwrap(),
        &b,
        &mut ws,
    ));
    assert!(e.contains("planned for f32 run on bf16"), "{e}");
}

#[test]
fn copy_lists_whose_order_would_matter_are_refused() {
    let dev = Emu::new();
    let l = layout();
    let mut c = dev.alloc_zeros::<f32>(l.elems()).unwrap();
    ops::copy_blocks(&dev, &mut [&mut c], &l, &[(1, 2), (3, 4)]).unwrap();
    let e = err(ops::copy_blocks(&dev, &mut [&mut c], &l, &[(1, 2), (2, 4)]));
    assert!(
        e.contains("block 2 is both a destination and a source"),
        "{e}"
    );
    let e = err(ops::copy_blocks(&dev, &mut [&mut c], &l, &[(1, 2), (3, 2)]));
    assert!(
        e.contains("block 2 is the destination of two copies"),
        "{e}"
    );
    let e = err(ops::copy_blocks(&dev, &mut [&mut c], &l, &[(1, 8)]));
    assert!(e.contains("out of range"), "{e}");
}
