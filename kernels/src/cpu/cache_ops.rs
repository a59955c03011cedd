//! Writing into and copying between pages of the KV cache.

use super::isa;
use super::kv_store::KvElem;
use super::ops::{for_row_blocks_from, Rope};
use super::team::SendPtr;
use crate::layout::KvLayout;

/// A step's fused QKV rows (`[num_tokens, q | k | v]`) made into attention's inputs in one
/// pass: `q` (`[num_tokens, num_heads, head_dim]`) rotated, and each token's K (rotated)
/// and V rounded into the cache at its slot (a negative slot is padding: only `q` is
/// written). Tokens are split over the team for prefill-sized steps. Why one kernel: the
/// split into separate K and V buffers (allocated per call), RoPE and a single-threaded
/// write were 6 % of a 64 x 128 prefill's forward pass.
///
/// # Panics
/// If a slot lies outside the caches, or two tokens share a slot: the block manager gives
/// every position its own slot, and tokens are written from several threads, so a shared
/// slot would be a data race (checked in release builds too: sorting a step's slots costs
/// well under 1 % of the kernel's own work).
#[allow(clippy::too_many_arguments)]
pub fn qkv_rope_write_kv<E: KvElem>(
    q: &mut [f32],
    qkv: &[f32],
    rope: &Rope,
    positions: &[usize],
    num_heads: usize,
    layout: &KvLayout,
    k_cache: &mut [E],
    v_cache: &mut [E],
    slots: &[i64],
) {
    let isa = isa::selected();
    let (hd, kvh) = (layout.head_dim, layout.num_kv_heads);
    let (qd, kvd) = (num_heads * hd, kvh * hd);
    let row = qd + 2 * kvd;
    let t = positions.len();
    assert!(slots.len() >= t && qkv.len() >= t * row && q.len() >= t * qd);
    let cache_len = k_cache.len().min(v_cache.len());
    for &s in &slots[..t] {
        assert!(
            s < 0 || layout.offset(s as usize, kvh - 1) + hd <= cache_len,
            "slot {s} outside the cache"
        );
    }
    assert_distinct_slots(&slots[..t]);
    let (kp, vp) = (SendPtr(k_cache.as_mut_ptr()), SendPtr(v_cache.as_mut_ptr()));
    // Each token is a q row, a k row and three conversions per head: split from 16 tokens
    // on (a 64-token decode step's call took 42 us on one thread).
    for_row_blocks_from(16 * qd, &mut q[..t * qd], qd, |t0, block| {
        let mut k = vec![0f32; kvd];
        for (i, qrow) in block.chunks_mut(qd).enumerate() {
            let tok = t0 + i;
            let r = &qkv[tok * row..][..row];
            qrow.copy_from_slice(&r[..qd]);
            rope.apply_token_on(isa, qrow, positions[tok]);
            let Ok(slot) = usize::try_from(slots[tok]) else {
                continue;
            };
            k.copy_from_slice(&r[qd..qd + kvd]);
            rope.apply_token_on(isa, &mut k, positions[tok]);
            for h in 0..kvh {
                let dst = layout.offset(slot, h);
                // SAFETY: `dst..dst + hd` is inside both caches (asserted above), and no
                // other token writes this slot (every slot is distinct), so no other task
                // touches these elements.
                let (kd, vd) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(kp.get().add(dst), hd),
                        std::slice::from_raw_parts_mut(vp.get().add(dst), hd),
                    )
                };
                E::store_slice(kd, &k[h * hd..][..hd]);
                E::store_slice(vd, &r[qd + kvd + h * hd..][..hd]);
            }
        }
    });
}

/// Panics unless every non-negative slot appears once.
fn assert_distinct_slots(slots: &[i64]) {
    // Most steps' slots ascend already (one prefill, or decode rows in block order): no sort.
    if slots.windows(2).all(|w| w[0] < 0 || w[0] < w[1]) {
        return;
    }
    let mut s: Vec<i64> = slots.iter().copied().filter(|&s| s >= 0).collect();
    s.sort_unstable();
    if let Some(w) = s.windows(2).find(|w| w[0] == w[1]) {
        panic!("two tokens share KV slot {}", w[0]);
    }
}

/// Scatters the K and V of each new token (`[num_tokens, num_kv_heads, head_dim]`) into its
/// slot, rounded to the cache's element type. A negative slot is padding and is skipped.
pub fn write_kv<E: KvElem>(
    k_cache: &mut [E],
    v_cache: &mut [E],
    layout: &KvLayout,
    k: &[f32],
    v: &[f32],
    slot_mapping: &[i64],
) {
    let hd = layout.head_dim;
    let row = layout.num_kv_heads * hd;
    for (t, &slot) in slot_mapping.iter().enumerate() {
        if slot < 0 {
            continue;
        }
        for h in 0..layout.num_kv_heads {
            let dst = layout.offset(slot as usize, h);
            let src = t * row + h * hd;
            E::store_slice(&mut k_cache[dst..dst + hd], &k[src..src + hd]);
            E::store_slice(&mut v_cache[dst..dst + hd], &v[src..src + hd]);
        }
    }
}

/// Copies whole pages (every head) within one cache: copy-on-write.
pub fn copy_blocks<E: Copy>(cache: &mut [E], layout: &KvLayout, pairs: &[(u32, u32)]) {
    let n = layout.block_elems();
    for &(src, dst) in pairs {
        let (s, d) = (src as usize * n, dst as usize * n);
        cache.copy_within(s..s + n, d);
    }
}

/// Copies pages from one cache to another (swap out: device → host; swap in: the reverse).
pub fn swap_blocks<E: Copy>(dst: &mut [E], src: &[E], layout: &KvLayout, pairs: &[(u32, u32)]) {
    let n = layout.block_elems();
    for &(s, d) in pairs {
        let (s, d) = (s as usize * n, d as usize * n);
        dst[d..d + n].copy_from_slice(&src[s..s + n]);
    }
}
