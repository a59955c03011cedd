//! One GPU: its context, its own stream (created, not the legacy NULL stream, which would
//! serialise against every other stream of the process), its cuBLAS handle, and its kernels
//! compiled for its architecture.
//!
//! Modules are compiled on first use (NVRTC, to machine code for the device's own `sm_XY`)
//! and the CUBIN is loaded as it is: no second JIT of PTX by the driver. Modules and their
//! functions are cached for the life of the `Gpu`, so a process pays for each `.cu` file once.

use std::collections::HashMap;
use std::ffi::{c_int, CString};
use std::sync::Arc;

use cudarc::driver::sys::{self, CUdevice_attribute as Attr, CUfunction_attribute as FnAttr};
use cudarc::driver::{
    result, CudaContext, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut,
};
use parking_lot::Mutex;

use cudarc::cublas::CudaBlas;

use super::elem::GpuElem;
use super::gemm::{cublas_gemm_nt, GemmShape};
use super::launch::{
    check_copy, DevElem, Device, DeviceBuf, DeviceBufMut, DeviceMemory, KernelArg, LaunchCfg,
};
use super::libs::{locate, CudaLib};
use super::source::KernelSource;
use super::{compile, Arch, CudaError};

/// What `pagedrt doctor` shows about a device.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub arch: Arch,
    pub total_bytes: usize,
    pub free_bytes: usize,
    pub multiprocessors: usize,
    /// Static plus dynamic shared memory a block may use once opted in.
    pub max_shared_per_block: usize,
}

/// A loaded module, unloaded with its context current.
struct Module {
    handle: sys::CUmodule,
    ctx: Arc<CudaContext>,
}

// SAFETY: a CUmodule handle may be used from any thread whose current context is its own;
// every use binds `ctx` first.
unsafe impl Send for Module {}
unsafe impl Sync for Module {}

impl Drop for Module {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: loaded by cuModuleLoadData, unloaded once; its functions go with it.
            let _ = unsafe { result::module::unload(self.handle) };
        }
    }
}

/// A kernel of a loaded module, with the dynamic shared memory it has been opted into.
#[derive(Clone, Copy)]
struct Function {
    handle: sys::CUfunction,
    shared_optin: u32,
}

// SAFETY: as for Module (its module outlives it: both live until the Gpu drops).
unsafe impl Send for Function {}

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    modules: Mutex<HashMap<&'static str, Arc<Module>>>,
    functions: Mutex<HashMap<(&'static str, String), Function>>,
    /// Made on the first GEMM, so a machine without cuBLAS can still run the kernels.
    blas: Mutex<Option<Arc<CudaBlas>>>,
}

pub(crate) fn driver_err(e: cudarc::driver::DriverError) -> CudaError {
    CudaError::Driver(e)
}

/// The number of CUDA devices, or why there are none usable.
pub fn device_count() -> Result<usize, CudaError> {
    locate(CudaLib::Driver)?;
    let n = CudaContext::device_count().map_err(driver_err)?;
    Ok(n.max(0) as usize)
}

