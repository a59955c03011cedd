// Writing into and copying between pages of the KV cache (layout: kernels/src/layout.rs,
// [num_blocks, num_kv_heads, block_size, head_dim] per layer for K and for V).

/// Scatters each new token's K and V rows into its slot; slot -1 is padding and is skipped,
/// and so is a slot past the cache's end (`num_slots`), which would otherwise corrupt memory.
/// Grid: one block per token. `k_stride`/`v_stride` are the distances between tokens' rows
/// in elements, so K and V can be read straight out of a fused QKV projection.
template <typename T>
__device__ void write_kv(T* __restrict__ k_cache, T* __restrict__ v_cache,
                         const T* __restrict__ k, const T* __restrict__ v,
                         const i64* __restrict__ slot_mapping, int num_kv_heads, int head_dim,
                         int block_size, int k_stride, int v_stride, i64 num_slots) {
    const int t = blockIdx.x;
    const i64 slot = slot_mapping[t];
    if (slot < 0 || slot >= num_slots) return;
    const i64 block = slot / block_size, off = slot % block_size;
    const int n = num_kv_heads * head_dim;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const int h = i / head_dim, d = i % head_dim;
        const i64 dst = ((block * num_kv_heads + h) * block_size + off) * head_dim + d;
        k_cache[dst] = k[(i64)t * k_stride + i];
        v_cache[dst] = v[(i64)t * v_stride + i];
    }
}

/// Copy-on-write for every layer at once. `caches` holds the K and V cache pointers of all
/// layers (2 * num_layers); `pairs` holds (src, dst) block numbers. Grid: (pairs, caches).
template <typename T>
__device__ void copy_blocks(const unsigned long long* __restrict__ caches,
                            const int* __restrict__ pairs, i64 block_elems) {
    T* cache = reinterpret_cast<T*>(caches[blockIdx.y]);
    const i64 src = (i64)pairs[2 * blockIdx.x] * block_elems;
    const i64 dst = (i64)pairs[2 * blockIdx.x + 1] * block_elems;
    for (i64 i = threadIdx.x; i < block_elems; i += blockDim.x) cache[dst + i] = cache[src + i];
}

/// The attention block's entry for one token (grid: one block per token): splits the fused
/// [q | k | v] row of `qkv`, rotates q into `q_out` and k in registers (RoPE, rotate_half
/// pairing, `cos_sin` as in layer_ops.cu's rope), and writes the rotated k and v into the
/// token's slot. One launch and one read of the projection instead of three.
template <typename T>
__device__ void qkv_rope_write_kv(T* __restrict__ q_out, const T* __restrict__ qkv,
                                  const int* __restrict__ positions,
                                  const float* __restrict__ cos_sin, T* __restrict__ k_cache,
                                  T* __restrict__ v_cache, const i64* __restrict__ slot_mapping,
                                  int num_heads, int num_kv_heads, int head_dim, int block_size,
                                  i64 num_slots) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const int qd = num_heads * head_dim, kvd = num_kv_heads * head_dim;
    const T* row = qkv + (i64)t * (qd + 2 * kvd);
    const float* cs = cos_sin + (i64)positions[t] * head_dim;
    const i64 slot = slot_mapping[t];
    const bool store = slot >= 0 && slot < num_slots;
    const i64 block = store ? slot / block_size : 0, off = store ? slot % block_size : 0;
    for (int i = threadIdx.x; i < num_heads * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        const float x1 = to_f32(row[h * head_dim + j]), x2 = to_f32(row[h * head_dim + j + half]);
        const float c = cs[j], s = cs[half + j];
        T* q = q_out + (i64)t * qd + h * head_dim;
        q[j] = from_f32<T>(x1 * c - x2 * s);
        q[j + half] = from_f32<T>(x2 * c + x1 * s);
    }
    if (!store) return;
    for (int i = threadIdx.x; i < num_kv_heads * half; i += blockDim.x) {
        const int h = i / half, j = i % half;
        const T* k = row + qd + h * head_dim;
        const float x1 = to_f32(k[j]), x2 = to_f32(k[j + half]);
        const float c = cs[j], s = cs[half + j];
        const i64 dst = ((block * num_kv_heads + h) * block_size + off) * head_dim;
        k_cache[dst + j] = from_f32<T>(x1 * c - x2 * s);
        k_cache[dst + j + half] = from_f32<T>(x2 * c + x1 * s);
    }
    for (int i = threadIdx.x; i < kvd; i += blockDim.x) {
        const int h = i / head_dim, d = i % head_dim;
        v_cache[((block * num_kv_heads + h) * block_size + off) * head_dim + d] =
            row[qd + kvd + i];
    }
}

#define CACHE_OPS(T, S)                                                                       \
    extern "C" __global__ void write_kv_##S(T* kc, T* vc, const T* k, const T* v,            \
                                            const i64* slots, int kvh, int hd, int bs,       \
                                            int ks, int vs, i64 nslots) {                    \
        write_kv<T>(kc, vc, k, v, slots, kvh, hd, bs, ks, vs, nslots);                        \
    }                                                                                         \
    extern "C" __global__ void copy_blocks_##S(const unsigned long long* caches,             \
                                               const int* pairs, i64 block_elems) {          \
        copy_blocks<T>(caches, pairs, block_elems);                                           \
    }                                                                                         \
    extern "C" __global__ void qkv_rope_write_kv_##S(                                         \
        T* q, const T* qkv, const int* pos, const float* cs, T* kc, T* vc, const i64* slots,  \
        int nh, int nkv, int hd, int bs, i64 nslots) {                                        \
        qkv_rope_write_kv<T>(q, qkv, pos, cs, kc, vc, slots, nh, nkv, hd, bs, nslots);        \
    }

CACHE_OPS(float, f32)
CACHE_OPS(bf16, bf16)
CACHE_OPS(f16, f16)
