//! Compiling a kernel file for the emulator at run time with the host C++ compiler (`$CXX`,
//! else `c++`), into a library the emulator loads: how a test runs a deliberately broken copy
//! of a kernel, or a kernel written only to test the emulator. The library carries its own
//! copy of the emulator's runtime, so nothing is shared with the built-in one.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::{ffi, wrapper, Module};
use crate::cuda::CudaError;

/// The emulator's sources and the shared header, as embedded in this binary.
const FILES: [(&str, &str); 8] = [
    ("emu.h", include_str!("../../../cuda/emu/emu.h")),
    ("emu_abi.h", include_str!("../../../cuda/emu/emu_abi.h")),
    (
        "emu_module.h",
        include_str!("../../../cuda/emu/emu_module.h"),
    ),
    (
        "emu_internal.h",
        include_str!("../../../cuda/emu/emu_internal.h"),
    ),
    (
        "emu_sched.cpp",
        include_str!("../../../cuda/emu/emu_sched.cpp"),
    ),
    (
        "emu_shared.cpp",
        include_str!("../../../cuda/emu/emu_shared.cpp"),
    ),
    (
        "emu_warp.cpp",
        include_str!("../../../cuda/emu/emu_warp.cpp"),
    ),
    ("common.cuh", include_str!("../../../cuda/common.cuh")),
];

/// Compiles `kernel_text` as module `name` (a C identifier: the `.cu` file's name without the
/// extension) defining `entry_points`, and loads it.
pub fn compile_module(
    name: &str,
    kernel_text: &str,
    entry_points: &[String],
) -> Result<Module, CudaError> {
    static SERIAL: AtomicUsize = AtomicUsize::new(0);
    let file = format!("{name}.cu");
    let compile_err = |log: String| CudaError::Compile {
        file: file.clone(),
        arch: "the host, for the emulator".into(),
        log,
    };
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(compile_err(format!("{name:?} is not a C identifier")));
    }
    let dir = std::env::temp_dir().join(format!(
        "pagedrt-emu-{}-{}",
        std::process::id(),
        SERIAL.fetch_add(1, Ordering::Relaxed)
    ));
    let io = |e: std::io::Error| compile_err(format!("{}: {e}", dir.display()));
    std::fs::create_dir_all(&dir).map_err(io)?;
    let result = build(&dir, name, &file, kernel_text, entry_points).and_then(|lib_path| {
        // SAFETY: the library was just built from the emulator's sources; its initialisers
        // only set up static tables.
        let lib = unsafe { libloading::Library::new(&lib_path) }
            .map_err(|e| compile_err(format!("loading {}: {e}", lib_path.display())))?;
        let symbol = ffi::module_symbol(name);
        // SAFETY: the symbol is PAGEDRT_EMU_MODULE's, of this signature.
        let table = unsafe {
            lib.get::<unsafe extern "C" fn() -> *const ffi::ModuleInfo>(symbol.as_bytes())
                .map_err(|e| compile_err(format!("{symbol}: {e}")))?()
        };
        // SAFETY: the table lives in `lib`, which the module keeps.
        unsafe { Module::from_table(table, Some(lib)) }
    });
    // The sanitizer build keeps the library, so its reports can name the kernel's lines.
    if !wrapper::sanitize_requested() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn build(
    dir: &Path,
    name: &str,
    file: &str,
    kernel_text: &str,
    entry_points: &[String],
) -> Result<std::path::PathBuf, CudaError> {
    let err = |log: String| CudaError::Compile {
        file: file.to_string(),
        arch: "the host, for the emulator".into(),
        log,
    };
    let write = |f: &str, text: &str| {
        std::fs::write(dir.join(f), text).map_err(|e| err(format!("writing {f}: {e}")))
    };
    for (f, text) in FILES {
        write(f, text)?;
    }
    write(file, kernel_text)?;
    write(
        "module.cpp",
        &wrapper::module_source(name, file, entry_points),
    )?;
    let lib = dir.join(format!("lib{name}.so"));
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut cmd = Command::new(&cxx);
    cmd.args(["-O1", "-shared", "-fPIC", "-Wl,-Bsymbolic"])
        .args(wrapper::CXX_FLAGS)
        .args(if wrapper::sanitize_requested() {
            &wrapper::SANITIZE_FLAGS[..]
        } else {
            &[]
        })
        .arg("-I")
        .arg(dir)
        .arg("-o")
        .arg(&lib);
    for f in wrapper::RUNTIME_SOURCES {
        cmd.arg(dir.join(f));
    }
    cmd.arg(dir.join("module.cpp"));
    let out = cmd
        .output()
        .map_err(|e| err(format!("running {cxx}: {e}")))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).into_owned()));
    }
    Ok(lib)
}
