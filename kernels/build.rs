//! Builds the CUDA-on-CPU emulator: every `.cu` file compiled by the host C++ compiler
//! against the emulator's prelude (kernels/cuda/emu/), so `pagedrt doctor --selftest
//! --emulated` and the tests run the real kernels on any machine.

use std::path::{Path, PathBuf};

#[path = "src/cuda/entries.rs"]
mod entries;
#[path = "src/cuda/emu/wrapper.rs"]
mod wrapper;

fn main() {
    println!("cargo:rerun-if-changed=cuda");
    println!("cargo:rerun-if-changed=src/cuda/entries.rs");
    println!("cargo:rerun-if-changed=src/cuda/emu/wrapper.rs");
    println!("cargo:rerun-if-env-changed=PAGEDRT_EMU_SANITIZE");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cuda = Path::new("cuda");
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .include(cuda)
        .include(cuda.join("emu"))
        // -O2 compiles in about half the time of -O3 and runs the emulator as fast.
        .opt_level(2)
        .debug(false)
        .warnings(true)
        .extra_warnings(false);
    for flag in wrapper::CXX_FLAGS {
        build.flag(flag);
    }
    if wrapper::sanitize_requested() {
        for flag in wrapper::SANITIZE_FLAGS {
            build.flag(flag);
        }
        // The sanitizers' runtimes, which the test binaries run with preloaded.
        println!("cargo:rustc-link-lib=dylib=asan");
        println!("cargo:rustc-link-lib=dylib=ubsan");
    }
    for f in wrapper::RUNTIME_SOURCES {
        build.file(cuda.join("emu").join(f));
    }
    for name in entries::MODULES {
        let unit = out.join(format!("emu_{name}.cpp"));
        let text =
            wrapper::module_source(name, &format!("{name}.cu"), &entries::entry_points(name));
        std::fs::write(&unit, text).expect("OUT_DIR is writable");
        build.file(unit);
    }
    build.compile("pagedrt_emu");
}
