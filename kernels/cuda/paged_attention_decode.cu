// Paged attention for decode: one query token per sequence, over the sequence's pages.
//
// Grid (num_kv_heads, decode rows, num_partitions), DECODE_WARPS warps per block. Decode row
// d is sequence seq_ids[d] of the batch, whose query (and output) row is cu_query[seq]: the
// decode rows of a mixed batch run here, its prefill chunks in the prefill kernel. A block
// serves one KV head of one sequence for one partition of its context, and all G query
// heads of that KV group at once: each K and V row is read from memory once per group, not
// once per query head. Lanes cooperate on a row with 16-byte loads (LPT lanes per token, TPW
// tokens per warp in flight), scores go to shared memory, softmax is exact within the
// partition, and V is accumulated for every head of the group from one read.
//
// With one partition the block writes the output. With several (split-K: long contexts
// and small batches, so the GPU fills up) each block writes its normalised partial output
// with the partition's max and sum, and paged_attention_reduce combines them.

#define MAX_GROUP 8
#define DECODE_WARPS 4

template <typename T, int HD>
__device__ void paged_attention_decode(
    T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
    float* __restrict__ part_sum, const T* __restrict__ q, const T* __restrict__ k_cache,
    const T* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
    const int* __restrict__ context_lens, const int* __restrict__ seq_ids,
    const int* __restrict__ cu_query, int num_heads, int num_kv_heads, int block_size,
    int partition_size, float scale, int q_stride) {
    constexpr int VEC = 16 / sizeof(T);
    constexpr int LPT = (HD / VEC) < 32 ? (HD / VEC) : 32;  // lanes per token
    constexpr int EPL = HD / LPT;                           // elements per lane
    constexpr int TPW = 32 / LPT;                           // tokens per warp
    constexpr int TPB = DECODE_WARPS * TPW;                 // tokens per block
    SMEM_DYNAMIC(float, smem);
    SMEM_ARRAY(float, head_max, MAX_GROUP);
    SMEM_ARRAY(float, head_sum, MAX_GROUP);

    const int kvh = blockIdx.x, drow = blockIdx.y, part = blockIdx.z, P = gridDim.z;
    const int seq = seq_ids[drow], row = cu_query[seq];
    const int G = num_heads / num_kv_heads;
    const int ctx = context_lens[seq];
    const int start = part * partition_size;
    const int n = min(ctx, start + partition_size) - start;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (n <= 0) {
        if (P > 1) {
            // A partition past this sequence's end: contributes nothing to the reduction.
            if (tid < G) {
                const i64 idx = ((i64)drow * num_heads + kvh * G + tid) * P + part;
                part_max[idx] = NEG_INF;
                part_sum[idx] = 0.f;
            }
        } else {
            // An empty context: the output is zeros, not whatever the buffer held.
            for (int i = tid; i < G * HD; i += blockDim.x)
                out[((i64)row * num_heads + kvh * G) * HD + i] = from_f32<T>(0.f);
        }
        return;
    }
    smem_ptr<float> logits = smem;                      // [G][partition_size]
    smem_ptr<float> red = smem + G * partition_size;    // [DECODE_WARPS][G][HD]
    const int sub = lane % LPT, slot = lane / LPT;
    const int* table = block_tables + (i64)seq * max_blocks;

    // This lane's slice of every query head of the group, pre-scaled.
    float qr[MAX_GROUP][EPL];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
        if (g < G) {
            load_vec<T, EPL>(qr[g], q + (i64)row * q_stride + (kvh * G + g) * HD + sub * EPL);
#pragma unroll
            for (int e = 0; e < EPL; ++e) qr[g][e] *= scale;
        }
    }

    // Scores. Every lane of a warp runs the same iterations (the shuffles need them all).
    for (int base = warp * TPW; base < n; base += TPB) {
        const int j = base + slot;
        const bool valid = j < n;
        float kf[EPL];
        if (valid) {
            const int pos = start + j;
            const i64 blk = table[pos / block_size];
            load_vec<T, EPL>(kf, k_cache + ((blk * num_kv_heads + kvh) * block_size +
                                            pos % block_size) * HD + sub * EPL);
        } else {
#pragma unroll
            for (int e = 0; e < EPL; ++e) kf[e] = 0.f;
        }
#pragma unroll
        for (int g = 0; g < MAX_GROUP; ++g) {
            if (g < G) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) d += qr[g][e] * kf[e];
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) d += shfl_xor(d, o);
                if (valid && sub == 0) logits[g * partition_size + j] = d;
            }
        }
    }
    sync_threads();

    // Softmax numerators in place; one warp per head.
    for (int g = warp; g < G; g += DECODE_WARPS) {
        const smem_ptr<float> lg = logits + g * partition_size;
        float m = NEG_INF;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, lg[j]);
        m = warp_max(m);
        float s = 0.f;
        for (int j = lane; j < n; j += 32) {
            const float e = __expf(lg[j] - m);
            lg[j] = e;
            s += e;
        }
        s = warp_sum(s);
        if (lane == 0) {
            head_max[g] = m;
            head_sum[g] = s;
        }
    }
    sync_threads();

    // Weighted V, every head of the group from one read of each row.
    float acc[MAX_GROUP][EPL];
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g)
#pragma unroll
        for (int e = 0; e < EPL; ++e) acc[g][e] = 0.f;
    for (int base = warp * TPW; base < n; base += TPB) {
        const int j = base + slot;
        if (j < n) {
            const int pos = start + j;
            const i64 blk = table[pos / block_size];
            float vf[EPL];
            load_vec<T, EPL>(vf, v_cache + ((blk * num_kv_heads + kvh) * block_size +
                                            pos % block_size) * HD + sub * EPL);
#pragma unroll
            for (int g = 0; g < MAX_GROUP; ++g) {
                if (g < G) {
                    const float p = logits[g * partition_size + j];
#pragma unroll
                    for (int e = 0; e < EPL; ++e) acc[g][e] += p * vf[e];
                }
            }
        }
    }
    // Sum the warp's token slots (lanes with the same `sub`), then the warps.
