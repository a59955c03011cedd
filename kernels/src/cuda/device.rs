//! One GPU: its context and stream, and its kernels compiled for its architecture.
//!
//! Modules are compiled on first use (NVRTC, for the device's own `sm_XY`) and cached for the
//! life of the `Gpu`, so a process pays for each `.cu` file once.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::CUdevice_attribute as Attr;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream};
use cudarc::nvrtc::Ptx;
use parking_lot::Mutex;

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
}

pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
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
            multiprocessors: ctx
                .attribute(Attr::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .map_err(driver_err)? as usize,
        };
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            info,
            modules: Mutex::new(HashMap::new()),
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

    /// Waits for all queued work; surfaces any asynchronous launch failure.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver_err)
    }

    /// The kernel `entry` of `src`, compiling and loading `src` on first use.
    pub fn function(&self, src: &KernelSource, entry: &str) -> Result<CudaFunction, CudaError> {
        let module = self.module(src)?;
        module
            .load_function(entry)
            .map_err(|e| CudaError::Unsupported {
                kernel: entry.to_string(),
                problem: format!("not found in {}: {e}", src.file_name()),
            })
    }

    /// `src` compiled for this GPU and loaded, from the cache or now. NVRTC runs outside the
    /// lock, so several modules can compile at once (see `preload`).
    fn module(&self, src: &KernelSource) -> Result<Arc<CudaModule>, CudaError> {
        if let Some(m) = self.modules.lock().get(src.name) {
            return Ok(m.clone());
        }
        let compiled = compile(src, &self.info.arch, false)?;
        let m = self
            .ctx
            .load_module(Ptx::from_src(compiled.ptx))
            .map_err(driver_err)?;
        Ok(self.modules.lock().entry(src.name).or_insert(m).clone())
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
