//! Compiling the kernel sources with NVRTC.
//!
//! Through cudarc's raw bindings rather than its `compile_ptx`: we need the CUBIN (real
//! machine code, so `ptxas` runs and register spills or shared-memory overflows show up even
//! on a machine with no GPU), the log on success too (`ptxas -v` resource usage), and errors
//! instead of panics.

use std::ffi::{c_char, CStr, CString};

use cudarc::nvrtc::sys;

use super::libs::{locate, CudaLib};
use super::source::KernelSource;
use super::CudaError;

/// A target architecture: `sm_XY` (machine code) or `compute_XY` (PTX only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
    pub machine_code: bool,
}

impl std::str::FromStr for Arch {
    type Err = CudaError;
    fn from_str(s: &str) -> Result<Self, CudaError> {
        let bad = || CudaError::BadArch(s.to_string());
        let (machine_code, digits) = if let Some(d) = s.strip_prefix("sm_") {
            (true, d)
        } else if let Some(d) = s.strip_prefix("compute_") {
            (false, d)
        } else {
            return Err(bad());
        };
        // "90", "90a", "100": the last digit is the minor version.
        let digits = digits.trim_end_matches(['a', 'f']);
        if digits.len() < 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let (maj, min) = digits.split_at(digits.len() - 1);
        Ok(Arch {
            major: maj.parse().map_err(|_| bad())?,
            minor: min.parse().map_err(|_| bad())?,
            machine_code,
        })
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.machine_code { "sm" } else { "compute" };
        write!(f, "{kind}_{}{}", self.major, self.minor)
    }
}

/// The output of one compilation.
#[derive(Debug, Clone)]
pub struct Compiled {
    pub ptx: String,
    /// Machine code, when the arch was `sm_XY`.
    pub cubin: Option<Vec<u8>>,
    /// NVRTC's log: warnings, and `ptxas` resource usage when asked for.
    pub log: String,
}

impl Compiled {
    /// Whether the PTX defines the kernel `name`.
    pub fn defines(&self, name: &str) -> bool {
        self.ptx.contains(&format!(".entry {name}("))
    }

    /// `ptxas` resource lines for one kernel ("Used 40 registers, ..."), when the log has them.
    pub fn resource_usage(&self, name: &str) -> Option<String> {
        let mut lines = self.log.lines();
        lines.find(|l| l.contains(&format!("Compiling entry function '{name}'")))?;
        let usage: Vec<&str> = lines
            .take_while(|l| !l.contains("Compiling entry function"))
            .filter(|l| l.contains("Used") || l.contains("spill"))
            .map(|l| match l.find([':', '.']) {
                Some(i) => l[i + 1..].trim(),
                None => l.trim(),
            })
            .collect();
        (!usage.is_empty()).then(|| usage.join("; "))
    }
}

/// NVRTC's version, (major, minor).
pub fn version() -> Result<(i32, i32), CudaError> {
    locate(CudaLib::Nvrtc)?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: plain out-parameters.
    check("nvrtcVersion", unsafe {
        sys::nvrtcVersion(&mut major, &mut minor)
    })?;
    Ok((major, minor))
}

/// Compiles one source file for `arch`. `verbose` asks `ptxas` for resource usage.
pub fn compile(src: &KernelSource, arch: &Arch, verbose: bool) -> Result<Compiled, CudaError> {
    locate(CudaLib::Nvrtc)?;
    let text = CString::new(src.full_text()).map_err(|_| CudaError::Compile {
        file: src.file_name(),
        arch: arch.to_string(),
        log: "the source contains a NUL byte".into(),
    })?;
    let name = CString::new(src.file_name()).expect("file names have no NUL");
    let mut opts = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--generate-line-info".to_string(),
    ];
    if verbose && arch.machine_code {
        opts.push("--ptxas-options=-v".into());
    }
    let opts: Vec<CString> = opts
        .into_iter()
        .map(|o| CString::new(o).expect("options have no NUL"))
        .collect();
    let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
    let prog = Program::create(&text, &name)?;
    // SAFETY: prog is live; the option pointers outlive the call.
    let rc = unsafe { sys::nvrtcCompileProgram(prog.0, ptrs.len() as i32, ptrs.as_ptr()) };
    let log = prog.log()?;
    if rc != sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(CudaError::Compile {
            file: src.file_name(),
            arch: arch.to_string(),
            log,
        });
    }
    let ptx = prog.ptx()?;
    let cubin = if arch.machine_code {
        Some(prog.cubin()?)
    } else {
        None
    };
    Ok(Compiled { ptx, cubin, log })
}

