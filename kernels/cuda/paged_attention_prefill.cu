// Paged attention for the prefill chunks of a batch in f32 (bf16 and f16 run on the tensor
// cores, paged_attention_tc.cu): each sequence's chunk of query tokens attends to its cached
// context plus the causal part of the chunk (whose K/V write_kv stored first).
//
// Flash-attention style on CUDA cores: a block owns PREFILL_ROWS (token, query head) rows of
// one KV group (tokens_per_tile tokens x G heads), streams the context through shared memory
// KEYS keys at a time, and keeps each row's running max, sum and output in registers (online
// softmax, f32). The host lists the tiles (sequence, first token) once per step, so no block
// searches for its work.

#define PREFILL_ROWS 32
#define PREFILL_WARPS 4
#define ROWS_PER_WARP (PREFILL_ROWS / PREFILL_WARPS)

template <typename T, int HD>
__device__ void paged_attention_prefill(
    T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
    const T* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
    const int* __restrict__ cu_query, const int* __restrict__ context_lens,
    const int* __restrict__ tile_seq, const int* __restrict__ tile_first, int tokens_per_tile,
    int num_heads, int num_kv_heads, int log2_block, float scale, int q_stride) {
    // Keys per tile: 32 (one per lane) unless a K row is 512 bytes or more, to stay within
    // 48 KiB of shared memory. Rows of k_s are padded to an odd number of words so lanes
    // reading "their" key hit distinct banks.
    constexpr int KEYS = HD * sizeof(T) >= 512 ? 16 : 32;
    constexpr int PAD = 4 / sizeof(T);
    constexpr int DPL = HD / 32;  // output dims per lane
    SMEM_ARRAY(T, q_s, PREFILL_ROWS * HD);
    SMEM_ARRAY(T, k_s, KEYS * (HD + PAD));
    SMEM_ARRAY(T, v_s, KEYS * HD);

    const PrefillTile pt = prefill_tile(cu_query, context_lens, tile_seq, tile_first, block_tables,
                                        max_blocks, tokens_per_tile, num_heads, num_kv_heads);
    const int kvh = pt.kvh, G = pt.G, q0 = pt.q0, first = pt.first, ntok = pt.ntok, rows = pt.rows;
    const int past = pt.p0 - first;  // positions before the chunk
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int* table = pt.table;
    const T zero = from_f32<T>(0.f);

    for (int i = tid; i < PREFILL_ROWS * HD; i += blockDim.x) {
        const int r = i / HD, d = i % HD;
        T v = zero;
        if (r < rows)
            v = q[(i64)(q0 + first + r / G) * q_stride + (kvh * G + r % G) * HD + d];
        q_s[i] = v;
    }

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][DPL];
#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
        m[k] = NEG_INF;
        l[k] = 0.f;
#pragma unroll
        for (int e = 0; e < DPL; ++e) acc[k][e] = 0.f;
    }

    const int last_pos = past + first + ntok - 1;  // the tile's last query position
    for (int kt = 0; kt <= last_pos; kt += KEYS) {
        sync_threads();  // the previous tile's readers are done (and q_s is written)
        for (int i = tid; i < KEYS * HD; i += blockDim.x) {
            const int j = i / HD, d = i % HD, pos = kt + j;
            T kv = zero, vv = zero;
            if (pos <= last_pos) {
                const i64 off = ((((i64)table[pos >> log2_block] * num_kv_heads + kvh)
                                  << log2_block) + (pos & ((1 << log2_block) - 1))) * HD + d;
                kv = k_cache[off];
                vv = v_cache[off];
            }
            k_s[j * (HD + PAD) + d] = kv;
            v_s[j * HD + d] = vv;
        }
        sync_threads();
#pragma unroll
        for (int k = 0; k < ROWS_PER_WARP; ++k) {
            const int r = warp * ROWS_PER_WARP + k;
            const int qpos = past + first + r / G;
            // Uniform over the warp: r and qpos depend on warp and k only.
            if (r < rows && kt <= qpos) {
                float s = NEG_INF;
                if (lane < KEYS && kt + lane <= qpos) {
                    const smem_ptr<T> qr = q_s + r * HD, kr = k_s + lane * (HD + PAD);
                    float d = 0.f;
#pragma unroll 8
                    for (int dd = 0; dd < HD; ++dd) d += to_f32(qr[dd]) * to_f32(kr[dd]);
                    s = d * scale;
                }
                const float mn = fmaxf(m[k], warp_max(s));  // finite: key kt is visible
                const float alpha = __expf(m[k] - mn);
                const float p = __expf(s - mn);
                l[k] = l[k] * alpha + warp_sum(p);
#pragma unroll
                for (int e = 0; e < DPL; ++e) acc[k][e] *= alpha;
                for (int j = 0; j < KEYS; ++j) {
                    const float pj = shfl_idx(p, j);
                    const smem_ptr<T> vr = v_s + j * HD + lane;
#pragma unroll
                    for (int e = 0; e < DPL; ++e) acc[k][e] += pj * to_f32(vr[32 * e]);
                }
                m[k] = mn;
            }
        }
    }
#pragma unroll
    for (int k = 0; k < ROWS_PER_WARP; ++k) {
        const int r = warp * ROWS_PER_WARP + k;
        if (r < rows) {
            const i64 row = ((i64)(q0 + first + r / G) * num_heads + kvh * G + r % G) * HD;
#pragma unroll
            for (int e = 0; e < DPL; ++e) out[row + lane + 32 * e] = from_f32<T>(acc[k][e] / l[k]);
        }
    }
}

#define PREFILL(T, S, HD)                                                                     \
    extern "C" __global__ void __launch_bounds__(PREFILL_WARPS * 32, 1)                          \
        paged_attention_prefill_##S##_hd##HD(                                                 \
            T* out, const T* q, const T* kc, const T* vc, const int* bt, int mb,              \
            const int* cu, const int* cl, const int* ts, const int* tf, int tpt, int nh,      \
            int nkv, int lbs, float sc, int qs) {                                             \
        paged_attention_prefill<T, HD>(out, q, kc, vc, bt, mb, cu, cl, ts, tf, tpt, nh, nkv,  \
                                       lbs, sc, qs);                                          \
    }

PREFILL(float, f32, 64)
PREFILL(float, f32, 128)
