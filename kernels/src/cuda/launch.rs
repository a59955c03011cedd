//! The launch seam: what the launchers (`ops`, `attention`) need of a device, with two
//! implementations, the GPU through the CUDA driver ([`Gpu`](super::Gpu)) and the CUDA-on-CPU
//! emulator ([`Emu`](super::Emu), host memory as device memory). The launchers are written
//! once against [`Device`], so their shape checks, grid shapes, shared-memory sizes and argument
//! order are the ones under test on the emulator.
//!
//! Arguments travel as cuLaunchKernel takes them: one value per kernel parameter, in order.
//! Each carries its kind (a scalar type, or a pointer with its element type and whether the
//! launcher lets the kernel write through it), which the emulator checks against the kernel's
//! signature before it runs anything.

use super::elem::GpuElem;
use super::gemm::GemmShape;
use super::source::KernelSource;
use super::CudaError;

/// Element types of device buffers, as the kernels' pointer parameters name them (the codes
/// are the emulator's, kernels/cuda/emu/emu_abi.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ElemKind {
    F32 = 0,
    Bf16 = 1,
    F16 = 2,
    I32 = 3,
    I64 = 4,
    U64 = 5,
}

/// A type device buffers hold.
pub trait DevElem:
    cudarc::driver::DeviceRepr
    + cudarc::driver::ValidAsZeroBits
    + Copy
    + Default
    + Send
    + Sync
    + Unpin
    + 'static
{
    const KIND: ElemKind;
}

macro_rules! dev_elem {
    ($($t:ty => $k:ident),*) => {$(impl DevElem for $t { const KIND: ElemKind = ElemKind::$k; })*};
}
dev_elem!(f32 => F32, half::bf16 => Bf16, half::f16 => F16, i32 => I32, i64 => I64, u64 => U64);

/// One kernel argument.
#[derive(Debug, Clone, Copy)]
pub enum KernelArg {
    /// A device address; `mutable` when the launcher lets the kernel write through it.
    Ptr {
        addr: u64,
        elem: ElemKind,
        mutable: bool,
    },
    I32(i32),
    I64(i64),
    F32(f32),
}

impl KernelArg {
    /// The emulator's code for this argument's kind.
    pub fn kind_code(&self) -> u8 {
        match *self {
            KernelArg::I32(_) => 1,
            KernelArg::I64(_) => 2,
            KernelArg::F32(_) => 3,
            KernelArg::Ptr { elem, mutable, .. } => {
                0x10 | elem as u8 | if mutable { 0x20 } else { 0 }
            }
        }
    }

    /// A pointer to the argument's value, as cuLaunchKernel's `kernelParams` holds it.
    pub fn value_ptr(&self) -> *mut std::ffi::c_void {
        match self {
            KernelArg::Ptr { addr, .. } => addr as *const u64 as *mut _,
            KernelArg::I32(v) => v as *const i32 as *mut _,
            KernelArg::I64(v) => v as *const i64 as *mut _,
            KernelArg::F32(v) => v as *const f32 as *mut _,
        }
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchCfg {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_bytes: u32,
}

impl LaunchCfg {
    /// `blocks` blocks of `threads` threads in a row, no dynamic shared memory.
    pub fn rows(blocks: usize, threads: u32) -> Self {
        LaunchCfg {
            grid: (blocks as u32, 1, 1),
            block: (threads, 1, 1),
            shared_bytes: 0,
        }
    }
}

/// A buffer on device `D` a kernel may read.
pub trait DeviceBuf<D: ?Sized, T> {
    /// Elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    fn device_addr(&self, dev: &D) -> u64;
}

/// A buffer on device `D` a kernel may write.
pub trait DeviceBufMut<D: ?Sized, T>: DeviceBuf<D, T> {
    fn device_addr_mut(&mut self, dev: &D) -> u64;
}

/// `buf` as a read-only kernel argument.
pub fn arg<D: ?Sized, T: DevElem>(dev: &D, buf: &impl DeviceBuf<D, T>) -> KernelArg {
    KernelArg::Ptr {
        addr: buf.device_addr(dev),
        elem: T::KIND,
        mutable: false,
    }
}

/// `buf` as a kernel argument the kernel may write through.
pub fn arg_mut<D: ?Sized, T: DevElem>(dev: &D, buf: &mut impl DeviceBufMut<D, T>) -> KernelArg {
    KernelArg::Ptr {
        addr: buf.device_addr_mut(dev),
        elem: T::KIND,
        mutable: true,
    }
}

/// A device's memory, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceMemory {
    pub free: usize,
    pub total: usize,
}

/// What the launchers and the CUDA backend need of a device.
pub trait Device {
    /// An owned buffer of `T` on this device.
    type Buf<T: DevElem>: DeviceBufMut<Self, T> + Send + Sync;

