// Kernels that probe the CUDA-on-CPU emulator itself (kernels/tests/cuda_emu_checks.rs):
// each exercises one of its checks, or pins one of its tensor-core layouts to the PTX ISA.

extern "C" __global__ void probe_store(float* out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = (float)i;
}

extern "C" __global__ void probe_i64(float* out, i64 n) {
    if (threadIdx.x == 0) out[0] = (float)n;
}

/// Reads dynamic shared memory nobody wrote.
extern "C" __global__ void probe_dynamic_unwritten(float* out) {
    SMEM_DYNAMIC(float, buf);
    out[threadIdx.x] = buf[threadIdx.x];
}

/// Each thread writes float `threadIdx.x + shift` of the dynamic shared memory, then reads
/// back its own.
extern "C" __global__ void probe_dynamic_bounds(float* out, int shift) {
    SMEM_DYNAMIC(float, buf);
    buf[threadIdx.x + shift] = 1.f;
    out[threadIdx.x] = buf[threadIdx.x + shift];
}

/// Half the block at one barrier, half at another.
extern "C" __global__ void probe_divergent_barrier(float* out) {
    if (threadIdx.x < 32) {
        sync_threads();
    } else {
        sync_threads();
    }
    out[threadIdx.x] = 0.f;
}

/// Thread 0 waits at a barrier the others never reach.
extern "C" __global__ void probe_lonely_barrier(float* out) {
    if (threadIdx.x == 0) sync_threads();
    out[threadIdx.x] = 0.f;
}

/// Lanes write, then read their neighbour's, with or without __syncwarp between.
extern "C" __global__ void probe_warp_exchange(float* out, int sync) {
    SMEM_ARRAY(float, x, 64);
    const int lane = threadIdx.x & 31, base = (threadIdx.x >> 5) * 32;
    x[base + lane] = (float)threadIdx.x;
    if (sync) sync_warp();
    out[threadIdx.x] = x[base + ((lane + 1) & 31)];
}

/// Warps write, then read the other warp's, with or without __syncthreads between.
extern "C" __global__ void probe_block_exchange(float* out, int sync) {
    SMEM_ARRAY(float, x, 64);
    x[threadIdx.x] = (float)threadIdx.x;
    if (sync) sync_threads();
    out[threadIdx.x] = x[(threadIdx.x + 32) & 63];
}

/// A shuffle with a partial mask (only reachable through the emulator's own API).
extern "C" __global__ void probe_partial_mask(float* out) {
    out[threadIdx.x] = (float)::emu::shfl(0x0000ffffu, threadIdx.x, ::emu::SHFL_IDX, 0,
                                          ::emu::Site{__FILE__, __LINE__});
}

/// Every shuffle kind and ballot: out is [5][32].
extern "C" __global__ void probe_shuffles(int* out) {
    const int lane = threadIdx.x & 31;
    const int v = lane * 10;
    out[lane] = shfl_idx(v, 31 - lane);
    out[32 + lane] = shfl_xor(v, 5);
    out[64 + lane] = shfl_down(v, 3);
    out[96 + lane] = shfl_up(v, 3);
    out[128 + lane] = (int)ballot(lane % 3 == 0);
}

/// d (16x8 f32, row-major) = a (16x16, row-major) · b (16x8, row-major), each lane loading its
/// fragments straight from global memory by the PTX ISA's formulas.
template <typename T>
__device__ void probe_mma(float* d, const T* a, const T* b) {
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    unsigned ra[4], rb[2];
    for (int i = 0; i < 4; ++i) {
        const int row = (i & 1) ? g + 8 : g, col = 2 * t + ((i & 2) ? 8 : 0);
        ra[i] = (unsigned)a[row * 16 + col].bits | ((unsigned)a[row * 16 + col + 1].bits << 16);
    }
    for (int i = 0; i < 2; ++i) {
        const int k = 2 * t + 8 * i;
        rb[i] = (unsigned)b[k * 8 + g].bits | ((unsigned)b[(k + 1) * 8 + g].bits << 16);
    }
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    mma_16816<T>(c, ra, rb);
    for (int i = 0; i < 4; ++i) d[((i & 2) ? g + 8 : g) * 8 + 2 * t + (i & 1)] = c[i];
}
extern "C" __global__ void probe_mma_bf16(float* d, const bf16* a, const bf16* b) {
    probe_mma<bf16>(d, a, b);
}
extern "C" __global__ void probe_mma_f16(float* d, const f16* a, const f16* b) {
    probe_mma<f16>(d, a, b);
}

/// A 16x16 matrix of 16-bit values into shared memory, then ldmatrix .x4 (trans or not) with
/// lane l addressing row l % 8 of the quadrant l / 8 (rows 8 * (q & 1), columns 8 * (q >> 1)):
/// out[lane * 4 + j] = register j.
extern "C" __global__ void probe_ldmatrix(int* out, const bf16* m, int trans) {
    SMEM_ARRAY(bf16, s, 256);
    const int lane = threadIdx.x;
    for (int i = lane; i < 256; i += 32) s[i] = m[i];
    sync_threads();
    const int q = lane >> 3, r = lane & 7;
    unsigned regs[4];
    const smem_ptr<bf16> row = s + (r + 8 * (q & 1)) * 16 + 8 * (q >> 1);
    if (trans)
        ldmatrix_x4<true>(regs, row);
    else
        ldmatrix_x4<false>(regs, row);
    for (int j = 0; j < 4; ++j) out[lane * 4 + j] = (int)regs[j];
}

/// Each of 128 threads copies 16 bytes into shared memory with cp.async; then, after a
/// barrier, reads its neighbour's. `wait` 0 leaves out the cp_async_wait.
extern "C" __global__ void probe_cp_async(float* out, const float* in, int wait) {
    SMEM_ARRAY(float, s, 512);
    const int t = threadIdx.x;
    cp_async16(s + 4 * t, in + 4 * t, true);
    cp_async_commit();
    if (wait) cp_async_wait<0>();
    sync_threads();
    out[t] = s[(4 * t + 4) & 511];
}

/// A block that uses `n` floats of static shared memory beyond the dynamic.
extern "C" __global__ void probe_big_static(float* out) {
    SMEM_ARRAY(float, big, 12 * 1024);
    big[threadIdx.x] = 1.f;
    out[threadIdx.x] = big[threadIdx.x];
}
