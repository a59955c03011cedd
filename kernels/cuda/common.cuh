// Shared by every pagedrt kernel; prepended to each .cu file before NVRTC compiles it.
//
// Header-free on purpose: the NVRTC shipped as a Python wheel has no cuda_fp16.h or
// cuda_bf16.h, so bf16 and f16 are plain 16-bit storage types with their own conversions
// (bit shifts for bf16, the PTX cvt instructions for f16). All arithmetic is in f32.
//
// Every intrinsic a kernel uses goes through a wrapper here, with two bodies: the CUDA one,
// and one for the CUDA-on-CPU emulator (kernels/cuda/emu/, compiled by the host C++ compiler
// with PAGEDRT_EMU defined), which checks what the hardware would not: barriers every thread
// reaches, warp collectives every lane reaches, shared-memory accesses free of races. So
// kernels never call __syncthreads, __shfl_*_sync, atomics or inline PTX directly, and declare
// shared memory with SMEM_ARRAY / SMEM_DYNAMIC and reach it through smem_ptr.

typedef unsigned short u16;
typedef long long i64;

struct bf16 { u16 bits; };
struct f16 { u16 bits; };

#define FULL_MASK 0xffffffffu

#ifdef PAGEDRT_EMU
// The emulator reports where a barrier or collective was called: each wrapper takes its
// caller's file and line as defaulted arguments.
#define SITE_ONLY const char *site_file_ = __builtin_FILE(), int site_line_ = __builtin_LINE()
#define SITE_PARAM , SITE_ONLY
#define SITE (::emu::Site{site_file_, site_line_})
#else
#define SITE_ONLY
#define SITE_PARAM
#endif

// ---- shared memory ------------------------------------------------------------------------
// SMEM_ARRAY(T, name, n): a static array of n T. SMEM_DYNAMIC(T, name): the launch's dynamic
// shared memory seen as T. Both give `name` of type smem_ptr<T>, indexed like a pointer.

