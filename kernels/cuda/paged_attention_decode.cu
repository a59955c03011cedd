// Paged attention for decode on CUDA cores: one query token per sequence, over its pages.
// (Groups of 4 and more query heads per KV head in bf16/f16 take the tensor-core kernel of
// paged_attention_tc.cu; this one serves f32 and the small groups.)
//
// Grid (num_kv_heads, decode rows, partitions), DECODE_WARPS warps per block. Decode row d
// is sequence seq_ids[d] of the batch, whose query (and output) row is cu_query[seq]: the
// decode rows of a mixed batch run here, its prefill chunks in the prefill kernels. A block
// serves one KV head of one sequence over one partition of its context, and every query head
// of that KV group at once (G of them, at most GMAX, a template parameter so the registers fit
// the group): each K and V row is read from memory once per group.
//
// One pass: LPT lanes share a token (16 bytes each per load), TPW tokens per warp side by
// side, U tokens per lane in flight (their K and V loaded together before any is used), an
// online softmax per head in registers, exp2 with the scale folded into q. Warps take chunks
// of TPW * U consecutive positions; a chunk inside one page costs one block-table lookup.
// At the end the token slots of a warp, then the warps (through shared memory), merge their
// (max, sum, output) states. With one partition the block writes the output; with several
// (split-K: long contexts, small batches) it writes its normalised partial output with its
// max and sum (log2 domain), and paged_attention_reduce combines them.

#define DECODE_WARPS 4

template <typename T, int HD, int GMAX>
__device__ void paged_attention_decode(
    T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
    float* __restrict__ part_sum, const T* __restrict__ q, const T* __restrict__ k_cache,
    const T* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
    const int* __restrict__ context_lens, const int* __restrict__ seq_ids,
    const int* __restrict__ cu_query, int num_heads, int num_kv_heads, int log2_block,
    int partition_size, float scale, int q_stride) {
    constexpr int VEC = 16 / sizeof(T);                              // elements per load
    constexpr int LPT = (HD / VEC) < 32 ? (HD / VEC) : 32;           // lanes per token
    constexpr int NV = HD / (LPT * VEC);                             // loads per lane per row
    constexpr int EPL = NV * VEC;                                    // elements per lane
    constexpr int TPW = 32 / LPT;                                    // token slots per warp
    constexpr int U = NV == 1 ? 4 : 2;                               // tokens per slot in flight
    constexpr int WT = TPW * U;                                      // positions per warp chunk
    SMEM_DYNAMIC(float, red);  // [DECODE_WARPS][G][HD + 2]: each warp's output, max and sum

    const DecodeBlock b = decode_block(seq_ids, cu_query, context_lens, block_tables, max_blocks,
                                       num_heads, num_kv_heads, partition_size);
    if (decode_empty<T, HD>(b, out, part_max, part_sum, num_heads)) return;
    const int kvh = b.kvh, row = b.row, G = b.G, start = b.start, end = b.end;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int sub = lane % LPT, slot = lane / LPT;
    const int block_size = 1 << log2_block;
    const int* table = b.table;
    const i64 head_stride = (i64)block_size * HD;  // one (page, head) tile

    // This lane's slices (16-byte chunks sub, sub + LPT, ...) of every head of the group,
    // times scale * log2(e) so that exp2 gives the softmax's exponentials.
    const float qscale = scale * 1.4426950408889634f;
    float qr[GMAX][EPL];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
#pragma unroll
        for (int v = 0; v < NV; ++v) {
            if (g < G)
                load_vec<T, VEC>(qr[g] + v * VEC,
                                 q + (i64)row * q_stride + (kvh * G + g) * HD + (v * LPT + sub) * VEC);
            else
#pragma unroll
                for (int e = 0; e < VEC; ++e) qr[g][v * VEC + e] = 0.f;
        }
#pragma unroll
        for (int e = 0; e < EPL; ++e) qr[g][e] *= qscale;
    }

    float m[GMAX], l[GMAX], acc[GMAX][EPL];
    zero(acc);
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        m[g] = NEG_INF;
        l[g] = 0.f;
    }

    // Every lane of a warp runs the same chunks (the shuffles need them all).
    for (int c0 = start + warp * WT; c0 < end; c0 += DECODE_WARPS * WT) {
        // Row offsets (in elements, within a cache) of this lane's U tokens; -1: none.
        i64 off[U];
        if (block_size >= WT) {
            // The chunk lies in one page (c0 is a multiple of WT, a power of two).
            const i64 page = table[c0 >> log2_block];
            const i64 base = (page * num_kv_heads + kvh) * head_stride +
                             (i64)(c0 & (block_size - 1)) * HD;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int j = u * TPW + slot;
                off[u] = c0 + j < end ? base + (i64)j * HD : -1;
            }
        } else {
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const int pos = c0 + u * TPW + slot;
                off[u] = pos < end ? ((i64)table[pos >> log2_block] * num_kv_heads + kvh) *
                                             head_stride +
                                         (i64)(pos & (block_size - 1)) * HD
                                   : -1;
            }
        }
        uint4 kraw[U][NV], vraw[U][NV];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                if (off[u] >= 0) {
                    const i64 o = off[u] + (v * LPT + sub) * VEC;
                    kraw[u][v] = *reinterpret_cast<const uint4*>(k_cache + o);
                    vraw[u][v] = *reinterpret_cast<const uint4*>(v_cache + o);
                } else {
                    kraw[u][v] = uint4{0u, 0u, 0u, 0u};
                    vraw[u][v] = uint4{0u, 0u, 0u, 0u};
                }
            }
        // Scores: a partial dot product per lane, summed over the token's LPT lanes.
        float s[GMAX][U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            float kf[EPL];
#pragma unroll
            for (int v = 0; v < NV; ++v) {
                const T* e = reinterpret_cast<const T*>(&kraw[u][v]);
#pragma unroll
                for (int i = 0; i < VEC; ++i) kf[v * VEC + i] = to_f32(e[i]);
            }
#pragma unroll
            for (int g = 0; g < GMAX; ++g) {
                float d = 0.f;
#pragma unroll
                for (int e = 0; e < EPL; ++e) d += qr[g][e] * kf[e];
#pragma unroll
                for (int o = LPT / 2; o > 0; o >>= 1) d += shfl_xor(d, o);
                s[g][u] = off[u] >= 0 ? d : NEG_INF;
            }
        }
        // Online softmax, then V weighted by the new probabilities.
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
            if (g >= G) continue;
            float mx = m[g];
