// Paged attention on the tensor cores (bf16, f16; mma.sync m16n8k16 with f32 accumulators,
// sm_80 and later), flash-attention style:
//
// - prefill / mixed chunks (paged_attention_prefill_tc): a block owns 64 query rows of one
//   KV group, the rows of the group's heads for 64 / G consecutive tokens packed together
//   (row r = token r / G, head r % G), 16 rows per warp. K and V are gathered page by page
//   into shared memory in tiles of 64 keys (32 at head_dim 256) with cp.async, double
//   buffered: the next tile loads while the tensor cores work on this one. S = Q·Kᵀ and
//   O += P·V run on the tensor cores with operands from XOR-swizzled shared memory through
//   ldmatrix; the online softmax runs on S in registers, and P stays in registers as the A
//   operand of P·V. Key tiles past a warp's last query position are skipped by that warp;
//   tiles past the block's last query are never loaded.
// - decode for GQA groups of 4 to 16 (paged_attention_decode_tc): the G heads of a KV group
//   are the rows of one 16-row tile (the rest zeros), the 4 warps split each 64-key tile 16
//   keys each, and merge their softmax states at the end; partitions and the reduction as in
//   paged_attention_decode.cu.
//
// Fragment layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16"; g = lane / 4, t = lane % 4):
// A 16x16 row-major, four registers a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..),
// a3 = (g+8, 2t+8..); B 16x8, two registers b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g);
// C/D 16x8 f32 c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1). K rows in
// shared memory are B's columns for S = Q·Kᵀ (ldmatrix as is); V rows are B's rows for P·V
// (ldmatrix .trans). Two n-tiles of S make one A operand of P·V.

#define TC_WARPS 4
#define TC_THREADS (TC_WARPS * 32)

/// Element offset of 16-byte chunk `chunk` of row `row` in a tile of rows of HD 16-bit
/// elements, XOR-swizzled: ldmatrix reading one chunk column of 8 consecutive rows touches 8
/// different bank groups instead of one.
template <int HD>
__device__ __forceinline__ int swz(int row, int chunk) {
    static_assert(HD >= 64, "the swizzle needs 8 chunks per row");
    return row * HD + ((chunk ^ (row & 7)) << 3);
}

/// Queues cp.async copies of positions [t0, t0 + KEYS) of K and V (one KV head) into
/// swizzled tiles; positions at or past `end` are zero-filled (no read). Each thread copies
/// whole rows' chunks; the page of a row is looked up once per row.
template <typename T, int HD, int KEYS>
__device__ __forceinline__ void load_kv_tile(smem_ptr<T> k_dst, smem_ptr<T> v_dst,
                                             const T* __restrict__ k_cache,
                                             const T* __restrict__ v_cache, const int* table,
                                             int t0, int end, int log2_block, int num_kv_heads,
                                             int kvh) {
    constexpr int CH = HD / 8;  // chunks per row
    constexpr int ROWS_PER_PASS = TC_THREADS / CH;
    const int c = threadIdx.x % CH;
    for (int j = threadIdx.x / CH; j < KEYS; j += ROWS_PER_PASS) {
        const int pos = t0 + j;
        const bool valid = pos < end;
        i64 off = 0;
        if (valid) {
            const i64 page = table[pos >> log2_block];
            off = (((page * num_kv_heads + kvh) << log2_block) + (pos & ((1 << log2_block) - 1))) * HD;
        }
        cp_async16(k_dst + swz<HD>(j, c), k_cache + off + c * 8, valid);
        cp_async16(v_dst + swz<HD>(j, c), v_cache + off + c * 8, valid);
    }
}

/// A operand: rows r0..r0+15, columns 16 kk..16 kk+15 of a swizzled tile.
template <int HD, typename T>
__device__ __forceinline__ void load_a(unsigned a[4], smem_ptr<T> tile, int r0, int kk) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4<false>(a, tile + swz<HD>(r0 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                          kk * 2 + (lane >> 4)));
}