fn check(call: &'static str, rc: sys::nvrtcResult) -> Result<(), CudaError> {
    if rc == sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Nvrtc {
            call,
            code: format!("{rc:?}"),
        })
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    fn create(text: &CStr, name: &CStr) -> Result<Self, CudaError> {
        let mut prog = std::ptr::null_mut();
        // SAFETY: valid C strings, no headers.
        check("nvrtcCreateProgram", unsafe {
            sys::nvrtcCreateProgram(
                &mut prog,
                text.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        })?;
        Ok(Program(prog))
    }

    fn log(&self) -> Result<String, CudaError> {
        let mut n = 0usize;
        // SAFETY: the buffer is sized by NVRTC's own answer.
        unsafe {
            check(
                "nvrtcGetProgramLogSize",
                sys::nvrtcGetProgramLogSize(self.0, &mut n),
            )?;
            let mut buf = vec![0u8; n.max(1)];
            check(
                "nvrtcGetProgramLog",
                sys::nvrtcGetProgramLog(self.0, buf.as_mut_ptr() as *mut c_char),
            )?;
            Ok(c_string(buf))
        }
    }

    fn ptx(&self) -> Result<String, CudaError> {
        let mut n = 0usize;
        // SAFETY: as in `log`.
        unsafe {
            check("nvrtcGetPTXSize", sys::nvrtcGetPTXSize(self.0, &mut n))?;
            let mut buf = vec![0u8; n.max(1)];
            check(
                "nvrtcGetPTX",
                sys::nvrtcGetPTX(self.0, buf.as_mut_ptr() as *mut c_char),
            )?;
            Ok(c_string(buf))
        }
    }

    fn cubin(&self) -> Result<Vec<u8>, CudaError> {
        let mut n = 0usize;
        // SAFETY: as in `log`.
        unsafe {
            check("nvrtcGetCUBINSize", sys::nvrtcGetCUBINSize(self.0, &mut n))?;
            let mut buf = vec![0u8; n];
            check(
                "nvrtcGetCUBIN",
                sys::nvrtcGetCUBIN(self.0, buf.as_mut_ptr() as *mut c_char),
            )?;
            Ok(buf)
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: created by nvrtcCreateProgram, destroyed once.
        unsafe {
            let _ = sys::nvrtcDestroyProgram(&mut self.0);
        }
    }
}

/// A NUL-terminated buffer as a String.
fn c_string(mut buf: Vec<u8>) -> String {
    if let Some(end) = buf.iter().position(|&b| b == 0) {
        buf.truncate(end);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_names_parse() {
        let a: Arch = "sm_90".parse().unwrap();
        assert_eq!((a.major, a.minor, a.machine_code), (9, 0, true));
        let a: Arch = "compute_80".parse().unwrap();
        assert_eq!((a.major, a.minor, a.machine_code), (8, 0, false));
        assert_eq!("sm_90a".parse::<Arch>().unwrap().to_string(), "sm_90");
        let a: Arch = "sm_100".parse().unwrap();
        assert_eq!((a.major, a.minor), (10, 0));
        for bad in ["90", "sm_", "sm_9", "gfx90a", "sm_x0"] {
            assert!(bad.parse::<Arch>().is_err(), "{bad}");
        }
    }
}
