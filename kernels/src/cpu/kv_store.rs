//! The element type of the KV cache (`--kv-cache-dtype`) and one layer's K or V storage.
//!
//! Why f16: a decode step streams the whole cached context of every sequence through paged
//! attention. In f32, a 64-sequence step at context ~190 reads about 570 MB of K and V and
//! attention was bandwidth-bound at ~10 GiB/s (benches/RESULTS.md); f16 halves those bytes
//! and doubles the tokens a given `--kv-cache-memory` holds. It is llama.cpp's default KV
//! type. Keys and values after RoPE are far inside f16's range, and its 11-bit significand
//! rounds them to about 5e-4 relative. Arithmetic stays f32: values are widened on load.

use half::f16;

pub use crate::layout::KvDtype;
use crate::layout::KvLayout;

/// An element the CPU kernels can keep in the KV cache.
pub trait KvElem: Copy + Default + Send + Sync + 'static {
    const DTYPE: KvDtype;
    fn from_f32(v: f32) -> Self;
    fn to_f32(self) -> f32;
    /// `dst[i] = from_f32(src[i])` for a whole row, vectorized where the CPU allows.
    fn store_slice(dst: &mut [Self], src: &[f32]);
}

impl KvElem for f32 {
    const DTYPE: KvDtype = KvDtype::F32;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        v
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    fn store_slice(dst: &mut [Self], src: &[f32]) {
        dst.copy_from_slice(src);
    }
}

impl KvElem for f16 {
    const DTYPE: KvDtype = KvDtype::F16;
    #[inline(always)]
    fn from_f32(v: f32) -> Self {
        f16::from_f32(v)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    /// Eight at a time with F16C where present (the same round-to-nearest-even as
    /// `from_f32`). Element by element, the conversions made writing a step's K and V
    /// 5 % of a 64 × (128 + 128) run: about 10 ns each, 24,576 per layer per decode step.
    fn store_slice(dst: &mut [Self], src: &[f32]) {
        use half::slice::HalfFloatSliceExt;
        dst.convert_from_f32_slice(src);
    }
}

/// `n` f16 zeros, allocated as zeroed memory. Why not `vec![f16::ZERO; n]`: the standard
/// library only knows primitive zeros, so that writes every element, touching (and
/// committing) the whole cache at start-up: a profile of a short run spent 12-21 % of its
/// time in the kernel zeroing those pages. Zeroed integers come from `calloc`, whose pages
/// are mapped lazily, like the f32 cache's.
fn zeroed_f16(n: usize) -> Vec<f16> {
    let mut v = std::mem::ManuallyDrop::new(vec![0u16; n]);
    // SAFETY: f16 is `repr(transparent)` over u16 (same size, alignment and valid bit
    // patterns), so the allocation is a valid Vec<f16>; all-zero bits are +0.0.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<f16>(), v.len(), v.capacity()) }
}

/// One layer's K (or V) cache on the host, in its dtype: the CPU backend's cache and every
/// backend's swap space.
#[derive(Debug, Clone)]
pub enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

impl KvStore {
    /// `n` zero elements of `dtype`.
    pub fn zeros(n: usize, dtype: KvDtype) -> Self {
        match dtype {
            KvDtype::F32 => KvStore::F32(vec![0.0; n]),
            KvDtype::F16 => KvStore::F16(zeroed_f16(n)),
        }
    }

    pub fn dtype(&self) -> KvDtype {
        match self {
            KvStore::F32(_) => KvDtype::F32,
            KvStore::F16(_) => KvDtype::F16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvStore::F32(v) => v.len(),
            KvStore::F16(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes behind the elements (for huge-page advice and byte accounting).
    pub fn as_bytes(&self) -> &[u8] {
        fn bytes<T>(v: &[T]) -> &[u8] {
            // SAFETY: f32 and f16 are plain old data; the byte view covers the same memory.
            unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
        }
        match self {
            KvStore::F32(v) => bytes(v),
            KvStore::F16(v) => bytes(v),
        }
    }

    /// Writes every 4 KiB page of the store once (keeping its contents), so the operating
    /// system backs all of it now rather than on the first K/V written to each page.
    pub fn prefault(&mut self) {
        fn touch<T: Copy + Send>(v: &mut [T]) {
            let per_page = (4096 / std::mem::size_of::<T>()).max(1);
            // A few megabytes per task; the pages of one task are touched in order.
            super::team::for_each_chunk_mut(v, per_page * 512, |_, part| {
                for i in (0..part.len()).step_by(per_page) {
                    // SAFETY: `i` is in bounds; a volatile write of the value already
                    // there, so the compiler cannot drop the store.
                    unsafe { std::ptr::write_volatile(&mut part[i], part[i]) };
                }
            });
        }
        match self {
            KvStore::F32(v) => touch(v),
            KvStore::F16(v) => touch(v),
        }
    }

    /// Element `i` widened to f32 (tests and diagnostics).
    pub fn get(&self, i: usize) -> f32 {
        match self {
            KvStore::F32(v) => v[i],
            KvStore::F16(v) => v[i].to_f32(),
        }
    }

    /// Copies whole pages within this cache: copy-on-write.
    pub fn copy_blocks(&mut self, layout: &KvLayout, pairs: &[(u32, u32)]) {
        match self {
            KvStore::F32(v) => super::copy_blocks(v, layout, pairs),
            KvStore::F16(v) => super::copy_blocks(v, layout, pairs),
        }
    }

    /// Copies pages `(src, dst)` from `src` into this store (swap out or in).
    ///
    /// # Panics
    /// If the two stores hold different dtypes: swap space is always allocated in the
    /// cache's own dtype.
    pub fn swap_from(&mut self, src: &KvStore, layout: &KvLayout, pairs: &[(u32, u32)]) {
        match (self, src) {
            (KvStore::F32(d), KvStore::F32(s)) => super::swap_blocks(d, s, layout, pairs),
            (KvStore::F16(d), KvStore::F16(s)) => super::swap_blocks(d, s, layout, pairs),
            (d, s) => panic!(
                "swap between a {} and a {} KV store",
                d.dtype().name(),
                s.dtype().name()
            ),
        }
    }
}