#ifdef PAGEDRT_EMU
template <typename T> using smem_ptr = ::emu::SharedPtr<T>;
#define SMEM_ARRAY(T, name, n)                                                                \
    static const ::emu::StaticDecl name##_decl_ = {#name, (unsigned)(sizeof(T) * (n)),       \
                                                   (unsigned)alignof(T)};                     \
    const smem_ptr<T> name = {::emu::static_region(&name##_decl_), 0}
#define SMEM_DYNAMIC(T, name) const smem_ptr<T> name = {::emu::dynamic_region(#name), 0}
template <typename U, typename T> __device__ __forceinline__ smem_ptr<U> smem_cast(smem_ptr<T> p) {
    return p.template cast<U>();
}
#else
template <typename T> using smem_ptr = T*;
#define SMEM_ARRAY(T, name, n) __shared__ T name[n]
extern __shared__ __align__(16) unsigned char pagedrt_dynamic_smem[];
#define SMEM_DYNAMIC(T, name) T* const name = reinterpret_cast<T*>(pagedrt_dynamic_smem)
template <typename U, typename T> __device__ __forceinline__ U* smem_cast(T* p) {
    return reinterpret_cast<U*>(p);
}
__device__ __forceinline__ unsigned smem_addr(const void* p) {
    return (unsigned)__cvta_generic_to_shared(p);
}
#endif

// ---- barriers and warp collectives ----------------------------------------------------------

/// __syncthreads: every thread of the block, at the same call.
__device__ __forceinline__ void sync_threads(SITE_ONLY) {
#ifdef PAGEDRT_EMU
    ::emu::sync_threads(SITE);
#else
    __syncthreads();
#endif
}

/// __syncwarp over the full warp: orders the lanes' shared-memory accesses.
__device__ __forceinline__ void sync_warp(SITE_ONLY) {
#ifdef PAGEDRT_EMU
    ::emu::sync_warp(FULL_MASK, SITE);
#else
    __syncwarp(FULL_MASK);
#endif
}

#ifdef PAGEDRT_EMU
#define SHFL_BODY(op, T)                                                                      \
    unsigned u;                                                                               \
    std::memcpy(&u, &v, 4);                                                                   \
    u = ::emu::shfl(FULL_MASK, u, op, arg, SITE);                                             \
    T r;                                                                                      \
    std::memcpy(&r, &u, 4);                                                                   \
    return r;
#define SHFL_FN(name, op, intrinsic)                                                          \
    __device__ __forceinline__ float name(float v, int arg SITE_PARAM) { SHFL_BODY(op, float) } \
    __device__ __forceinline__ int name(int v, int arg SITE_PARAM) { SHFL_BODY(op, int) }     \
    __device__ __forceinline__ unsigned name(unsigned v, int arg SITE_PARAM) {               \
        SHFL_BODY(op, unsigned)                                                               \
    }
#else
#define SHFL_FN(name, op, intrinsic)                                                          \
    __device__ __forceinline__ float name(float v, int arg) { return intrinsic(FULL_MASK, v, arg); } \
    __device__ __forceinline__ int name(int v, int arg) { return intrinsic(FULL_MASK, v, arg); } \
    __device__ __forceinline__ unsigned name(unsigned v, int arg) {                           \
        return intrinsic(FULL_MASK, v, arg);                                                  \
    }
#endif
/// Full-warp shuffles: from lane `arg`, from lane ^ `arg`, from lane + `arg`, lane - `arg`.
SHFL_FN(shfl_idx, ::emu::SHFL_IDX, __shfl_sync)
SHFL_FN(shfl_xor, ::emu::SHFL_XOR, __shfl_xor_sync)
SHFL_FN(shfl_down, ::emu::SHFL_DOWN, __shfl_down_sync)
SHFL_FN(shfl_up, ::emu::SHFL_UP, __shfl_up_sync)

/// __ballot_sync over the full warp.
__device__ __forceinline__ unsigned ballot(bool pred SITE_PARAM) {
#ifdef PAGEDRT_EMU
    return ::emu::ballot(FULL_MASK, pred, SITE);
#else
    return __ballot_sync(FULL_MASK, pred);
#endif
}

// ---- element types --------------------------------------------------------------------------

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16 x) {
    return __uint_as_float(((unsigned)x.bits) << 16);
}
__device__ __forceinline__ float to_f32(f16 x) {
#ifdef PAGEDRT_EMU
    return ::emu::f16_bits_to_f32(x.bits);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
#endif
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
#ifdef PAGEDRT_EMU
    r.bits = ::emu::f32_to_f16_bits(x);
#else
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r.bits) : "f"(x));
#endif
    return r;
}

/// Two f32 as one register of two 16-bit elements (the first in the low half), rounded to
/// nearest even: the A operand of an mma from values in registers (P in P·V).
template <typename T> __device__ __forceinline__ unsigned pack2(float lo, float hi) {
    return (unsigned)from_f32<T>(lo).bits | ((unsigned)from_f32<T>(hi).bits << 16);
}

#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += shfl_xor(v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, shfl_xor(v, o));
    return v;
}

/// Sum over all threads of the block (blockDim.x a multiple of 32, at most 1024). Every
/// thread gets the result. `scratch` holds 32 floats.
__device__ __forceinline__ float block_sum(float v, smem_ptr<float> scratch) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    sync_threads();
    if (lane == 0) scratch[warp] = v;
    sync_threads();
    const int warps = blockDim.x >> 5;
    v = lane < warps ? (float)scratch[lane] : 0.f;
    return warp_sum(v);
}

/// Loads `N` consecutive elements (N * sizeof(T) a multiple of 16 bytes, 16-byte aligned)
/// from global memory as f32.
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

// ---- asynchronous copies and tensor cores (sm_80+) ------------------------------------------

/// cp.async.cg of 16 bytes from global into shared memory; with `valid` false the 16 bytes
/// are zeros and `src` is not read.
template <typename T>
__device__ __forceinline__ void cp_async16(smem_ptr<T> dst, const T* src, bool valid SITE_PARAM) {
#ifdef PAGEDRT_EMU
    ::emu::cp_async16(dst.region, dst.off, src, valid ? 16 : 0, SITE);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_addr(dst)), "l"(src),
                 "r"(valid ? 16 : 0));
