// Warp collectives. Each lane leaves its operands in its warp's slot and waits; the last lane
// to arrive computes every lane's result at once, so a collective sees the whole warp exactly
// as the hardware does. Only full warps and full masks are accepted: every lane of the warp
// must reach the same collective at the same call site, or the launch stops and says which
// lane was where.
//
// The tensor-core operations follow the PTX ISA's fragment layouts (section "Matrix Fragments
// for mma.m16n8k16 with floating point type" and the ldmatrix description). With
// groupID = lane >> 2 and threadID_in_group = lane % 4 (g and t below):
// - A (16x16, row-major), four .b32 registers of two 16-bit elements, low half first:
//   a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..);
// - B (16x8, "col"), two registers: b0 = (k 2t..2t+1, n g), b1 = (k 2t+8..2t+9, n g);
// - C, D (16x8 f32): c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1);
// - ldmatrix .x1/.x2/.x4: lanes 8j..8j+7 give the row addresses of matrix j (16 bytes each,
//   16-byte aligned); register j of lane l holds row l/4, columns 2(l%4) and 2(l%4)+1 of
//   matrix j, or with .trans rows 2(l%4) and 2(l%4)+1 of column l/4.

#include <cstdio>

#include "emu_internal.h"

namespace emu {

void warp_arrive(Fiber* f, int kind, unsigned mask, Site site) {
    Runtime* rt = t_rt;
    char a[256], b[256];
    if (mask != 0xffffffffu)
        fail_thread(f, "%s at %s with mask 0x%08x: only full-warp masks (0xffffffff) are supported",
                    collective_name(kind), site_str(site, a, sizeof a), mask);
    WarpSlot& w = rt->warps[f->warp];
    if (w.arrived == 0) {
        w.kind = kind;
        w.site = site;
    } else if (w.kind != kind || !same_site(w.site, site)) {
        fail_thread(f, "warp %u diverged: this lane is at %s at %s while %d lanes wait at %s at %s", f->warp,
                    collective_name(kind), site_str(site, a, sizeof a), w.arrived, collective_name(w.kind),
                    site_str(w.site, b, sizeof b));
    }
    if (++w.arrived < 32) {
        f->state = AT_WARP;
        f->wait_kind = kind;
        f->wait_site = site;
        block(f);
        return;
    }
    w.arrived = 0;
    resolve(rt, f->warp, w);
    for (uint32_t l = 0; l < 32; ++l) {
        Fiber& o = rt->fibers[f->warp * 32 + l];
        if (o.state == AT_WARP) o.state = READY;
    }
}

unsigned shfl(unsigned mask, unsigned value, int op, int arg, Site site) {
    Fiber* f = cur();
    WarpSlot& w = t_rt->warps[f->warp];
    w.in[f->lane][0] = value;
    w.in[f->lane][1] = (unsigned)arg;
    warp_arrive(f, COLL_SHFL_IDX + op, mask, site);
    return f->out[0];
}

unsigned ballot(unsigned mask, bool pred, Site site) {
    Fiber* f = cur();
    t_rt->warps[f->warp].in[f->lane][0] = pred ? 1u : 0u;
    warp_arrive(f, COLL_BALLOT, mask, site);
    return f->out[0];
}

void sync_warp(unsigned mask, Site site) { warp_arrive(cur(), COLL_SYNCWARP, mask, site); }

void mma_m16n8k16(bool bf16, float* d, const unsigned* a, const unsigned* b, const float* c, Site site) {
    Fiber* f = cur();
    unsigned* in = t_rt->warps[f->warp].in[f->lane];
    for (int i = 0; i < 4; ++i) in[i] = a[i];
    in[4] = b[0];
    in[5] = b[1];
    std::memcpy(in + 6, c, 16);
    warp_arrive(f, bf16 ? COLL_MMA_BF16 : COLL_MMA_F16, 0xffffffffu, site);
    std::memcpy(d, f->out, 16);
}

void ldmatrix(int count, bool trans, unsigned* regs, Region* r, int64_t off, Site site) {
    Fiber* f = cur();
    WarpSlot& w = t_rt->warps[f->warp];
    w.in[f->lane][0] = (unsigned)count | (trans ? 0x100u : 0u);
    w.region[f->lane] = r;
    w.off[f->lane] = off;
    warp_arrive(f, COLL_LDMATRIX, 0xffffffffu, site);
    for (int j = 0; j < count; ++j) regs[j] = f->out[j];
}

static float half_to_f32(unsigned bits, bool bf16) {
    bits &= 0xffffu;
    return bf16 ? __uint_as_float(bits << 16) : f16_bits_to_f32((unsigned short)bits);
}

static void resolve_mma(Fiber* lanes, const WarpSlot& w, bool bf16) {
    float A[16][16], B[16][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const unsigned* in = w.in[l];
        const int g = l >> 2, t = l & 3;
        const int rows[4] = {g, g + 8, g, g + 8}, cols[4] = {2 * t, 2 * t, 2 * t + 8, 2 * t + 8};
        for (int i = 0; i < 4; ++i) {
            A[rows[i]][cols[i]] = half_to_f32(in[i], bf16);
            A[rows[i]][cols[i] + 1] = half_to_f32(in[i] >> 16, bf16);
        }
        for (int i = 0; i < 2; ++i) {
            B[2 * t + 8 * i][g] = half_to_f32(in[4 + i], bf16);
            B[2 * t + 8 * i + 1][g] = half_to_f32(in[4 + i] >> 16, bf16);
        }
        float c[4];
        std::memcpy(c, in + 6, 16);
        C[g][2 * t] = c[0];
        C[g][2 * t + 1] = c[1];
        C[g + 8][2 * t] = c[2];
        C[g + 8][2 * t + 1] = c[3];
    }
    // Products of 16-bit floats are exact in f32; the sum is rounded once, as the tensor core
    // does to within its (wider) internal accumulation.
    float D[16][8];
    for (int m = 0; m < 16; ++m)
        for (int n = 0; n < 8; ++n) {
            double s = C[m][n];
            for (int k = 0; k < 16; ++k) s += (double)A[m][k] * (double)B[k][n];
            D[m][n] = (float)s;
        }
    for (int l = 0; l < 32; ++l) {
        const int g = l >> 2, t = l & 3;
        const float d[4] = {D[g][2 * t], D[g][2 * t + 1], D[g + 8][2 * t], D[g + 8][2 * t + 1]};
        std::memcpy(lanes[l].out, d, 16);
    }
}

static void resolve_ldmatrix(Fiber* lanes, const WarpSlot& w) {
    const unsigned spec = w.in[0][0];
    for (int l = 1; l < 32; ++l)
        if (w.in[l][0] != spec)
            fail_thread(&lanes[l], "ldmatrix: lanes disagree on the shape (.x%u%s here, .x%u%s in lane 0)",
                        w.in[l][0] & 0xff, (w.in[l][0] & 0x100) ? ".trans" : "", spec & 0xff,
                        (spec & 0x100) ? ".trans" : "");
    const int count = (int)(spec & 0xff);
    const bool trans = (spec & 0x100) != 0;
    if (count != 1 && count != 2 && count != 4)
        fail_thread(&lanes[0], "ldmatrix .x%d: only .x1, .x2 and .x4 exist", count);
    unsigned short M[4][8][8];
    for (int j = 0; j < count; ++j)
        for (int r = 0; r < 8; ++r) {
            Fiber* src = &lanes[8 * j + r];  // the lane that gave row r of matrix j
            const unsigned char* p = access_as(src, w.region[8 * j + r], w.off[8 * j + r], 16, 16, ACCESS_READ);
            std::memcpy(M[j][r], p, 16);
        }
    for (int l = 0; l < 32; ++l)
        for (int j = 0; j < count; ++j) {
            const int a = l >> 2, b = 2 * (l & 3);
            const unsigned lo = trans ? M[j][b][a] : M[j][a][b];
            const unsigned hi = trans ? M[j][b + 1][a] : M[j][a][b + 1];
            lanes[l].out[j] = lo | (hi << 16);
        }
}

void resolve(Runtime* rt, uint32_t warp, WarpSlot& w) {
    Fiber* lanes = &rt->fibers[warp * 32];
    switch (w.kind) {
        case COLL_SHFL_IDX:
        case COLL_SHFL_XOR:
        case COLL_SHFL_DOWN:
        case COLL_SHFL_UP:
            for (int l = 0; l < 32; ++l) {
                const int arg = (int)w.in[l][1];
                int src = l;
                if (w.kind == COLL_SHFL_IDX) src = arg & 31;
                if (w.kind == COLL_SHFL_XOR) src = l ^ (arg & 31);
                if (w.kind == COLL_SHFL_DOWN && l + arg < 32) src = l + arg;
                if (w.kind == COLL_SHFL_UP && l - arg >= 0) src = l - arg;
                lanes[l].out[0] = w.in[src][0];
            }
            break;
        case COLL_BALLOT: {
            unsigned bits = 0;
            for (int l = 0; l < 32; ++l) bits |= (w.in[l][0] ? 1u : 0u) << l;
            for (int l = 0; l < 32; ++l) lanes[l].out[0] = bits;
            break;
        }
        case COLL_SYNCWARP: w.sync_count++; break;
        case COLL_MMA_BF16: resolve_mma(lanes, w, true); break;
        case COLL_MMA_F16: resolve_mma(lanes, w, false); break;
        case COLL_LDMATRIX: resolve_ldmatrix(lanes, w); break;
        default: break;
    }
}

}  // namespace emu