/// B operands of S = Q·Kᵀ for keys n0..n0+15 (two n-tiles: {b0, b1}, {b2, b3}) and
/// dims 16 kk..16 kk+15.
template <int HD, typename T>
__device__ __forceinline__ void load_b_k(unsigned b[4], smem_ptr<T> tile, int n0, int kk) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4<false>(b, tile + swz<HD>(n0 + (lane & 7) + (lane >> 4) * 8,
                                          kk * 2 + ((lane >> 3) & 1)));
}

/// B operands of O += P·V for keys k0..k0+15 and dims d0..d0+15 (two n-tiles).
template <int HD, typename T>
__device__ __forceinline__ void load_b_v(unsigned b[4], smem_ptr<T> tile, int k0, int d0) {
    const int lane = threadIdx.x & 31;
    ldmatrix_x4<true>(b, tile + swz<HD>(k0 + (lane & 7) + ((lane >> 3) & 1) * 8,
                                         d0 / 8 + (lane >> 4)));
}

/// One online-softmax step on a warp's S tile (16 rows x 8 NT keys, already scaled to the
/// log2 domain and masked with NEG_INF): new row maxima, O and the row sums rescaled, S
/// turned into P in place. Rows g (i < 2) and g + 8 (i >= 2) of this thread; a row's four
/// lanes (same g) agree on its max through two shuffles.
template <int NT, int DT>
__device__ __forceinline__ void softmax_step(float (&s)[NT][4], float (&o)[DT][4], float m[2],
                                             float l[2]) {
    float mx[2] = {m[0], m[1]};
#pragma unroll
    for (int n = 0; n < NT; ++n) {
        mx[0] = fmaxf(mx[0], fmaxf(s[n][0], s[n][1]));
        mx[1] = fmaxf(mx[1], fmaxf(s[n][2], s[n][3]));
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 1));
        mx[r] = fmaxf(mx[r], shfl_xor(mx[r], 2));
    }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        alpha[r] = m[r] == NEG_INF ? 0.f : exp2f(m[r] - mx[r]);
        l[r] *= alpha[r];
        m[r] = mx[r];
    }
#pragma unroll
    for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int r = i >> 1;
            const float p = s[n][i] == NEG_INF ? 0.f : exp2f(s[n][i] - mx[r]);
            s[n][i] = p;
            l[r] += p;
        }
#pragma unroll
    for (int d = 0; d < DT; ++d)
#pragma unroll
        for (int i = 0; i < 4; ++i) o[d][i] *= alpha[i >> 1];
}

/// O += P·V for keys k0..k0+KEYS16*16 of this warp's P (S n-tiles from n0/8) and V tile.
template <typename T, int HD, int NT, int KSTEPS>
__device__ __forceinline__ void pv(float (&o)[HD / 8][4], const float (&p)[NT][4], int n0,
                                   smem_ptr<T> v_tile, int k0) {
#pragma unroll
    for (int k = 0; k < KSTEPS; ++k) {
        const int n = n0 + 2 * k;
        const unsigned a[4] = {pack2<T>(p[n][0], p[n][1]), pack2<T>(p[n][2], p[n][3]),
                               pack2<T>(p[n + 1][0], p[n + 1][1]),
                               pack2<T>(p[n + 1][2], p[n + 1][3])};
#pragma unroll
        for (int d = 0; d < HD / 8; d += 2) {
            unsigned b[4];
            load_b_v<HD>(b, v_tile, k0 + 16 * k, d * 8);
            mma_16816<T>(o[d], a, b);
            mma_16816<T>(o[d + 1], a, b + 2);
        }
    }
}

/// The row sums of a thread's two rows, over the row's four lanes.
__device__ __forceinline__ void finish_sums(float l[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        l[r] += shfl_xor(l[r], 1);
        l[r] += shfl_xor(l[r], 2);
    }
}

