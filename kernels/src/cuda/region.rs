//! Parts of device buffers, for any [`Device`](super::Device): an address and a length
//! borrowed from the buffer they lie in. The backend takes the first `n` elements of a
//! reused activation buffer, or one page of a KV cache, through these, so its code does not
//! depend on how a device's own buffer type slices.

use std::marker::PhantomData;
use std::ops::Range;

use super::launch::{DevElem, DeviceBuf, DeviceBufMut};
use super::CudaError;

/// Elements of a device buffer, read-only.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a [T]>,
}

/// Elements of a device buffer, writable.
#[derive(Debug)]
pub struct RegionMut<'a, T> {
    addr: u64,
    len: usize,
    _buf: PhantomData<&'a mut [T]>,
}

fn check_range(what: &str, r: &Range<usize>, len: usize) -> Result<(), CudaError> {
    if r.start <= r.end && r.end <= len {
        Ok(())
    } else {
        Err(CudaError::Unsupported {
            kernel: what.to_string(),
            problem: format!("elements {}..{} of a buffer of {len}", r.start, r.end),
        })
    }
}

fn offset<T>(addr: u64, start: usize) -> u64 {
    addr + (start * std::mem::size_of::<T>()) as u64
}

/// Elements `r` of `buf`, or an error naming `what` if they are not all inside it.
pub fn region<'a, D: ?Sized, T: DevElem>(
    dev: &D,
    what: &str,
    buf: &'a impl DeviceBuf<D, T>,
    r: Range<usize>,
) -> Result<Region<'a, T>, CudaError> {
    check_range(what, &r, buf.len())?;
    Ok(Region {
        addr: offset::<T>(buf.device_addr(dev), r.start),
        len: r.len(),
        _buf: PhantomData,
    })
}

/// Elements `r` of `buf`, writable, or an error naming `what` if they are not all inside it.
pub fn region_mut<'a, D: ?Sized, T: DevElem>(
    dev: &D,
    what: &str,
    buf: &'a mut impl DeviceBufMut<D, T>,
    r: Range<usize>,
) -> Result<RegionMut<'a, T>, CudaError> {
    check_range(what, &r, buf.len())?;
    Ok(RegionMut {
        addr: offset::<T>(buf.device_addr_mut(dev), r.start),
        len: r.len(),
        _buf: PhantomData,
    })
}

impl<D: ?Sized, T> DeviceBuf<D, T> for Region<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _: &D) -> u64 {
        self.addr
    }
}

impl<D: ?Sized, T> DeviceBuf<D, T> for RegionMut<'_, T> {
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self, _: &D) -> u64 {
        self.addr
    }
}

impl<D: ?Sized, T> DeviceBufMut<D, T> for RegionMut<'_, T> {
    fn device_addr_mut(&mut self, _: &D) -> u64 {
        self.addr
    }
}
