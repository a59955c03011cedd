//! Memory backed by transparent huge pages: the KV cache's advice, and the buffers packed
//! weights live in.
//!
//! Why, for weights: a decode step streams every weight byte from memory once, and with
//! 4 KiB pages that stream crosses a page, and a TLB entry, every 4 KiB. A C streaming sum
//! here read 28.6 GB/s on one thread from 4 KiB pages and 34.2 GB/s from huge pages, and a
//! single-sequence bf16 decode step ran 3-5 % faster with every anonymous mapping huge;
//! with the weights in these chunks, single-stream runs were 1.05-1.17x (benches/RESULTS.md). Linux gives huge pages only to 2 MiB-aligned ranges that ask for
//! them (`madvise` mode, the common default), and a model's matrices are mostly smaller
//! than 2 MiB (SmolLM2's bf16 O projection is 0.66 MB), so each would get none of its own.
//! Matrices are therefore cut from shared 2 MiB-aligned chunks, laid end to end.

use half::{bf16, f16};
use parking_lot::Mutex;
use std::alloc::Layout;
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::{Arc, Weak};

/// The huge page size advised for (x86-64 and arm64 Linux with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;
/// Size of a shared chunk. Only the part handed out is ever touched, so the rest of the
/// last chunk costs address space, not memory.
const CHUNK: usize = 64 << 20;
/// Buffers above this size get a chunk of their own (rounded up to whole huge pages).
const OWN_CHUNK_ABOVE: usize = CHUNK / 4;
/// Buffers start on cache-line boundaries inside a chunk.
const ALIGN: usize = 64;