template <typename T, int HD>
__device__ void paged_attention_prefill_tc(
    T* __restrict__ out, const T* __restrict__ q, const T* __restrict__ k_cache,
    const T* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
    const int* __restrict__ cu_query, const int* __restrict__ context_lens,
    const int* __restrict__ tile_seq, const int* __restrict__ tile_first, int tokens_per_tile,
    int num_heads, int num_kv_heads, int log2_block, float scale, int q_stride) {
    constexpr int ROWS = 16 * TC_WARPS;
    constexpr int KEYS = HD <= 128 ? 64 : 32;
    constexpr int NT = KEYS / 8, DT = HD / 8, KK = HD / 16;
    SMEM_DYNAMIC(T, smem);  // Q [ROWS][HD], then K and V [2 stages][KEYS][HD]
    const smem_ptr<T> q_s = smem, k_s = smem + ROWS * HD, v_s = k_s + 2 * KEYS * HD;

    const PrefillTile pt = prefill_tile(cu_query, context_lens, tile_seq, tile_first, block_tables,
                                        max_blocks, tokens_per_tile, num_heads, num_kv_heads);
    const int kvh = pt.kvh, G = pt.G, q0 = pt.q0, first = pt.first, ntok = pt.ntok, rows = pt.rows;
    const int p0 = pt.p0;  // the position of the tile's first token
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int* table = pt.table;
    const int ntiles = (p0 + ntok - 1) / KEYS + 1;

    for (int i = tid; i < ROWS * (HD / 8); i += TC_THREADS) {
        const int r = i / (HD / 8), c = i % (HD / 8);
        const bool valid = r < rows;
        const T* src = valid ? q + (i64)(q0 + first + r / G) * q_stride + (kvh * G + r % G) * HD + c * 8
                             : q;
        cp_async16(q_s + swz<HD>(r, c), src, valid);
    }
    load_kv_tile<T, HD, KEYS>(k_s, v_s, k_cache, v_cache, table, 0, p0 + ntok, log2_block,
                              num_kv_heads, kvh);
    cp_async_commit();

    const int r0 = warp * 16;
    const bool active = r0 < rows;
    // Positions of this thread's rows (a padding row takes the last token's) and the last
    // position any row of the warp attends to.
    const int qpos[2] = {p0 + min(r0 + g, rows - 1) / G, p0 + min(r0 + g + 8, rows - 1) / G};
    const int warp_last = p0 + min(r0 + 15, rows - 1) / G;
    const int warp_first = p0 + r0 / G;
    const float qscale = scale * 1.4426950408889634f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f}, o[DT][4];
    zero(o);

    for (int kt = 0; kt < ntiles; ++kt) {
        const int st = kt & 1;
        if (kt + 1 < ntiles) {
            load_kv_tile<T, HD, KEYS>(k_s + (st ^ 1) * KEYS * HD, v_s + (st ^ 1) * KEYS * HD,
                                      k_cache, v_cache, table, (kt + 1) * KEYS, p0 + ntok,
                                      log2_block, num_kv_heads, kvh);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        sync_threads();  // this tile (and Q) landed for every thread
        const int k0 = kt * KEYS;
        if (active && k0 <= warp_last) {
            const smem_ptr<T> kt_s = k_s + st * KEYS * HD, vt_s = v_s + st * KEYS * HD;
            float s[NT][4];
            zero(s);
#pragma unroll
            for (int kk = 0; kk < KK; ++kk) {
                unsigned a[4];
                load_a<HD>(a, q_s, r0, kk);
#pragma unroll
                for (int n = 0; n < NT; n += 2) {
                    unsigned b[4];
                    load_b_k<HD>(b, kt_s, n * 8, kk);
                    mma_16816<T>(s[n], a, b);
                    mma_16816<T>(s[n + 1], a, b + 2);
                }
            }
            // Scale; mask the keys past a row's position when the tile reaches past the
            // warp's first one (earlier tiles are fully visible).
            const bool partial = k0 + KEYS - 1 > warp_first;
#pragma unroll
            for (int n = 0; n < NT; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i) {
                    const int key = k0 + n * 8 + 2 * t + (i & 1);
                    s[n][i] = partial && key > qpos[i >> 1] ? NEG_INF : s[n][i] * qscale;
                }
            softmax_step<NT, DT>(s, o, m, l);
            pv<T, HD, NT, KEYS / 16>(o, s, 0, vt_s, 0);
        }
        sync_threads();  // every warp is done with this stage before it is refilled
    }
    finish_sums(l);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int r = r0 + g + 8 * h;
        if (r >= rows) continue;
        T* dst = out + ((i64)(q0 + first + r / G) * num_heads + kvh * G + r % G) * HD;
        const float inv = 1.f / l[h];
#pragma unroll
        for (int d = 0; d < DT; ++d)
            *reinterpret_cast<unsigned*>(dst + d * 8 + 2 * t) =
                pack2<T>(o[d][2 * h] * inv, o[d][2 * h + 1] * inv);
    }
}

