//! The CUDA-on-CPU emulator as a [`Device`]: the kernel files compiled by the host C++
//! compiler against the prelude in kernels/cuda/emu/ (built into this binary by `build.rs`,
//! or at run time by [`compile_module`] for a kernel file under test), host memory as device
//! memory, launches run to completion inside [`Device::launch`].
//!
//! What it checks, beyond running the kernel: arguments against the kernel's signature; launch
//! limits; barriers that every thread reaches (a deadlock is reported as "k of n threads
//! arrived"); warp collectives that every lane reaches, with full masks only; shared memory
//! sized exactly as launched, NaN-filled, bounds- and race-checked on every access;
//! cp.async copies waited for before use. See kernels/cuda/emu/emu.h for the design.
//!
//! The emulated device has the limits of an A100-class `sm_80` part, so a kernel that fits
//! here fits Ampere and Hopper: 108 SMs, 163 KiB of shared memory per block once opted in.
//! Its occupancy is computed, not measured: [`Device::max_active_blocks_per_sm`] returns
//! min(32 blocks, 2,048 threads / threads per block, 164 KiB / (shared memory + 1 KiB)),
//! without registers, which the emulator does not model.

mod buf;
mod compile;
mod ffi;
mod wrapper;

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

pub use buf::{EmuBuf, EmuMemory, EmuView, EmuViewMut};
pub use compile::compile_module;

use super::elem::GpuElem;
use super::gemm::{reference_gemm_nt, GemmShape};
use super::launch::{
    check_copy, DevElem, Device, DeviceBuf, DeviceBufMut, DeviceMemory, KernelArg, LaunchCfg,
};
use super::source::KernelSource;
use super::CudaError;

/// Multiprocessors of the emulated device.
pub const EMU_MULTIPROCESSORS: usize = 108;
/// Static plus dynamic shared memory per block of the emulated device, opted in (sm_80).
pub const EMU_MAX_SHARED_PER_BLOCK: usize = 163 * 1024;
const EMU_SHARED_PER_SM: usize = 164 * 1024;
const EMU_SHARED_RESERVED_PER_BLOCK: usize = 1024;
const EMU_THREADS_PER_SM: usize = 2048;
const EMU_BLOCKS_PER_SM: usize = 32;
/// Memory of the emulated device unless set (`Emu::with_capacity`): 2 GiB, a small GPU, so
/// that a KV cache sized from free memory stays within what the host can give.
pub const EMU_DEFAULT_CAPACITY: usize = 2 << 30;

/// One kernel file's entry points, from this binary or from a library compiled at run time.
pub struct Module {
    name: String,
    launch: ffi::LaunchFn,
    entries: HashMap<String, *const ffi::EntryInfo>,
    _lib: Option<libloading::Library>,
}

// SAFETY: the tables are immutable statics of the binary or of `_lib`, which lives as long;
// the launch function keeps its state per OS thread.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Module {
    /// # Safety
    /// `info` points to a module table that lives as long as `lib` (or forever).
    unsafe fn from_table(
        info: *const ffi::ModuleInfo,
        lib: Option<libloading::Library>,
    ) -> Result<Self, CudaError> {
        // SAFETY: per the contract above.
        let m = unsafe { &*info };
        if m.abi != ffi::ABI_VERSION {
            return Err(CudaError::EmulatorHost(format!(
                "module ABI {} (this binary speaks {})",
                m.abi,
                ffi::ABI_VERSION
            )));
        }
        let mut entries = HashMap::new();
        for i in 0..m.nentries as usize {
            // SAFETY: `nentries` entries, each with a NUL-terminated name.
            let e = unsafe { m.entries.add(i) };
            let name = unsafe { CStr::from_ptr((*e).name) }
                .to_string_lossy()
                .into_owned();
            entries.insert(name, e);
        }
        // SAFETY: a NUL-terminated name.
        let name = unsafe { CStr::from_ptr(m.name) }
            .to_string_lossy()
            .into_owned();
        Ok(Module {
            name,
            launch: m.launch,
            entries,
            _lib: lib,
        })
    }

    /// The module's name (its kernel file without `.cu`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The entry points it defines.
    pub fn entry_points(&self) -> Vec<String> {
        let mut v: Vec<String> = self.entries.keys().cloned().collect();
        v.sort();
        v
    }
}

