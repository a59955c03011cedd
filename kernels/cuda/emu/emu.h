// pagedrt's CUDA-on-CPU emulator: the prelude the host C++ compiler reads before common.cuh
// and one kernel file (NVRTC never sees this file).
//
// It stands in for what NVRTC provides built in: the thread and block coordinates, the
// vector types, bit casts, fast math. It does NOT define __syncthreads, __shfl_*_sync,
// __ballot_sync, atomics or inline PTX: the kernels reach those only through the wrappers in
// common.cuh, whose emulator versions call the functions declared here. A kernel that calls
// an intrinsic directly therefore fails to compile here, instead of running unchecked.
//
// How the emulator runs a launch (emu.cpp): blocks one after another; the threads of a block
// as fibers (one stack each) on the calling OS thread, switched at every barrier and warp
// collective, in a deterministic order. Shared memory is reached through checked accessors
// (SharedPtr / SharedRef): bounds, alignment, and a shadow record per byte of the last
// writer and readers and the barrier epoch they were in, so that two accesses by different
// threads with no barrier between them (one of them a write) stop the launch with a report.

#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>

#define PAGEDRT_EMU 1
#define __device__
#define __global__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __launch_bounds__(...)

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(8) uint2 {
    unsigned x, y;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};

namespace emu {

/// Where in a kernel source an intrinsic was called (for the emulator's reports).
struct Site {
    const char* file;
    int line;
};

/// What kernel code can see of the launch: its shape and this block's coordinates.
struct BlockView {
    uint3 block_idx;
    dim3 block_dim;
    dim3 grid_dim;
};

/// What kernel code can see of the running CUDA thread (the fiber behind it is private to
/// emu.cpp).
struct ThreadView {
    uint3 thread_idx;
    const BlockView* block;
};

/// The CUDA thread running now on this OS thread. Every OS thread runs its own launches.
/// (`__thread`, not `thread_local`: a plain TLS slot, read without C++'s TLS wrapper call.)
extern __thread ThreadView* t_cur __attribute__((tls_model("initial-exec")));

/// Stops the launch with a message (the first failure of a launch is the one reported).
[[noreturn]] void fail(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// ---- shared memory ------------------------------------------------------------------------

/// One shared-memory array of the running block: a static `SMEM_ARRAY` or the dynamic one.
struct Region {
    unsigned char* base;
    uint32_t size;
    const char* name;
    void* shadow;  // emu.cpp's per-byte access records
};

/// Checks an access of `bytes` bytes at byte `off` of `r` by the running thread (bounds,
/// alignment, races, in-flight cp.async, never-written bytes), records it, and returns the
/// address.
unsigned char* shared_access(Region* r, int64_t off, uint32_t bytes, uint32_t align, bool write);

/// A static shared array's declaration: the key under which each block finds its storage.
struct StaticDecl {
    const char* name;
    uint32_t bytes;
    uint32_t align;
};
Region* static_region(const StaticDecl* decl);
Region* dynamic_region(const char* name);

template <typename T>
struct SharedRef {
    Region* region;
    int64_t off;
    operator T() const {
        T v;
        std::memcpy(&v, shared_access(region, off, sizeof(T), alignof(T), false), sizeof(T));
        return v;
    }
    SharedRef& operator=(const T& v) {
        std::memcpy(shared_access(region, off, sizeof(T), alignof(T), true), &v, sizeof(T));
        return *this;
    }
    SharedRef& operator=(const SharedRef& o) { return *this = static_cast<T>(o); }
    template <typename U>
    SharedRef& operator+=(const U& v) {
        T x = *this;
        x += v;
        return *this = x;
    }
    template <typename U>
    SharedRef& operator-=(const U& v) {
        T x = *this;
        x -= v;
        return *this = x;
    }
    template <typename U>
    SharedRef& operator*=(const U& v) {
        T x = *this;
        x *= v;
        return *this = x;
    }
    template <typename U>
    SharedRef& operator/=(const U& v) {
        T x = *this;
        x /= v;
        return *this = x;
    }
};

/// A pointer into shared memory. Offsets are in bytes; arithmetic is in elements of T.
template <typename T>
struct SharedPtr {
    Region* region;
    int64_t off;
    SharedRef<T> operator[](int64_t i) const {
        return {region, off + i * (int64_t)sizeof(T)};
    }
    SharedRef<T> operator*() const { return (*this)[0]; }
    SharedPtr operator+(int64_t i) const { return {region, off + i * (int64_t)sizeof(T)}; }
    SharedPtr operator-(int64_t i) const { return {region, off - i * (int64_t)sizeof(T)}; }
    SharedPtr& operator+=(int64_t i) {
        off += i * (int64_t)sizeof(T);
        return *this;
    }
    template <typename U>
    SharedPtr<U> cast() const {
        return {region, off};
    }
};

// ---- synchronisation and warp collectives (the emulator versions of common.cuh's wrappers)

void sync_threads(Site site);
void sync_warp(unsigned mask, Site site);
enum ShflOp { SHFL_IDX = 0, SHFL_XOR = 1, SHFL_DOWN = 2, SHFL_UP = 3 };
unsigned shfl(unsigned mask, unsigned value, int op, int arg, Site site);
unsigned ballot(unsigned mask, bool pred, Site site);

/// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 for the whole warp.
void mma_m16n8k16(bool bf16, float* d, const unsigned* a, const unsigned* b, const float* c,
                  Site site);
/// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 for the whole warp.
void ldmatrix(int count, bool trans, unsigned* regs, Region* r, int64_t off, Site site);
/// cp.async.cg.shared.global (16 bytes; `src_bytes` < 16 fills the rest with zeros).
void cp_async16(Region* r, int64_t off, const void* src, int src_bytes, Site site);
void cp_async_commit(Site site);
void cp_async_wait(int pending_groups, Site site);

// ---- numbers ----------------------------------------------------------------------------

inline float f16_bits_to_f32(unsigned short h) {
    _Float16 x;
    std::memcpy(&x, &h, 2);
    return (float)x;
}
inline unsigned short f32_to_f16_bits(float f) {
    _Float16 x = (_Float16)f;  // round to nearest even, as cvt.rn.f16.f32
    unsigned short h;
    std::memcpy(&h, &x, 2);
    return h;
}

}  // namespace emu

#define threadIdx (::emu::t_cur->thread_idx)
#define blockIdx (::emu::t_cur->block->block_idx)
#define blockDim (::emu::t_cur->block->block_dim)
#define gridDim (::emu::t_cur->block->grid_dim)

inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, 4);
    return f;
}
inline int __float_as_int(float f) {
    int i;
    std::memcpy(&i, &f, 4);
    return i;
}
/// The GPU computes __expf as ex2.approx(x * log2(e)); the emulator rounds the same product.
inline float __expf(float x) { return exp2f(x * 1.4426950408889634f); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