template <typename T, int HD>
__device__ void paged_attention_decode_tc(
    T* __restrict__ out, float* __restrict__ part_out, float* __restrict__ part_max,
    float* __restrict__ part_sum, const T* __restrict__ q, const T* __restrict__ k_cache,
    const T* __restrict__ v_cache, const int* __restrict__ block_tables, int max_blocks,
    const int* __restrict__ context_lens, const int* __restrict__ seq_ids,
    const int* __restrict__ cu_query, int num_heads, int num_kv_heads, int log2_block,
    int partition_size, float scale, int q_stride) {
    constexpr int KEYS = 16 * TC_WARPS;  // a warp takes 16 keys of each tile
    constexpr int DT = HD / 8, KK = HD / 16;
    constexpr bool Q_IN_REGS = HD <= 128;
    SMEM_DYNAMIC(T, smem);  // Q [16][HD], then K and V [2 stages][KEYS][HD]
    const smem_ptr<T> q_s = smem, k_s = smem + 16 * HD, v_s = k_s + 2 * KEYS * HD;

    const DecodeBlock db = decode_block(seq_ids, cu_query, context_lens, block_tables,
                                        max_blocks, num_heads, num_kv_heads, partition_size);
    if (decode_empty<T, HD>(db, out, part_max, part_sum, num_heads)) return;
    const int kvh = db.kvh, row = db.row, G = db.G, start = db.start, end = db.end;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
    const int* table = db.table;
    const int ntiles = (end - start + KEYS - 1) / KEYS;

    for (int i = tid; i < 16 * (HD / 8); i += TC_THREADS) {
        const int r = i / (HD / 8), c = i % (HD / 8);
        const bool valid = r < G;
        const T* src = valid ? q + (i64)row * q_stride + (kvh * G + r) * HD + c * 8 : q;
        cp_async16(q_s + swz<HD>(r, c), src, valid);
    }
    load_kv_tile<T, HD, KEYS>(k_s, v_s, k_cache, v_cache, table, start, end, log2_block,
                              num_kv_heads, kvh);
    cp_async_commit();

    const float qscale = scale * 1.4426950408889634f;
    float m[2] = {NEG_INF, NEG_INF}, l[2] = {0.f, 0.f}, o[DT][4];
    zero(o);
    unsigned qa[Q_IN_REGS ? KK : 1][4];

    for (int kt = 0; kt < ntiles; ++kt) {
        const int st = kt & 1;
        const int t0 = start + kt * KEYS;
        if (kt + 1 < ntiles) {
            load_kv_tile<T, HD, KEYS>(k_s + (st ^ 1) * KEYS * HD, v_s + (st ^ 1) * KEYS * HD,
                                      k_cache, v_cache, table, t0 + KEYS, end, log2_block,
                                      num_kv_heads, kvh);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        sync_threads();
        if (Q_IN_REGS && kt == 0)
#pragma unroll
            for (int kk = 0; kk < KK; ++kk) load_a<HD>(qa[Q_IN_REGS ? kk : 0], q_s, 0, kk);
        const int w0 = t0 + warp * 16;  // this warp's first key
        if (w0 < end) {
            const smem_ptr<T> kt_s = k_s + st * KEYS * HD, vt_s = v_s + st * KEYS * HD;
            float s[2][4];
            zero(s);
#pragma unroll
            for (int kk = 0; kk < KK; ++kk) {
                unsigned a[4];
                if (Q_IN_REGS) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) a[i] = qa[Q_IN_REGS ? kk : 0][i];
                } else {
                    load_a<HD>(a, q_s, 0, kk);
                }
                unsigned b[4];
                load_b_k<HD>(b, kt_s, warp * 16, kk);
                mma_16816<T>(s[0], a, b);
                mma_16816<T>(s[1], a, b + 2);
            }
#pragma unroll
            for (int n = 0; n < 2; ++n)
#pragma unroll
                for (int i = 0; i < 4; ++i)
                    s[n][i] = w0 + n * 8 + 2 * t + (i & 1) < end ? s[n][i] * qscale : NEG_INF;
            softmax_step<2, DT>(s, o, m, l);
            pv<T, HD, 2, 1>(o, s, 0, vt_s, warp * 16);
        }
        sync_threads();
    }
    finish_sums(l);

    // Merge the warps: each leaves its rows' (output, max, sum) in the K/V area, no longer
    // read (the loop ended with a barrier).
    const smem_ptr<float> comb = smem_cast<float>(k_s);  // [TC_WARPS][16][HD + 2]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const smem_ptr<float> r = comb + (warp * 16 + g + 8 * h) * (HD + 2);
