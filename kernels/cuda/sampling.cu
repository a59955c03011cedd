// Sampling on the device. Greedy decoding needs only the argmax, so the logits of a greedy
// row never cross PCIe: one int per row does.

/// out[row] = the index of the largest logit of the row (the lowest index among equals; NaN
/// never wins). Grid: one block per row; blockDim a power of two, at most 1024.
template <typename T>
__device__ void argmax(int* __restrict__ out, const T* __restrict__ logits, int vocab) {
    SMEM_ARRAY(float, best_v, 1024);
    SMEM_ARRAY(int, best_i, 1024);
    const T* row = logits + (i64)blockIdx.x * vocab;
    float bv = NEG_INF;
    int bi = 0x7fffffff;
    for (int i = threadIdx.x; i < vocab; i += blockDim.x) {
        const float v = to_f32(row[i]);
        if (v > bv) { bv = v; bi = i; }  // Strided ascending: the first max stays.
    }
    best_v[threadIdx.x] = bv;
    best_i[threadIdx.x] = bi;
    sync_threads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if ((int)threadIdx.x < s) {
            const float ov = best_v[threadIdx.x + s];
            const int oi = best_i[threadIdx.x + s];
            if (ov > best_v[threadIdx.x] || (ov == best_v[threadIdx.x] && oi < best_i[threadIdx.x])) {
                best_v[threadIdx.x] = ov;
                best_i[threadIdx.x] = oi;
            }
        }
        sync_threads();
    }
    if (threadIdx.x == 0) out[blockIdx.x] = best_i[0] == 0x7fffffff ? 0 : best_i[0];
}

extern "C" __global__ void argmax_f32(int* out, const float* logits, int vocab) {
    argmax<float>(out, logits, vocab);
}
extern "C" __global__ void argmax_bf16(int* out, const bf16* logits, int vocab) {
    argmax<bf16>(out, logits, vocab);
}
extern "C" __global__ void argmax_f16(int* out, const f16* logits, int vocab) {
    argmax<f16>(out, logits, vocab);
}
