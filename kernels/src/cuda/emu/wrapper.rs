//! The C++ translation unit that builds one kernel file for the emulator: the prelude, the
//! shared header, the kernel file, and the table of its entry points. Used by `build.rs`
//! (which includes this file, so it names `entries` as a sibling module) and by `compile`.

/// The emulator's runtime sources, compiled once next to the kernel files.
pub const RUNTIME_SOURCES: [&str; 3] = ["emu_sched.cpp", "emu_shared.cpp", "emu_warp.cpp"];

/// Flags both builds pass to the host C++ compiler (besides include paths and optimisation).
pub const CXX_FLAGS: [&str; 5] = [
    "-std=c++17",
    "-fno-strict-aliasing",
    "-fvisibility=hidden",
    "-Wno-unknown-pragmas",
    "-Wno-unused-parameter",
];

/// `#include`s `kernel_file` (found on the include path) and registers the entry points of
/// module `name`.
pub fn module_source(name: &str, kernel_file: &str, entry_points: &[String]) -> String {
    let mut s = String::from("#include \"emu.h\"\n#include \"common.cuh\"\n");
    s += &format!("#include \"{kernel_file}\"\n#include \"emu_module.h\"\n");
    s += &format!("PAGEDRT_EMU_MODULE({name},\n");
    for e in entry_points {
        s += &format!("    PAGEDRT_EMU_ENTRY({e})\n");
    }
    s += ")\n";
    s
}

/// The sanitizer build (scripts/emu-sanitize.sh): AddressSanitizer and UBSan in every
/// emulated kernel and in the emulator, the first undefined behaviour fatal.
pub const SANITIZE_FLAGS: [&str; 4] = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=undefined",
    "-fno-omit-frame-pointer",
    "-g",
];

/// Whether `PAGEDRT_EMU_SANITIZE` asks for the sanitizer build (read by `build.rs` when it
/// builds, and by `compile_module` when it compiles a kernel file at run time).
pub fn sanitize_requested() -> bool {
    std::env::var("PAGEDRT_EMU_SANITIZE").is_ok_and(|v| !v.is_empty() && v != "0")
}