    /// "NVIDIA H100 (sm_90, 132 SMs)", "CUDA emulator (sm_80 limits, 108 SMs)".
    fn describe(&self) -> String;
    fn multiprocessors(&self) -> usize;
    /// Static plus dynamic shared memory one block may use (the opt-in limit).
    fn max_shared_per_block(&self) -> usize;

    fn alloc_zeros<T: DevElem>(&self, n: usize) -> Result<Self::Buf<T>, CudaError>;
    fn upload<T: DevElem>(&self, host: &[T]) -> Result<Self::Buf<T>, CudaError>;
    /// All of `buf`, on the host (a [`Device::copy_dtoh`] into a new vector).
    fn download<T: DevElem>(&self, buf: &impl DeviceBuf<Self, T>) -> Result<Vec<T>, CudaError> {
        let mut out = vec![T::default(); buf.len()];
        self.copy_dtoh(buf, &mut out)?;
        Ok(out)
    }
    /// Copies all of `host` into the first `host.len()` elements of `dst`. The host memory
    /// may be reused as soon as this returns.
    fn copy_htod<T: DevElem>(
        &self,
        host: &[T],
        dst: &mut impl DeviceBufMut<Self, T>,
    ) -> Result<(), CudaError>;
    /// Fills all of `host` from the first `host.len()` elements of `src`, after the work
    /// queued before it (so a fault of that work surfaces here).
    fn copy_dtoh<T: DevElem>(
        &self,
        src: &impl DeviceBuf<Self, T>,
        host: &mut [T],
    ) -> Result<(), CudaError>;
    /// Queues `out[m, n] = x[m, k] · w[n, k]ᵀ`, f32 accumulation (module `gemm`).
    fn gemm_nt<E: GpuElem>(
        &self,
        out: &mut impl DeviceBufMut<Self, E>,
        x: &impl DeviceBuf<Self, E>,
        w: &impl DeviceBuf<Self, E>,
        shape: GemmShape,
    ) -> Result<(), CudaError>;
    /// Free and total memory now.
    fn memory(&self) -> Result<DeviceMemory, CudaError>;
    /// Waits for all queued work; surfaces any asynchronous failure.
    fn sync(&self) -> Result<(), CudaError>;

    /// How many blocks of `entry` (with `threads` threads and `shared_bytes` of dynamic shared
    /// memory) one multiprocessor holds at once (cuOccupancyMaxActiveBlocksPerMultiprocessor).
    fn max_active_blocks_per_sm(
        &self,
        src: &KernelSource,
        entry: &str,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize, CudaError>;

    /// Queues kernel `entry` of `src`. Dynamic shared memory above 48 KiB is opted into for
    /// the kernel here.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters, and every pointer must address a live
    /// buffer of this device large enough for what the kernel reads and writes through it.
    unsafe fn launch(
        &self,
        src: &KernelSource,
        entry: &str,
        cfg: LaunchCfg,
        args: &[KernelArg],
    ) -> Result<(), CudaError>;

    /// Called between two runs that must give bit-identical results: the emulator switches
    /// to its other schedule (blocks and threads in reverse order), so a result that depends
    /// on the order differs. A GPU varies its schedule by itself.
    fn vary_schedule(&self) {}
}

/// Fails unless `dev_len` elements hold `host_len` (a copy's bounds).
pub fn check_copy(op: &str, host_len: usize, dev_len: usize) -> Result<(), CudaError> {
    check(op, host_len <= dev_len, || {
        format!("{host_len} elements to or from a device buffer of {dev_len}")
    })
}

/// Fails with `problem` for `kernel` unless `ok`.
pub fn check(kernel: &str, ok: bool, problem: impl FnOnce() -> String) -> Result<(), CudaError> {
    if ok {
        Ok(())
    } else {
        Err(CudaError::Unsupported {
            kernel: kernel.to_string(),
            problem: problem(),
        })
    }
}

/// Dynamic shared memory a kernel may use without opting in.
pub const DEFAULT_SHARED_LIMIT: usize = 48 * 1024;