#pragma unroll
    for (int g = 0; g < MAX_GROUP; ++g) {
        if (g < G) {
#pragma unroll
            for (int e = 0; e < EPL; ++e) {
#pragma unroll
                for (int o = LPT; o < 32; o <<= 1)
                    acc[g][e] += shfl_xor(acc[g][e], o);
                if (lane < LPT) red[(warp * G + g) * HD + sub * EPL + e] = acc[g][e];
            }
        }
    }
    sync_threads();
    for (int i = tid; i < G * HD; i += blockDim.x) {
        const int g = i / HD, d = i % HD;
        float s = 0.f;
#pragma unroll
        for (int w = 0; w < DECODE_WARPS; ++w) s += red[(w * G + g) * HD + d];
        const float o = s / head_sum[g];
        if (P == 1) {
            out[((i64)row * num_heads + kvh * G + g) * HD + d] = from_f32<T>(o);
        } else {
            part_out[(((i64)drow * num_heads + kvh * G + g) * P + part) * HD + d] = o;
        }
    }
    if (P > 1 && tid < G) {
        const i64 idx = ((i64)drow * num_heads + kvh * G + tid) * P + part;
        part_max[idx] = head_max[tid];
        part_sum[idx] = head_sum[tid];
    }
}

/// Combines the partitions of split-K decode. Grid (num_heads, decode rows).
template <typename T, int HD>
__device__ void paged_attention_reduce(T* __restrict__ out, const float* __restrict__ part_out,
                                       const float* __restrict__ part_max,
                                       const float* __restrict__ part_sum,
                                       const int* __restrict__ context_lens,
                                       const int* __restrict__ seq_ids,
                                       const int* __restrict__ cu_query, int num_heads,
                                       int partition_size, int P) {
    const int head = blockIdx.x, drow = blockIdx.y, seq = seq_ids[drow];
    const int parts = min(P, (context_lens[seq] + partition_size - 1) / partition_size);
    const i64 base = ((i64)drow * num_heads + head) * P;
    float m = NEG_INF;
    for (int p = 0; p < parts; ++p) m = fmaxf(m, part_max[base + p]);
    float w = 0.f;
    for (int p = 0; p < parts; ++p) w += part_sum[base + p] * __expf(part_max[base + p] - m);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.f;
        for (int p = 0; p < parts; ++p)
            o += part_sum[base + p] * __expf(part_max[base + p] - m) * part_out[(base + p) * HD + d];
        out[((i64)cu_query[seq] * num_heads + head) * HD + d] = from_f32<T>(parts > 0 ? o / w : 0.f);
    }
}

#define DECODE(T, S, HD)                                                                      \
    extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32, 1)                         \
        paged_attention_decode_##S##_hd##HD(                                                  \
            T* out, float* po, float* pm, float* ps, const T* q, const T* kc, const T* vc,    \
            const int* bt, int mb, const int* cl, const int* sid, const int* cu, int nh,      \
            int nkv, int bs, int psz, float sc, int qs) {                                     \
        paged_attention_decode<T, HD>(out, po, pm, ps, q, kc, vc, bt, mb, cl, sid, cu, nh,    \
                                      nkv, bs, psz, sc, qs);                                  \
    }                                                                                         \
    extern "C" __global__ void paged_attention_reduce_##S##_hd##HD(                           \
        T* out, const float* po, const float* pm, const float* ps, const int* cl,             \
        const int* sid, const int* cu, int nh, int psz, int P) {                              \
        paged_attention_reduce<T, HD>(out, po, pm, ps, cl, sid, cu, nh, psz, P);              \
    }

#define DECODE_ALL_HD(T, S) DECODE(T, S, 64) DECODE(T, S, 128) DECODE(T, S, 256)
DECODE_ALL_HD(float, f32)
DECODE_ALL_HD(bf16, bf16)
DECODE_ALL_HD(f16, f16)
