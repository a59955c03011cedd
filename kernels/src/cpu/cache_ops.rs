//! Writing into and copying between pages of the KV cache.

use super::kv_store::KvElem;
use crate::layout::KvLayout;

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
