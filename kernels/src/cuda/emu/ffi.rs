//! The emulator's C ABI (kernels/cuda/emu/emu_abi.h), and the kernel files built into this
//! binary by `build.rs`.

use std::ffi::{c_char, c_void};

/// `emu::ABI_VERSION`.
pub const ABI_VERSION: u32 = 1;

#[repr(C)]
pub struct EntryInfo {
    pub name: *const c_char,
    pub invoke: unsafe extern "C" fn(*mut *mut c_void),
    pub nparams: u32,
    pub kinds: *const u8,
}

#[repr(C)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
    pub max_shared_bytes: u32,
    pub schedule: u32,
}

pub type LaunchFn = unsafe extern "C" fn(
    entry: *const EntryInfo,
    cfg: *const LaunchConfig,
    params: *mut *mut c_void,
    kinds: *const u8,
    nargs: u32,
    err: *mut c_char,
    err_len: usize,
) -> i32;

#[repr(C)]
pub struct ModuleInfo {
    pub abi: u32,
    pub name: *const c_char,
    pub nentries: u32,
    pub entries: *const EntryInfo,
    pub launch: LaunchFn,
}

/// The symbol a module's table is found under.
pub fn module_symbol(name: &str) -> String {
    format!("pagedrt_emu_module_{name}")
}

extern "C" {
    fn pagedrt_emu_module_cache_ops() -> *const ModuleInfo;
    fn pagedrt_emu_module_layer_ops() -> *const ModuleInfo;
    fn pagedrt_emu_module_sampling() -> *const ModuleInfo;
    fn pagedrt_emu_module_paged_attention_decode() -> *const ModuleInfo;
    fn pagedrt_emu_module_paged_attention_prefill() -> *const ModuleInfo;
    fn pagedrt_emu_module_paged_attention_tc() -> *const ModuleInfo;
}

/// The table of module `name` as built into this binary.
pub fn builtin(name: &str) -> Option<*const ModuleInfo> {
    // SAFETY: each function returns a pointer to a static table; no arguments.
    unsafe {
        Some(match name {
            "cache_ops" => pagedrt_emu_module_cache_ops(),
            "layer_ops" => pagedrt_emu_module_layer_ops(),
            "sampling" => pagedrt_emu_module_sampling(),
            "paged_attention_decode" => pagedrt_emu_module_paged_attention_decode(),
            "paged_attention_prefill" => pagedrt_emu_module_paged_attention_prefill(),
            "paged_attention_tc" => pagedrt_emu_module_paged_attention_tc(),
            _ => return None,
        })
    }
}