/// Asks the kernel to back the 2 MiB-aligned interior of `buf` with transparent huge
/// pages (Linux only; best effort, silently without effect elsewhere or where THP is off).
/// Pages already touched stay as they are: advise before the first write.
pub fn advise_huge_pages(buf: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        let start = buf.as_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (lo, hi) = (
            start.next_multiple_of(HUGE_PAGE),
            end / HUGE_PAGE * HUGE_PAGE,
        );
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `buf`'s allocation; MADV_HUGEPAGE changes only
            // how the kernel backs those pages, not their contents or validity.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

/// Element types for which all-zero bytes are a valid value (0.0).
///
/// # Safety
/// Implementors must be plain data: any all-zero bit pattern is a valid value, and the
/// type has no drop glue.
pub unsafe trait ZeroBits: Copy + Send + Sync + 'static {}
// SAFETY: IEEE 754 formats; zero bits are +0.0.
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for bf16 {}
unsafe impl ZeroBits for f16 {}

/// One 2 MiB-aligned allocation, advised for huge pages, never touched until handed out.
struct Chunk {
    ptr: NonNull<u8>,
    layout: Layout,
}

// SAFETY: the chunk is raw memory; `HugePageBuf` guarantees disjoint access to its parts.
unsafe impl Send for Chunk {}
unsafe impl Sync for Chunk {}

impl Chunk {
    fn new(bytes: usize) -> Chunk {
        let size = bytes.max(1).next_multiple_of(HUGE_PAGE);
        let layout = Layout::from_size_align(size, HUGE_PAGE).expect("chunk layout");
        // SAFETY: the layout has a non-zero size. The memory is uninitialised; every
        // buffer zeroes its range before anything reads it.
        let raw = unsafe { std::alloc::alloc(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the allocation is `size` bytes; it is only advised here, not read.
        advise_huge_pages(unsafe { std::slice::from_raw_parts(ptr.as_ptr(), size) });
        Chunk { ptr, layout }
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        // SAFETY: allocated in `Chunk::new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// The chunk buffers are being cut from, held weakly: once every buffer in it has been
/// dropped it is freed, and the next buffer starts a new one, so the process holds no
/// memory for models it has dropped.
static CURRENT: Mutex<(Weak<Chunk>, usize)> = Mutex::new((Weak::new(), 0));

/// A zeroed `[E]` of fixed length in huge-page-backed memory (see the module docs).
pub struct HugePageBuf<E: ZeroBits> {
    chunk: Arc<Chunk>,
    offset: usize,
    len: usize,
    _elem: PhantomData<E>,
}

impl<E: ZeroBits> HugePageBuf<E> {
    /// `len` zeros.
    pub fn zeroed(len: usize) -> Self {
        let bytes = len
            .checked_mul(size_of::<E>())
            .expect("buffer size overflows");
        let (chunk, offset) = if bytes > OWN_CHUNK_ABOVE {
            (Arc::new(Chunk::new(bytes)), 0)
        } else {
            let mut cur = CURRENT.lock();
            let offset = cur.1.next_multiple_of(ALIGN);
            match cur.0.upgrade() {
                Some(chunk) if offset + bytes <= chunk.layout.size() => {
                    cur.1 = offset + bytes;
                    (chunk, offset)
                }
                _ => {
                    let chunk = Arc::new(Chunk::new(CHUNK));
                    *cur = (Arc::downgrade(&chunk), bytes);
                    (chunk, 0)
                }
            }
        };
        // SAFETY: [offset, offset + bytes) lies inside the chunk and belongs to this
        // buffer alone (the bump offset never hands a byte out twice); zero bits are a
        // valid `E`.
        unsafe { chunk.ptr.as_ptr().add(offset).write_bytes(0, bytes) };
        HugePageBuf {
            chunk,
            offset,
            len,
            _elem: PhantomData,
        }
    }

    fn as_ptr(&self) -> *mut E {
        // SAFETY: `offset` is inside the chunk and a multiple of `ALIGN` (≥ E's alignment
        // for every `ZeroBits` type here), from a 2 MiB-aligned base.
        unsafe { self.chunk.ptr.as_ptr().add(self.offset).cast() }
    }
}

impl<E: ZeroBits> std::ops::Deref for HugePageBuf<E> {
    type Target = [E];
    fn deref(&self) -> &[E] {
        // SAFETY: `len` initialised elements of this buffer's own range.
        unsafe { std::slice::from_raw_parts(self.as_ptr(), self.len) }
    }
}

impl<E: ZeroBits> std::ops::DerefMut for HugePageBuf<E> {
    fn deref_mut(&mut self) -> &mut [E] {
        // SAFETY: as for `deref`; no other buffer covers this range, and `&mut self` makes
        // this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.as_ptr(), self.len) }
    }
}

impl<E: ZeroBits> Clone for HugePageBuf<E> {
    fn clone(&self) -> Self {
        let mut copy = Self::zeroed(self.len);
        copy.copy_from_slice(self);
        copy
    }
}

impl<E: ZeroBits> std::fmt::Debug for HugePageBuf<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HugePageBuf")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_zeroed_disjoint_and_aligned() {
        let mut bufs: Vec<HugePageBuf<f32>> =
            (1..40).map(|i| HugePageBuf::zeroed(i * 997)).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert!(b.iter().all(|&v| v == 0.0));
            assert_eq!(b.as_ptr() as usize % ALIGN, 0);
            b.fill(i as f32);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert_eq!(b.len(), (i + 1) * 997);
            assert!(b.iter().all(|&v| v == i as f32), "buffer {i} overwritten");
        }
    }

    #[test]
    fn large_buffers_get_their_own_chunk_and_clones_copy() {
        let mut big = HugePageBuf::<bf16>::zeroed(OWN_CHUNK_ABOVE / 2 + 1);
        assert_eq!(big.as_ptr() as usize % HUGE_PAGE, 0);
        big[7] = bf16::from_f32(3.0);
        let copy = big.clone();
        big[7] = bf16::ZERO;
        assert_eq!(copy[7], bf16::from_f32(3.0));
        assert_eq!(copy.len(), big.len());
        let empty = HugePageBuf::<f32>::zeroed(0);
        assert!(empty.is_empty());
    }
}
