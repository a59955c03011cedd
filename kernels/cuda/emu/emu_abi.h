// The C ABI between the emulator and Rust (kernels/src/cuda/emu/ffi.rs mirrors it).

#pragma once

#include <cstddef>
#include <cstdint>

namespace emu {

constexpr uint32_t ABI_VERSION = 1;

/// Element types of pointer parameters.
enum : uint8_t { ELEM_F32 = 0, ELEM_BF16 = 1, ELEM_F16 = 2, ELEM_I32 = 3, ELEM_I64 = 4, ELEM_U64 = 5 };
/// Parameter kinds: a scalar, or KIND_PTR | element (| KIND_MUT for a non-const pointer).
enum : uint8_t { KIND_I32 = 1, KIND_I64 = 2, KIND_F32 = 3, KIND_PTR = 0x10, KIND_MUT = 0x20 };

struct EntryInfo {
    const char* name;
    void (*invoke)(void** params);
    uint32_t nparams;
    const uint8_t* kinds;
};

struct LaunchConfig {
    uint32_t grid[3];
    uint32_t block[3];
    /// Dynamic shared memory of each block, bytes.
    uint32_t shared_bytes;
    /// The emulated device's limit on static + dynamic shared memory per block, bytes.
    uint32_t max_shared_bytes;
    /// Schedule variant: bit 0 runs blocks and threads in reverse order.
    uint32_t schedule;
};

/// Runs a launch to completion; 0 on success, else 1 with a message in `err`.
typedef int (*LaunchFn)(const EntryInfo* entry, const LaunchConfig* cfg, void** params,
                        const uint8_t* kinds, uint32_t nargs, char* err, size_t err_len);

struct ModuleInfo {
    uint32_t abi;
    const char* name;
    uint32_t nentries;
    const EntryInfo* entries;
    LaunchFn launch;
};

int launch(const EntryInfo* entry, const LaunchConfig* cfg, void** params, const uint8_t* kinds,
           uint32_t nargs, char* err, size_t err_len);

}  // namespace emu
