//! Finding the CUDA libraries at run time.
//!
//! cudarc loads libcuda, libnvrtc and libcublas by name through the dynamic loader, which
//! only looks at the loader path fixed when the process started. CUDA often lives elsewhere:
//! `/usr/local/cuda/lib64`, or inside Python wheels (`nvidia/cu13/lib`). So before cudarc
//! asks for a library we look in those places ourselves and load the file by its full path,
//! globally: the loader then answers cudarc's request by soname with the copy already in
//! memory. Nothing is loaded twice, and a machine without CUDA simply reports "not found".

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::CudaError;

/// The CUDA libraries pagedrt uses, with the major version cudarc was built for (13).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CudaLib {
    Driver,
    Nvrtc,
    Cublas,
}

impl CudaLib {
    pub const ALL: [CudaLib; 3] = [CudaLib::Driver, CudaLib::Nvrtc, CudaLib::Cublas];

    /// The file names to look for, most specific first.
    pub fn file_names(self) -> &'static [&'static str] {
        match self {
            CudaLib::Driver => &["libcuda.so.1", "libcuda.so"],
            CudaLib::Nvrtc => &["libnvrtc.so.13", "libnvrtc.so"],
            CudaLib::Cublas => &["libcublas.so.13", "libcublas.so"],
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            CudaLib::Driver => "libcuda (CUDA driver)",
            CudaLib::Nvrtc => "libnvrtc (runtime compiler)",
            CudaLib::Cublas => "libcublas",
        }
    }

    /// Whether cudarc can load this library now.
    fn loadable_by_cudarc(self) -> bool {
        // SAFETY: these only try to open the library; nothing is called through it.
        unsafe {
            match self {
                CudaLib::Driver => cudarc::driver::sys::is_culib_present(),
                CudaLib::Nvrtc => cudarc::nvrtc::sys::is_culib_present(),
                CudaLib::Cublas => cudarc::cublas::sys::is_culib_present(),
            }
        }
    }
}

/// Where a library was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// On the loader path (`LD_LIBRARY_PATH`, ldconfig).
    LoaderPath,
    /// At this path, loaded by pagedrt.
    File(PathBuf),
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Found::LoaderPath => write!(f, "on the loader path"),
            Found::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// The folders searched besides the loader path, in order.
pub fn search_dirs() -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("PAGEDRT_CUDA_LIB_DIR") {
        dirs.extend(std::env::split_paths(&d));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(d) = std::env::var_os(var) {
            dirs.push(Path::new(&d).join("lib64"));
            dirs.push(Path::new(&d).join("lib"));
        }
    }
    dirs.push("/usr/local/cuda/lib64".into());
    dirs.push("/usr/local/cuda/targets/x86_64-linux/lib".into());
    dirs.push("/usr/lib/x86_64-linux-gnu".into());
    dirs.push("/usr/lib64".into());
    dirs.extend(python_wheel_dirs());
    dirs
}

/// `nvidia/cu13/lib` (and the older per-package `nvidia/*/lib`) in the Python environments
/// a CUDA machine usually has: a virtualenv, the user's and the system's site-packages.
fn python_wheel_dirs() -> Vec<PathBuf> {
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        roots.push(Path::new(&v).join("lib"));
    }
    if let Some(h) = std::env::var_os("HOME") {
        roots.push(Path::new(&h).join(".local/lib"));
    }
    roots.push("/usr/local/lib".into());
    roots.push("/usr/lib".into());
    roots.push("/opt/conda/lib".into());
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            if !name.to_string_lossy().starts_with("python3") {
                continue;
            }
            for site in ["site-packages", "dist-packages"] {
                let nvidia = e.path().join(site).join("nvidia");
                out.push(nvidia.join("cu13/lib"));
                for pkg in ["cuda_nvrtc", "cublas", "cuda_runtime"] {
                    out.push(nvidia.join(pkg).join("lib"));
                }
            }
        }
    }
    out
}

/// Makes `lib` loadable by cudarc if it can be found; says where it was found.
pub fn locate(lib: CudaLib) -> Result<Found, CudaError> {
    static CACHE: OnceLock<parking_lot::Mutex<Vec<(CudaLib, Found)>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache.lock();
    if let Some((_, f)) = cache.iter().find(|(l, _)| *l == lib) {
        return Ok(f.clone());
    }
    let found = if lib.loadable_by_cudarc() {
        Found::LoaderPath
    } else {
        let dirs = search_dirs();
        let path = dirs
            .iter()
            .flat_map(|d| lib.file_names().iter().map(move |f| d.join(f)))
            .find(|p| p.is_file() && load_with_companions(lib, p))
            .ok_or_else(|| CudaError::LibraryNotFound {
                lib: lib.name().into(),
                searched: existing(&dirs),
            })?;
        if !lib.loadable_by_cudarc() {
            return Err(CudaError::LibraryNotFound {
                lib: format!(
                    "{} (loaded {}, but not under its soname)",
                    lib.name(),
                    path.display()
                ),
                searched: dirs,
            });
        }
        Found::File(path)
    };
    cache.push((lib, found.clone()));
    Ok(found)
}

/// Loads `path`, after the libraries it opens by name itself: NVRTC dlopens its builtins
/// (`libnvrtc-builtins.so.13.0`, beside it) at compile time, by soname.
fn load_with_companions(lib: CudaLib, path: &Path) -> bool {
    if lib == CudaLib::Nvrtc {
        if let Some(dir) = path.parent() {
            let builtins = std::fs::read_dir(dir).into_iter().flatten().flatten();
            for e in builtins {
                let name = e.file_name();
                let name = name.to_string_lossy();
                if name.starts_with("libnvrtc-builtins.so.") && !name.contains(".alt.") {
                    load_globally(&e.path());
                }
            }
        }
    }
    load_globally(path)
}

/// The folders of `dirs` that exist: the ones worth naming in an error.
fn existing(dirs: &[PathBuf]) -> Vec<PathBuf> {
    dirs.iter().filter(|d| d.is_dir()).cloned().collect()
}

/// Opens `path` with RTLD_GLOBAL and keeps it open for the life of the process.
fn load_globally(path: &Path) -> bool {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    // SAFETY: loading a CUDA library runs its initialisers, which are meant to run on load.
    match unsafe { Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL) } {
        Ok(lib) => {
            std::mem::forget(lib);
            true
        }
        Err(_) => false,
    }
}
