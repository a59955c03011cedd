// Shared by every pagedrt kernel; prepended to each .cu file before NVRTC compiles it.
//
// Header-free on purpose: the NVRTC shipped as a Python wheel has no cuda_fp16.h or
// cuda_bf16.h, so bf16 and f16 are plain 16-bit storage types with their own conversions
// (bit shifts for bf16, the PTX cvt instructions for f16). All arithmetic is in f32.

typedef unsigned short u16;
typedef long long i64;

struct bf16 { u16 bits; };
struct f16 { u16 bits; };

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) {
    return __uint_as_float(((unsigned)x.bits) << 16);
}
__device__ __forceinline__ float to_f32(f16 x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16 from_f32<bf16>(float x) {
    // Round to nearest even; NaN stays a (quiet) NaN.
    unsigned u = __float_as_uint(x);
    bf16 r;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        r.bits = 0x7fc0;
    } else {
        u += 0x7fffu + ((u >> 16) & 1u);
        r.bits = (u16)(u >> 16);
    }
    return r;
}
template <> __device__ __forceinline__ f16 from_f32<f16>(float x) {
    f16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
    return r;
}

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/// Sum over all threads of the block (blockDim.x a multiple of 32, at most 1024). Every
/// thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? scratch[lane] : 0.f;
    return warp_sum(v);
}

/// Loads `N` consecutive elements (N * sizeof(T) a multiple of 16 bytes, 16-byte aligned)
/// as f32.
template <typename T, int N>
__device__ __forceinline__ void load_vec(float* dst, const T* src) {
    static_assert((N * sizeof(T)) % 16 == 0, "vector loads are 16 bytes");
    constexpr int PER = 16 / sizeof(T);
#pragma unroll
    for (int c = 0; c < N / PER; ++c) {
        uint4 raw = *reinterpret_cast<const uint4*>(src + c * PER);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < PER; ++i) dst[c * PER + i] = to_f32(e[i]);
    }
}