#pragma unroll
            for (int u = 0; u < U; ++u) mx = fmaxf(mx, s[g][u]);
            const float alpha = m[g] == NEG_INF ? 0.f : exp2f(m[g] - mx);
            l[g] *= alpha;
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc[g][e] *= alpha;
#pragma unroll
            for (int u = 0; u < U; ++u) {
                const float p = s[g][u] == NEG_INF ? 0.f : exp2f(s[g][u] - mx);
                l[g] += p;
#pragma unroll
                for (int v = 0; v < NV; ++v) {
                    const T* e = reinterpret_cast<const T*>(&vraw[u][v]);
#pragma unroll
                    for (int i = 0; i < VEC; ++i) acc[g][v * VEC + i] += p * to_f32(e[i]);
                }
            }
            m[g] = mx;
        }
    }

    // Merge the warp's token slots (lanes with the same `sub`), then the warps.
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
        if (g >= G) continue;
#pragma unroll
        for (int o = LPT; o < 32; o <<= 1) {
            float acc2[EPL];
#pragma unroll
            for (int e = 0; e < EPL; ++e) acc2[e] = shfl_xor(acc[g][e], o);
            const float m2 = shfl_xor(m[g], o), l2 = shfl_xor(l[g], o);
            merge_state<EPL>(m[g], l[g], acc[g], m2, l2, acc2);
        }
        if (lane < LPT) {
            const smem_ptr<float> w = red + (warp * G + g) * (HD + 2);
#pragma unroll
            for (int v = 0; v < NV; ++v)
#pragma unroll
                for (int i = 0; i < VEC; ++i) w[(v * LPT + sub) * VEC + i] = acc[g][v * VEC + i];
            if (lane == 0) {
                w[HD] = m[g];
                w[HD + 1] = l[g];
            }
        }
    }
    sync_threads();
    decode_merge_store<T, HD, DECODE_WARPS>(b, red, G, out, part_out, part_max, part_sum, num_heads);
}

/// Combines the partitions of split-K decode (max and sum in the log2 domain). Grid
/// (num_heads, decode rows).
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
    for (int p = 0; p < parts; ++p) w += part_sum[base + p] * exp2f(part_max[base + p] - m);
    for (int d = threadIdx.x; d < HD; d += blockDim.x) {
        float o = 0.f;
        for (int p = 0; p < parts; ++p)
            o += part_sum[base + p] * exp2f(part_max[base + p] - m) * part_out[(base + p) * HD + d];
        out[((i64)cu_query[seq] * num_heads + head) * HD + d] = from_f32<T>(parts > 0 ? o / w : 0.f);
    }
}

#define DECODE(T, S, HD, GM)                                                                  \
    extern "C" __global__ void __launch_bounds__(DECODE_WARPS * 32, 1)                        \
        paged_attention_decode_##S##_hd##HD##_g##GM(                                          \
            T* out, float* po, float* pm, float* ps, const T* q, const T* kc, const T* vc,    \
            const int* bt, int mb, const int* cl, const int* sid, const int* cu, int nh,      \
            int nkv, int lbs, int psz, float sc, int qs) {                                    \
        paged_attention_decode<T, HD, GM>(out, po, pm, ps, q, kc, vc, bt, mb, cl, sid, cu,    \
                                          nh, nkv, lbs, psz, sc, qs);                         \
    }
#define REDUCE(T, S, HD)                                                                      \
    extern "C" __global__ void paged_attention_reduce_##S##_hd##HD(                           \
        T* out, const float* po, const float* pm, const float* ps, const int* cl,             \
        const int* sid, const int* cu, int nh, int psz, int P) {                              \
        paged_attention_reduce<T, HD>(out, po, pm, ps, cl, sid, cu, nh, psz, P);              \
    }

// f32 for every group up to 8; bf16 and f16 up to 4 (larger groups take the tensor cores).
#define DECODE_F32(HD) DECODE(float, f32, HD, 1) DECODE(float, f32, HD, 2) \
    DECODE(float, f32, HD, 4) DECODE(float, f32, HD, 8) REDUCE(float, f32, HD)
#define DECODE_HALF(T, S, HD) DECODE(T, S, HD, 1) DECODE(T, S, HD, 2) DECODE(T, S, HD, 4) \
    REDUCE(T, S, HD)
DECODE_F32(64) DECODE_F32(128) DECODE_F32(256)
DECODE_HALF(bf16, bf16, 64) DECODE_HALF(bf16, bf16, 128) DECODE_HALF(bf16, bf16, 256)
DECODE_HALF(f16, f16, 64) DECODE_HALF(f16, f16, 128) DECODE_HALF(f16, f16, 256)