#endif
}

/// Closes the group of this thread's cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit(SITE_ONLY) {
#ifdef PAGEDRT_EMU
    ::emu::cp_async_commit(SITE);
#else
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}

/// Waits until at most N of this thread's committed groups are in flight. The copies become
/// visible to the other threads only after a barrier that follows the wait.
template <int N> __device__ __forceinline__ void cp_async_wait(SITE_ONLY) {
#ifdef PAGEDRT_EMU
    ::emu::cp_async_wait(N, SITE);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/// ldmatrix .x4 (.trans when TRANS: each 8x8 matrix transposed on the way): lane l gives
/// the address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned).
template <bool TRANS, typename T>
__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], smem_ptr<T> row SITE_PARAM) {
#ifdef PAGEDRT_EMU
    ::emu::ldmatrix(4, TRANS, r, row.region, row.off, SITE);
#else
    if constexpr (TRANS) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(row)));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(smem_addr(row)));
    }
#endif
}

/// Whether T is bf16 (for the tensor-core type suffix).
template <typename T> struct is_bf16 { static constexpr bool value = false; };
template <> struct is_bf16<bf16> { static constexpr bool value = true; };

/// d += a·b on the tensor cores: mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32 (T bf16 or f16).
template <typename T>
__device__ __forceinline__ void mma_16816(float d[4], const unsigned a[4], const unsigned b[2] SITE_PARAM) {
#ifdef PAGEDRT_EMU
    ::emu::mma_m16n8k16(is_bf16<T>::value, d, a, b, d, SITE);
#else
    if constexpr (is_bf16<T>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
            "{%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
#endif
}

// ---- atomics (global memory) ----------------------------------------------------------------

__device__ __forceinline__ float atomic_add(float* p, float v) {
#ifdef PAGEDRT_EMU
    // Blocks run one after another and threads switch only at barriers: a read-modify-write
    // is atomic by construction.
    const float old = *p;
    *p = old + v;
    return old;
#else
    return atomicAdd(p, v);
#endif
}

// ---- attention: the work of one block ---------------------------------------------------------

/// A prefill block's tile: `ntok` query tokens of sequence `seq` from its `first` query, for
/// KV head `kvh`, as `rows` = ntok x G (token, head) rows; `p0` is the first token's position.
struct PrefillTile {
    int kvh, seq, G, q0, first, ntok, rows, p0;
    const int* table;
};

__device__ __forceinline__ PrefillTile prefill_tile(const int* cu_query, const int* context_lens,
                                                    const int* tile_seq, const int* tile_first,
                                                    const int* block_tables, int max_blocks,
                                                    int tokens_per_tile, int num_heads,
                                                    int num_kv_heads) {
    PrefillTile t;
    t.kvh = blockIdx.y;
    t.seq = tile_seq[blockIdx.x];
    t.G = num_heads / num_kv_heads;
    t.q0 = cu_query[t.seq];
    const int qlen = cu_query[t.seq + 1] - t.q0;
    t.first = tile_first[blockIdx.x];
    t.ntok = min(tokens_per_tile, qlen - t.first);
    t.rows = t.ntok * t.G;
    t.p0 = context_lens[t.seq] - qlen + t.first;  // the positions before the chunk, then first
    t.table = block_tables + (i64)t.seq * max_blocks;
    return t;
}

/// A decode block: KV head `kvh` of decode row `drow` (sequence `seq`, query and output row
/// `row`) over positions [start, end) of partition `part` of P.
struct DecodeBlock {
    int kvh, drow, part, P, seq, row, G, start, end;
    const int* table;
};

__device__ __forceinline__ DecodeBlock decode_block(const int* seq_ids, const int* cu_query,
                                                    const int* context_lens,
                                                    const int* block_tables, int max_blocks,
                                                    int num_heads, int num_kv_heads,
                                                    int partition_size) {
    DecodeBlock b;
    b.kvh = blockIdx.x;
    b.drow = blockIdx.y;
    b.part = blockIdx.z;
    b.P = gridDim.z;
    b.seq = seq_ids[b.drow];
    b.row = cu_query[b.seq];
    b.G = num_heads / num_kv_heads;
    b.start = b.part * partition_size;
    b.end = min(context_lens[b.seq], b.start + partition_size);
    b.table = block_tables + (i64)b.seq * max_blocks;
    return b;
}

/// Stores element `d` of head `g` of the group: the output with one partition, else the
/// partition's normalised partial output and (with d == 0) its max and sum (log2 domain).
template <typename T, int HD>
__device__ __forceinline__ void decode_store(const DecodeBlock& b, T* out, float* part_out,
                                             float* part_max, float* part_sum, int num_heads,
                                             int g, int d, float o, float m, float l) {
    const i64 head = (i64)b.kvh * b.G + g;
    if (b.P == 1) {
        out[((i64)b.row * num_heads + head) * HD + d] = from_f32<T>(o / l);
    } else {
        const i64 idx = ((i64)b.drow * num_heads + head) * b.P + b.part;
        part_out[idx * HD + d] = o / l;
        if (d == 0) {
            part_max[idx] = m;
            part_sum[idx] = l;
        }
    }
}

/// For a partition with no position (past the context's end, or an empty context): an empty
/// partial for the reduction, or with one partition zeros, not whatever the buffer held.
/// True when the partition is empty.
template <typename T, int HD>
__device__ __forceinline__ bool decode_empty(const DecodeBlock& b, T* out, float* part_max,
                                             float* part_sum, int num_heads) {
    if (b.end > b.start) return false;
    const int tid = threadIdx.x;
    if (b.P > 1) {
        if (tid < b.G) {
            const i64 idx = ((i64)b.drow * num_heads + b.kvh * b.G + tid) * b.P + b.part;
            part_max[idx] = NEG_INF;
            part_sum[idx] = 0.f;
        }
    } else {
        for (int i = tid; i < b.G * HD; i += blockDim.x)
            out[((i64)b.row * num_heads + b.kvh * b.G) * HD + i] = from_f32<T>(0.f);
    }
    return true;
}

/// Merges (m2, l2, acc2) into (m, l, acc): two online-softmax states in the log2 domain (an
/// empty state has m == NEG_INF).
template <int N>
__device__ __forceinline__ void merge_state(float& m, float& l, float* acc, float m2, float l2,
                                            const float* acc2) {
    const float mn = fmaxf(m, m2);
    const float a = m == NEG_INF ? 0.f : exp2f(m - mn);
    const float b = m2 == NEG_INF ? 0.f : exp2f(m2 - mn);
    l = l * a + l2 * b;
#pragma unroll
    for (int e = 0; e < N; ++e) acc[e] = acc[e] * a + acc2[e] * b;
    m = mn;
}

/// The end of a decode block whose WARPS warps each left, for every head g of the group, its
/// output, max and sum at `states + (w * warp_rows + g) * (HD + 2)` (output, then max, then
/// sum): merges the warps and stores the result. Call after a barrier.
template <typename T, int HD, int WARPS>
__device__ __forceinline__ void decode_merge_store(const DecodeBlock& b, smem_ptr<float> states,
                                                   int warp_rows, T* out, float* part_out,
                                                   float* part_max, float* part_sum,
                                                   int num_heads) {
    for (int i = threadIdx.x; i < b.G * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD;
        float m = NEG_INF, l = 0.f, o = 0.f;
#pragma unroll
        for (int w = 0; w < WARPS; ++w) {
            const smem_ptr<float> r = states + (w * warp_rows + g) * (HD + 2);
            const float a = r[d];
            merge_state<1>(m, l, &o, r[HD], r[HD + 1], &a);
        }
        // Every partition holds at least one token, so l > 0.
        decode_store<T, HD>(b, out, part_out, part_max, part_sum, num_heads, g, d, o, m, l);
    }
}

/// Zeros an accumulator.
template <int A, int B>
__device__ __forceinline__ void zero(float (&x)[A][B]) {
#pragma unroll
    for (int i = 0; i < A; ++i)
#pragma unroll
        for (int j = 0; j < B; ++j) x[i][j] = 0.f;
}
