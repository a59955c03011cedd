//! The forward pass's intermediate buffers, kept from one step to the next.
//!
//! Why: a step allocated about a dozen buffers (activations, the MLP's 2 x 1,536-wide rows,
//! the logits: 13 MB for 64 rows of SmolLM2's 49,152-token vocabulary) and dropped them at
//! its end. Each allocation was zeroed (`calloc`'s memset) or, for fresh pages, faulted in
//! and cleared by the kernel. Decode steps repeat the same shapes, so buffers of the exact
//! same length are handed back out as they are, on backends whose kernels overwrite every
//! element of their outputs (`Backend::reuse_scratch`). In `perf` of 64 x (128 + 1)
//! prefill, kernel page clearing went from 3.7 % to 2.1 % of the samples (the rest is first
//! writes to KV pages), and decode's memset from 0.9 % to 0.6 %.
//!
//! The pool holds at most one forward pass's buffers (its capacity), so what it keeps is
//! never more than the last step allocated anyway.

use parking_lot::Mutex;

use crate::backend::{Backend, BackendError};

/// Buffers of earlier steps, each with the length it was allocated with.
pub struct ScratchPool<B: Backend> {
    free: Mutex<Vec<(usize, B::Buf)>>,
    capacity: usize,
}

impl<B: Backend> ScratchPool<B> {
    /// A pool that keeps at most `capacity` buffers (the oldest go first).
    pub fn new(capacity: usize) -> Self {
        ScratchPool {
            free: Mutex::new(Vec::new()),
            capacity,
        }
    }

    /// A buffer of `n` elements whose contents the caller overwrites before reading them:
    /// a pooled one of that length where the backend allows it, else `zeros(n)`.
    pub fn take(&self, b: &B, n: usize) -> Result<B::Buf, BackendError> {
        if b.reuse_scratch() {
            let mut free = self.free.lock();
            if let Some(i) = free.iter().position(|(len, _)| *len == n) {
                // `remove`, not `swap_remove`: the order stays oldest first for `give`.
                return Ok(free.remove(i).1);
            }
        }
        b.zeros(n)
    }

    /// Hands back a buffer `take` gave out for `n` elements.
    pub fn give(&self, b: &B, n: usize, buf: B::Buf) {
        if b.reuse_scratch() {
            let mut free = self.free.lock();
            if free.len() >= self.capacity {
                free.remove(0);
            }
            if self.capacity > 0 {
                free.push((n, buf));
            }
        }
    }
}