/// The emulated device.
pub struct Emu {
    modules: Mutex<HashMap<String, Arc<Module>>>,
    /// Bit 0 reverses the order of blocks and threads; flipped by `vary_schedule`.
    schedule: AtomicU32,
    memory: Arc<EmuMemory>,
    capacity: usize,
}

impl Default for Emu {
    fn default() -> Self {
        Self::new()
    }
}

impl Emu {
    /// The emulator with the kernel files built into this binary.
    pub fn new() -> Self {
        Emu {
            modules: Mutex::new(HashMap::new()),
            schedule: AtomicU32::new(0),
            memory: Arc::new(EmuMemory::default()),
            capacity: EMU_DEFAULT_CAPACITY,
        }
    }

    /// The device reports `bytes` of memory in all (`Device::memory`); allocations beyond
    /// it still succeed while the host has memory (the emulator is a test device).
    pub fn with_capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// What this device has allocated and not freed.
    pub fn allocations(&self) -> &Arc<EmuMemory> {
        &self.memory
    }

    /// Replaces the module of the same name (a kernel file compiled at run time, for example a
    /// deliberately broken copy in a test).
    pub fn with_module(self, module: Module) -> Self {
        self.modules
            .lock()
            .insert(module.name.clone(), Arc::new(module));
        self
    }

    /// The module `src` runs with: a replacement, or the built-in one.
    pub fn module(&self, src: &KernelSource) -> Result<Arc<Module>, CudaError> {
        let mut modules = self.modules.lock();
        if let Some(m) = modules.get(src.name) {
            return Ok(m.clone());
        }
        let table = ffi::builtin(src.name).ok_or_else(|| CudaError::Unsupported {
            kernel: src.file_name(),
            problem: "not built into the emulator".into(),
        })?;
        // SAFETY: built-in tables are statics of this binary.
        let m = Arc::new(unsafe { Module::from_table(table, None) }?);
        modules.insert(src.name.to_string(), m.clone());
        Ok(m)
    }
}

impl Device for Emu {
    type Buf<T: DevElem> = EmuBuf<T>;

    fn describe(&self) -> String {
        format!("CUDA emulator on the CPU (sm_80 limits, {EMU_MULTIPROCESSORS} SMs)")
    }

    fn multiprocessors(&self) -> usize {
        EMU_MULTIPROCESSORS
    }

    fn max_shared_per_block(&self) -> usize {
        EMU_MAX_SHARED_PER_BLOCK
    }

    fn alloc_zeros<T: DevElem>(&self, n: usize) -> Result<EmuBuf<T>, CudaError> {
        EmuBuf::zeroed(n, &self.memory)
    }

    fn upload<T: DevElem>(&self, host: &[T]) -> Result<EmuBuf<T>, CudaError> {
        EmuBuf::from_host(host, &self.memory)
    }

    fn copy_htod<T: DevElem>(
        &self,
        host: &[T],
        dst: &mut impl DeviceBufMut<Self, T>,
    ) -> Result<(), CudaError> {
        check_copy("copy_htod", host.len(), dst.len())?;
        let p = dst.device_addr_mut(self) as *mut T;
        // SAFETY: emulator addresses are host pointers; `dst` holds host.len() elements
        // (checked) and is borrowed mutably, so nothing else touches them.
        unsafe { std::ptr::copy_nonoverlapping(host.as_ptr(), p, host.len()) };
        Ok(())
    }

    fn copy_dtoh<T: DevElem>(
        &self,
        src: &impl DeviceBuf<Self, T>,
        host: &mut [T],
    ) -> Result<(), CudaError> {
        check_copy("copy_dtoh", host.len(), src.len())?;
        let p = src.device_addr(self) as *const T;
        // SAFETY: as in `copy_htod`; launches are synchronous, so no kernel writes `src` now.
        unsafe { std::ptr::copy_nonoverlapping(p, host.as_mut_ptr(), host.len()) };
        Ok(())
    }