impl Gpu {
    /// Opens device `ordinal` (its primary context) with one stream.
    pub fn open(ordinal: usize) -> Result<Self, CudaError> {
        locate(CudaLib::Driver)?;
        let ctx = CudaContext::new(ordinal).map_err(driver_err)?;
        // One stream, so cudarc's per-buffer event tracking buys nothing and costs two
        // event records per launch.
        // SAFETY: every launch and copy of this Gpu goes through `self.stream`.
        unsafe { ctx.disable_event_tracking() };
        let (major, minor) = ctx.compute_capability().map_err(driver_err)?;
        let (free_bytes, total_bytes) =
            cudarc::driver::result::mem_get_info().map_err(driver_err)?;
        let attr = |a| ctx.attribute(a).map_err(driver_err).map(|v| v as usize);
        let info = DeviceInfo {
            ordinal,
            name: ctx.name().map_err(driver_err)?,
            arch: Arch {
                major: major as u32,
                minor: minor as u32,
                machine_code: true,
            },
            total_bytes,
            free_bytes,
            multiprocessors: attr(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            max_shared_per_block: attr(
                Attr::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )?,
        };
        let stream = ctx.new_stream().map_err(driver_err)?;
        Ok(Gpu {
            ctx,
            stream,
            info,
            modules: Mutex::new(HashMap::new()),
            functions: Mutex::new(HashMap::new()),
            blas: Mutex::new(None),
        })
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// The cuBLAS handle on this GPU's stream, made on first use.
    fn blas(&self) -> Result<Arc<CudaBlas>, CudaError> {
        let mut slot = self.blas.lock();
        if let Some(b) = slot.as_ref() {
            return Ok(b.clone());
        }
        locate(CudaLib::Cublas)?;
        let b = Arc::new(CudaBlas::new(self.stream.clone()).map_err(CudaError::Blas)?);
        *slot = Some(b.clone());
        Ok(b)
    }

    /// Waits for all queued work; surfaces any asynchronous launch failure.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_err)
    }

    /// `src` compiled for this GPU and loaded, from the cache or now. NVRTC runs outside the
    /// lock, so several modules can compile at once (see `preload`).
    fn module(&self, src: &KernelSource) -> Result<Arc<Module>, CudaError> {
        if let Some(m) = self.modules.lock().get(src.name) {
            return Ok(m.clone());
        }
        let compiled = compile(src, &self.info.arch, false)?;
        let cubin = compiled.cubin.ok_or_else(|| CudaError::Unsupported {
            kernel: src.file_name(),
            problem: "NVRTC gave no CUBIN for a machine-code target".into(),
        })?;
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: `cubin` is a complete ELF image produced by NVRTC for this device's arch;
        // the driver copies what it needs before returning.
        let handle =
            unsafe { result::module::load_data(cubin.as_ptr() as *const _) }.map_err(driver_err)?;
        let m = Arc::new(Module {
            handle,
            ctx: self.ctx.clone(),
        });
        Ok(self.modules.lock().entry(src.name).or_insert(m).clone())
    }

    fn function(&self, src: &KernelSource, entry: &str) -> Result<Function, CudaError> {
        let key = (src.name, entry.to_string());
        if let Some(f) = self.functions.lock().get(&key) {
            return Ok(*f);
        }
        let module = self.module(src)?;
        let name = CString::new(entry).map_err(|_| CudaError::Unsupported {
            kernel: entry.to_string(),
            problem: "a NUL in the name".into(),
        })?;
        // SAFETY: the module is loaded and stays loaded as long as self.
        let handle = unsafe { result::module::get_function(module.handle, name) }.map_err(|e| {
            CudaError::Unsupported {
                kernel: entry.to_string(),
                problem: format!("not found in {}: {e}", src.file_name()),
            }
        })?;
        let f = Function {
            handle,
            shared_optin: super::launch::DEFAULT_SHARED_LIMIT as u32,
        };
        Ok(*self.functions.lock().entry(key).or_insert(f))
    }

    /// Lets `entry` use `bytes` of dynamic shared memory (above the default 48 KiB).
    fn opt_in(&self, src: &KernelSource, entry: &str, bytes: u32) -> Result<(), CudaError> {
        let f = self.function(src, entry)?;
        if bytes <= f.shared_optin {
            return Ok(());
        }
        // SAFETY: a live function of a loaded module.
        unsafe {
            result::function::set_function_attribute(
                f.handle,
                FnAttr::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                bytes as i32,
            )
        }
        .map_err(driver_err)?;
        if let Some(f) = self
            .functions
            .lock()
            .get_mut(&(src.name, entry.to_string()))
        {
            f.shared_optin = bytes;
        }
        Ok(())
    }

    /// Compiles and loads `sources` in parallel, so the first step does not pay for NVRTC.
    pub fn preload(&self, sources: &[KernelSource]) -> Result<(), CudaError> {
        std::thread::scope(|scope| {
            let jobs: Vec<_> = sources
                .iter()
                .map(|src| scope.spawn(move || self.module(src).map(|_| ())))
                .collect();
            jobs.into_iter()
                .map(|j| j.join().unwrap_or(Err(CudaError::CompileThreadPanicked)))
                .collect::<Result<Vec<()>, CudaError>>()
        })?;
        Ok(())
    }
}

/// cudarc's buffers and views as the launchers' buffers. cudarc's guard (`SyncOnDrop`)
/// records events only with event tracking on, which `Gpu::open` turns off (one stream), so
/// dropping it at once is correct.
macro_rules! gpu_buf {
    ($($t:ty),*) => {$(
        impl<T> DeviceBuf<Gpu, T> for $t {
            fn len(&self) -> usize {
                cudarc::driver::DeviceSlice::len(self)
            }
            fn device_addr(&self, dev: &Gpu) -> u64 {
                self.device_ptr(&dev.stream).0
            }
        }
    )*};
}
gpu_buf!(CudaSlice<T>, CudaView<'_, T>, CudaViewMut<'_, T>);

macro_rules! gpu_buf_mut {
    ($($t:ty),*) => {$(
        impl<T> DeviceBufMut<Gpu, T> for $t {
            fn device_addr_mut(&mut self, dev: &Gpu) -> u64 {
                self.device_ptr_mut(&dev.stream).0
            }
        }
    )*};
}
gpu_buf_mut!(CudaSlice<T>, CudaViewMut<'_, T>);

impl Device for Gpu {
    type Buf<T: DevElem> = CudaSlice<T>;

    fn describe(&self) -> String {
        format!(
            "{} ({}, {} SMs)",
            self.info.name, self.info.arch, self.info.multiprocessors
        )
    }

    fn multiprocessors(&self) -> usize {
        self.info.multiprocessors
    }

    fn max_shared_per_block(&self) -> usize {
        self.info.max_shared_per_block
    }

    fn alloc_zeros<T: DevElem>(&self, n: usize) -> Result<CudaSlice<T>, CudaError> {
        self.stream.alloc_zeros(n).map_err(driver_err)
    }

    fn upload<T: DevElem>(&self, host: &[T]) -> Result<CudaSlice<T>, CudaError> {
        self.stream.memcpy_stod(host).map_err(driver_err)
    }

    fn copy_htod<T: DevElem>(
        &self,
        host: &[T],
        dst: &mut impl DeviceBufMut<Self, T>,
    ) -> Result<(), CudaError> {
        check_copy("copy_htod", host.len(), dst.len())?;
        if host.is_empty() {
            return Ok(());
        }
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: `dst` holds at least host.len() elements (checked). A copy from pageable
        // memory returns once the driver has staged `host`, so it may be reused at once.
        unsafe {
            result::memcpy_htod_async(dst.device_addr_mut(self), host, self.stream.cu_stream())
        }
        .map_err(driver_err)
    }

    fn copy_dtoh<T: DevElem>(
        &self,
        src: &impl DeviceBuf<Self, T>,
        host: &mut [T],
    ) -> Result<(), CudaError> {
        check_copy("copy_dtoh", host.len(), src.len())?;
        if host.is_empty() {
            return self.sync();
        }
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: `src` holds at least host.len() elements (checked); the copy is waited for
        // before `host` is given back.
        unsafe { result::memcpy_dtoh_async(host, src.device_addr(self), self.stream.cu_stream()) }
            .map_err(driver_err)?;
        self.sync()
    }

    fn gemm_nt<E: GpuElem>(
        &self,
        out: &mut impl DeviceBufMut<Self, E>,
        x: &impl DeviceBuf<Self, E>,
        w: &impl DeviceBuf<Self, E>,
        shape: GemmShape,
    ) -> Result<(), CudaError> {
        shape.check(out.len(), x.len(), w.len())?;
        if shape.m == 0 || shape.n == 0 {
            return Ok(());
        }
        let blas = self.blas()?;
        // cuBLAS runs in the calling thread's current context: make it this GPU's.
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: sizes checked above; all three are buffers of this GPU.
        unsafe {
            cublas_gemm_nt::<E>(
                *blas.handle(),
                out.device_addr_mut(self),
                x.device_addr(self),
                w.device_addr(self),
                shape,
            )
        }
    }

    fn memory(&self) -> Result<DeviceMemory, CudaError> {
        self.ctx.bind_to_thread().map_err(driver_err)?;
        let (free, total) = result::mem_get_info().map_err(driver_err)?;
        Ok(DeviceMemory { free, total })
    }

    fn sync(&self) -> Result<(), CudaError> {
        Gpu::sync(self)
    }

    fn max_active_blocks_per_sm(
        &self,
        src: &KernelSource,
        entry: &str,
        threads: u32,
        shared_bytes: u32,
    ) -> Result<usize, CudaError> {
        if shared_bytes as usize > super::launch::DEFAULT_SHARED_LIMIT {
            self.opt_in(src, entry, shared_bytes)?;
        }
        let f = self.function(src, entry)?;
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: a live function of a loaded module.
        let n = unsafe {
            result::occupancy::max_active_block_per_multiprocessor(
                f.handle,
                threads as c_int,
                shared_bytes as usize,
            )
        }
        .map_err(driver_err)?;
        Ok(n.max(0) as usize)
    }

    unsafe fn launch(
        &self,
        src: &KernelSource,
        entry: &str,
        cfg: LaunchCfg,
        args: &[KernelArg],
    ) -> Result<(), CudaError> {
        if cfg.shared_bytes as usize > super::launch::DEFAULT_SHARED_LIMIT {
            self.opt_in(src, entry, cfg.shared_bytes)?;
        }
        let f = self.function(src, entry)?;
        let mut params: Vec<*mut std::ffi::c_void> = args.iter().map(|a| a.value_ptr()).collect();
        self.ctx.bind_to_thread().map_err(driver_err)?;
        // SAFETY: the caller guarantees the arguments match the kernel; `params` points into
        // `args`, which outlives the call (cuLaunchKernel copies the values).
        unsafe {
            result::launch_kernel(
                f.handle,
                cfg.grid,
                cfg.block,
                cfg.shared_bytes,
                self.stream.cu_stream(),
                &mut params,
            )
        }
        .map_err(|source| CudaError::Launch {
            entry: entry.to_string(),
            source,
        })
    }
}
