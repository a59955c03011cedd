//! The emulator's device memory: host allocations, 256-byte aligned as cudaMalloc's are. A
//! kernel reaches them through the address a launcher passes, so Rust never holds a reference
//! into one while a kernel runs; reads and writes from Rust copy.

use std::alloc::{alloc, alloc_zeroed, dealloc, Layout};
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Emu;
use crate::cuda::launch::{DevElem, DeviceBuf, DeviceBufMut};
use crate::cuda::CudaError;

const ALIGN: usize = 256;

/// What one emulated device has allocated and not yet freed: the leak check of a run
/// (every buffer counts from its allocation to its drop).
#[derive(Debug, Default)]
pub struct EmuMemory {
    buffers: AtomicUsize,
    bytes: AtomicUsize,
    peak_bytes: AtomicUsize,
}

impl EmuMemory {
    /// Live buffers and their bytes.
    pub fn live(&self) -> (usize, usize) {
        (
            self.buffers.load(Ordering::Relaxed),
            self.bytes.load(Ordering::Relaxed),
        )
    }

    /// The most bytes that were allocated at once.
    pub fn peak_bytes(&self) -> usize {
        self.peak_bytes.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        self.buffers.fetch_add(1, Ordering::Relaxed);
        let now = self.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak_bytes.fetch_max(now, Ordering::Relaxed);
    }

    fn remove(&self, bytes: usize) {
        self.buffers.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// `n` elements of `T` in the emulator's device memory.
pub struct EmuBuf<T> {
    ptr: NonNull<T>,
    len: usize,
    layout: Layout,
    memory: Arc<EmuMemory>,
}

// SAFETY: the buffer owns its allocation; access goes through &/&mut self or a kernel launch.
unsafe impl<T: Send> Send for EmuBuf<T> {}
unsafe impl<T: Sync> Sync for EmuBuf<T> {}

impl<T: DevElem> EmuBuf<T> {
    fn layout(len: usize) -> Result<Layout, CudaError> {
        let bytes = len.max(1) * std::mem::size_of::<T>().max(1);
        Layout::from_size_align(bytes, ALIGN)
            .map_err(|_| CudaError::EmulatorHost(format!("cannot allocate {len} elements")))
    }

    pub(super) fn zeroed(len: usize, memory: &Arc<EmuMemory>) -> Result<Self, CudaError> {
        let layout = Self::layout(len)?;
        // SAFETY: a non-zero-sized layout; zero bits are a valid T (DevElem: ValidAsZeroBits).
        let ptr = unsafe { alloc_zeroed(layout) } as *mut T;
        let ptr =
            NonNull::new(ptr).ok_or_else(|| CudaError::EmulatorHost("out of memory".into()))?;
        memory.add(layout.size());
        Ok(EmuBuf {
            ptr,
            len,
            layout,
            memory: memory.clone(),
        })
    }

    pub(super) fn from_host(host: &[T], memory: &Arc<EmuMemory>) -> Result<Self, CudaError> {
        let layout = Self::layout(host.len())?;
        // SAFETY: a non-zero-sized layout; every element is written before the buffer is used.
        let ptr = unsafe { alloc(layout) } as *mut T;
        let ptr =
            NonNull::new(ptr).ok_or_else(|| CudaError::EmulatorHost("out of memory".into()))?;
        // SAFETY: `ptr` has room for host.len() elements and does not overlap `host`.
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), ptr.as_ptr(), host.len()) };
        memory.add(layout.size());
        Ok(EmuBuf {
            ptr,
            len: host.len(),
            layout,
            memory: memory.clone(),
        })
    }

    /// A copy of the contents.
    pub fn to_vec(&self) -> Vec<T> {
        // SAFETY: `len` initialised elements; no kernel runs while `&self` is held by Rust
        // code (launches are synchronous and take their buffers by address).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }.to_vec()
    }

    fn range(&self, r: impl RangeBounds<usize>) -> (usize, usize) {
        let start = match r.start_bound() {
            Bound::Included(&s) => s,
            Bound::Excluded(&s) => s + 1,
            Bound::Unbounded => 0,
        };
        let end = match r.end_bound() {
            Bound::Included(&e) => e + 1,
            Bound::Excluded(&e) => e,
            Bound::Unbounded => self.len,
        };
        assert!(
            start <= end && end <= self.len,
            "slice {start}..{end} of {}",
            self.len
        );
        (start, end)
    }

    /// Elements `r` as a read-only view.
    pub fn slice(&self, r: impl RangeBounds<usize>) -> EmuView<'_, T> {
        let (s, e) = self.range(r);
        EmuView {
            addr: self.ptr.as_ptr() as u64 + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            _buf: PhantomData,
        }
    }

    /// Elements `r` as a writable view.
    pub fn slice_mut(&mut self, r: impl RangeBounds<usize>) -> EmuViewMut<'_, T> {
        let (s, e) = self.range(r);
        EmuViewMut {
            addr: self.ptr.as_ptr() as u64 + (s * std::mem::size_of::<T>()) as u64,
            len: e - s,
            _buf: PhantomData,
        }
    }
}

impl<T> Drop for EmuBuf<T> {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr() as *mut u8, self.layout) };
        self.memory.remove(self.layout.size());
    }
}

/// Part of an [`EmuBuf`], read-only.
pub struct EmuView<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a [T]>,
}

/// Part of an [`EmuBuf`], writable.
pub struct EmuViewMut<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

impl<T> DeviceBuf<Emu, T> for EmuBuf<T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _: &Emu) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl<T> DeviceBufMut<Emu, T> for EmuBuf<T> {
    fn device_addr_mut(&mut self, _: &Emu) -> u64 {
        self.ptr.as_ptr() as u64
    }
}

impl<T> DeviceBuf<Emu, T> for EmuView<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _: &Emu) -> u64 {
        self.addr
    }
}

impl<T> DeviceBuf<Emu, T> for EmuViewMut<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _: &Emu) -> u64 {
        self.addr
    }
}

impl<T> DeviceBufMut<Emu, T> for EmuViewMut<'_, T> {
    fn device_addr_mut(&mut self, _: &Emu) -> u64 {
        self.addr
    }
}