    fn gemm_nt<E: GpuElem>(
        &self,
        out: &mut impl DeviceBufMut<Self, E>,
        x: &impl DeviceBuf<Self, E>,
        w: &impl DeviceBuf<Self, E>,
        shape: GemmShape,
    ) -> Result<(), CudaError> {
        shape.check(out.len(), x.len(), w.len())?;
        let (o, xp, wp) = (
            out.device_addr_mut(self) as *mut E,
            x.device_addr(self) as *const E,
            w.device_addr(self) as *const E,
        );
        let GemmShape { m, k, n } = shape;
        // The output must not overlap an input: a GEMM on a GPU would race on it.
        let (ob, oe) = (o as usize, o as usize + m * n * std::mem::size_of::<E>());
        let overlaps = |p: usize, len: usize| p < oe && ob < p + len * std::mem::size_of::<E>();
        if m * n > 0 && (overlaps(xp as usize, m * k) || overlaps(wp as usize, n * k)) {
            return Err(CudaError::Unsupported {
                kernel: "gemm".into(),
                problem: "the output overlaps an input".into(),
            });
        }
        // SAFETY: emulator addresses are host pointers to at least the shape's elements
        // (checked), the output disjoint from the inputs (checked), no kernel running.
        let (o, xs, ws) = unsafe {
            (
                std::slice::from_raw_parts_mut(o, m * n),
                std::slice::from_raw_parts(xp, m * k),
                std::slice::from_raw_parts(wp, n * k),
            )
        };
        reference_gemm_nt(o, xs, ws, shape);
        Ok(())
    }

    fn memory(&self) -> Result<DeviceMemory, CudaError> {
        let used = self.memory.live().1;
        Ok(DeviceMemory {
            free: self.capacity.saturating_sub(used),
            total: self.capacity,
        })
    }

    fn sync(&self) -> Result<(), CudaError> {
        Ok(())
    }

    fn max_active_blocks_per_sm(
        &self,
        _src: &KernelSource,
        _entry: &str,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize, CudaError> {
        let by_threads = EMU_THREADS_PER_SM / (threads.max(1) as usize);
        let by_shared = EMU_SHARED_PER_SM / (shared_bytes as usize + EMU_SHARED_RESERVED_PER_BLOCK);
        Ok(EMU_BLOCKS_PER_SM.min(by_threads).min(by_shared))
    }

    unsafe fn launch(
        &self,
        src: &KernelSource,
        entry: &str,
        cfg: LaunchCfg,
        args: &[KernelArg],
    ) -> Result<(), CudaError> {
        let module = self.module(src)?;
        let e = *module
            .entries
            .get(entry)
            .ok_or_else(|| CudaError::Unsupported {
                kernel: entry.to_string(),
                problem: format!("not found in {}", src.file_name()),
            })?;
        let kinds: Vec<u8> = args.iter().map(|a| a.kind_code()).collect();
        let mut params: Vec<*mut c_void> = args.iter().map(|a| a.value_ptr()).collect();
        let c = ffi::LaunchConfig {
            grid: [cfg.grid.0, cfg.grid.1, cfg.grid.2],
            block: [cfg.block.0, cfg.block.1, cfg.block.2],
            shared_bytes: cfg.shared_bytes,
            max_shared_bytes: EMU_MAX_SHARED_PER_BLOCK as u32,
            schedule: self.schedule.load(Ordering::Relaxed),
        };
        let mut err = vec![0u8; 4096];
        // SAFETY: the caller guarantees the arguments; the emulator checks their kinds against
        // the entry's before running it, and returns only when the launch is over.
        let rc = unsafe {
            (module.launch)(
                e,
                &c,
                params.as_mut_ptr(),
                kinds.as_ptr(),
                kinds.len() as u32,
                err.as_mut_ptr() as *mut c_char,
                err.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let end = err.iter().position(|&b| b == 0).unwrap_or(err.len());
        Err(CudaError::Emulator {
            kernel: entry.to_string(),
            message: String::from_utf8_lossy(&err[..end]).into_owned(),
        })
    }

    fn vary_schedule(&self) {
        self.schedule.fetch_xor(1, Ordering::Relaxed);
    }
}
