// The per-token operations of a Llama-family layer. Every kernel reads and writes T (f32,
// bf16 or f16) and computes in f32. Grids are one block per token row unless noted.

/// out = x / sqrt(mean(x^2) + eps) * w.
template <typename T>
__device__ void rms_norm(T* __restrict__ out, const T* __restrict__ x, const T* __restrict__ w,
                         int dim, float eps) {
    SMEM_ARRAY(float, scratch, 32);
    const i64 row = (i64)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = to_f32(x[row + i]);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        out[row + i] = from_f32<T>(to_f32(x[row + i]) * inv * to_f32(w[i]));
}

/// residual += x; x = rms_norm(residual) * w. The residual stream is rounded to T once,
/// and the norm reads the rounded value, so the result is what the unfused pair gives.
template <typename T>
__device__ void fused_add_rms_norm(T* __restrict__ x, T* __restrict__ residual,
                                   const T* __restrict__ w, int dim, float eps) {
    SMEM_ARRAY(float, scratch, 32);
    const i64 row = (i64)blockIdx.x * dim;
    float ss = 0.f;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const T r = from_f32<T>(to_f32(x[row + i]) + to_f32(residual[row + i]));
        residual[row + i] = r;
        const float v = to_f32(r);
        ss += v * v;
    }
    const float inv = rsqrtf(block_sum(ss, scratch) / dim + eps);
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        x[row + i] = from_f32<T>(to_f32(residual[row + i]) * inv * to_f32(w[i]));
}

/// Rotary embedding in place on q ([tokens, num_heads, head_dim], row stride q_stride) and
/// k ([tokens, num_kv_heads, head_dim], row stride k_stride), Hugging Face rotate_half
/// pairing (i with i + head_dim/2). `cos_sin` is [max_pos, head_dim]: head_dim/2 cosines
/// then head_dim/2 sines per position (Llama-3 scaling is folded in on the host).
template <typename T>
__device__ void rope(T* __restrict__ q, T* __restrict__ k, const int* __restrict__ positions,
                     const float* __restrict__ cos_sin, int num_heads, int num_kv_heads,
                     int head_dim, int q_stride, int k_stride) {
    const int t = blockIdx.x;
    const int half = head_dim / 2;
    const float* cs = cos_sin + (i64)positions[t] * head_dim;
    const int total = (num_heads + num_kv_heads) * half;
    for (int i = threadIdx.x; i < total; i += blockDim.x) {
        const int h = i / half, j = i % half;
        T* v = h < num_heads ? q + (i64)t * q_stride + h * head_dim
                             : k + (i64)t * k_stride + (h - num_heads) * head_dim;
        const float x1 = to_f32(v[j]), x2 = to_f32(v[j + half]);
        const float c = cs[j], s = cs[half + j];
        v[j] = from_f32<T>(x1 * c - x2 * s);
        v[j + half] = from_f32<T>(x2 * c + x1 * s);
    }
}

/// out[t, i] = silu(gu[t, i]) * gu[t, inter + i], rows of gu being [gate | up].
template <typename T>
__device__ void silu_and_mul(T* __restrict__ out, const T* __restrict__ gate_up, int inter) {
    const i64 t = blockIdx.x;
    for (int i = threadIdx.x; i < inter; i += blockDim.x) {
        const float a = to_f32(gate_up[t * 2 * inter + i]);
        const float b = to_f32(gate_up[t * 2 * inter + inter + i]);
        out[t * inter + i] = from_f32<T>(a / (1.f + __expf(-a)) * b);
    }
}

/// out[t] = table[ids[t]]; an id outside the vocabulary gives a zero row, not a stray read.
template <typename T>
__device__ void embedding(T* __restrict__ out, const T* __restrict__ table,
                          const int* __restrict__ ids, int dim, int vocab) {
    const i64 t = blockIdx.x;
    const int id = ids[t];
    const bool ok = id >= 0 && id < vocab;
    const T* src = table + (i64)(ok ? id : 0) * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x)
        out[t * dim + i] = ok ? src[i] : from_f32<T>(0.f);
}

/// x += y, element-wise over n elements (grid-stride).
template <typename T>
__device__ void add_inplace(T* __restrict__ x, const T* __restrict__ y, i64 n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(y[i]));
}

/// x[r, i] += b[i] for rows of n (grid-stride over all elements).
template <typename T>
__device__ void add_bias(T* __restrict__ x, const T* __restrict__ b, i64 total, int n) {
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x)
        x[i] = from_f32<T>(to_f32(x[i]) + to_f32(b[i % n]));
}

#define LAYER_OPS(T, S)                                                                       \
    extern "C" __global__ void rms_norm_##S(T* out, const T* x, const T* w, int dim,          \
                                            float eps) {                                      \
        rms_norm<T>(out, x, w, dim, eps);                                                     \
    }                                                                                         \
    extern "C" __global__ void fused_add_rms_norm_##S(T* x, T* res, const T* w, int dim,      \
                                                      float eps) {                            \
        fused_add_rms_norm<T>(x, res, w, dim, eps);                                           \
    }                                                                                         \
    extern "C" __global__ void rope_##S(T* q, T* k, const int* pos, const float* cs, int nh, \
                                        int nkv, int hd, int qs, int ks) {                    \
        rope<T>(q, k, pos, cs, nh, nkv, hd, qs, ks);                                          \
    }                                                                                         \
    extern "C" __global__ void silu_and_mul_##S(T* out, const T* gu, int inter) {             \
        silu_and_mul<T>(out, gu, inter);                                                      \
    }                                                                                         \
    extern "C" __global__ void embedding_##S(T* out, const T* table, const int* ids,         \
                                             int dim, int vocab) {                            \
        embedding<T>(out, table, ids, dim, vocab);                                            \
    }                                                                                         \
    extern "C" __global__ void add_inplace_##S(T* x, const T* y, i64 n) {                     \
        add_inplace<T>(x, y, n);                                                              \
    }                                                                                         \
    extern "C" __global__ void add_bias_##S(T* x, const T* b, i64 total, int n) {             \
        add_bias<T>(x, b, total, n);                                                          \
    }

LAYER_OPS(float, f32)
LAYER_OPS(bf16, bf16)
LAYER_OPS(f16, f16)