#pragma unroll
        for (int d = 0; d < DT; ++d) {
            r[d * 8 + 2 * t] = o[d][2 * h];
            r[d * 8 + 2 * t + 1] = o[d][2 * h + 1];
        }
        if (t == 0) {
            r[HD] = m[h];
            r[HD + 1] = l[h];
        }
    }
    sync_threads();
    decode_merge_store<T, HD, TC_WARPS>(db, comb, 16, out, part_out, part_max, part_sum, num_heads);
}

#define TC(T, S, HD)                                                                          \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1)                               \
        paged_attention_prefill_tc_##S##_hd##HD(                                              \
            T* out, const T* q, const T* kc, const T* vc, const int* bt, int mb,              \
            const int* cu, const int* cl, const int* ts, const int* tf, int tpt, int nh,      \
            int nkv, int lbs, float sc, int qs) {                                             \
        paged_attention_prefill_tc<T, HD>(out, q, kc, vc, bt, mb, cu, cl, ts, tf, tpt, nh,    \
                                          nkv, lbs, sc, qs);                                  \
    }                                                                                         \
    extern "C" __global__ void __launch_bounds__(TC_THREADS, 1)                               \
        paged_attention_decode_tc_##S##_hd##HD(                                               \
            T* out, float* po, float* pm, float* ps, const T* q, const T* kc, const T* vc,    \
            const int* bt, int mb, const int* cl, const int* sid, const int* cu, int nh,      \
            int nkv, int lbs, int psz, float sc, int qs) {                                    \
        paged_attention_decode_tc<T, HD>(out, po, pm, ps, q, kc, vc, bt, mb, cl, sid, cu, nh, \
                                         nkv, lbs, psz, sc, qs);                              \
    }

TC(bf16, bf16, 64)
TC(bf16, bf16, 128)
TC(bf16, bf16, 256)
TC(f16, f16, 64)
TC(f16, f16, 128)
TC(f16, f16, 256)
