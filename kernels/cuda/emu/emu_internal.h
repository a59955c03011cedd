// The emulator's private state, shared by emu_sched.cpp (launches, fibers, barriers),
// emu_shared.cpp (shared memory and its race checks, cp.async) and emu_warp.cpp (warp
// collectives, tensor-core fragments).

#pragma once

#include <vector>

#include "emu.h"
#include "emu_abi.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {

enum FiberState : uint8_t { READY, RUNNING, AT_BARRIER, AT_WARP, EXITED, ABORTED };

/// What a warp's lanes meet at; every lane of the warp must arrive at the same one.
enum Collective : int {
    COLL_NONE = 0,
    COLL_SHFL_IDX,
    COLL_SHFL_XOR,
    COLL_SHFL_DOWN,
    COLL_SHFL_UP,
    COLL_BALLOT,
    COLL_SYNCWARP,
    COLL_MMA_BF16,
    COLL_MMA_F16,
    COLL_LDMATRIX,
};
const char* collective_name(int kind);

/// A cp.async in flight: its bytes are read at issue, land at the wait that covers its group.
struct AsyncCopy {
    Region* region;
    int64_t off;
    uint32_t group;
    unsigned char data[16];
};

/// One CUDA thread.
struct Fiber : ThreadView {
    uint32_t tid;
    uint32_t pos;  // its place in the schedule's order
    uint32_t warp, lane;
    FiberState state;
    int wait_kind;  // COLL_* at a warp collective; unused at a barrier
    Site wait_site;
    void* sp;  // saved stack pointer while switched out (x86-64)
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    unsigned char* stack_lo;
    size_t stack_size;
    void* asan_fake;
    unsigned out[4];  // a collective's result for this lane
    std::vector<AsyncCopy> copies;
    uint32_t groups_committed;
};

/// Per byte of shared memory: the last write and the reads since it, each with the barrier
/// epoch and the warp-sync count it happened in.
struct Shadow {
    uint32_t w_epoch;  // < the block's first epoch: never written in this block
    uint32_t w_wsync;
    uint32_t r_epoch;
    uint32_t r_wsync;
    uint16_t w_tid;
    uint16_t r_tid;
    uint8_t r_warp;
    uint8_t r_kind;  // READERS_*
    uint8_t pending;  // a cp.async into this byte is in flight
    uint8_t pad;
};
enum : uint8_t { READERS_NONE = 0, READERS_ONE, READERS_ONE_WARP, READERS_MANY_WARPS };

struct RegionRec {
    Region region;
    const StaticDecl* decl;  // null for the dynamic region
    uint64_t block_serial;   // the block its contents were last NaN-filled for
    std::vector<Shadow> shadow;
};

struct WarpSlot {
    int arrived;
    int kind;
    Site site;
    unsigned in[32][10];
    Region* region[32];
    int64_t off[32];
    uint32_t sync_count;  // __syncwarp()s so far in this block: orders the warp's lanes
};

/// Everything one OS thread needs to run its launches.
struct Runtime {
    const EntryInfo* entry = nullptr;
    void** params = nullptr;
    BlockView view{};
    uint32_t nthreads = 0, nwarps = 0;
    std::vector<Fiber> fibers;
    std::vector<uint32_t> order;
    std::vector<std::pair<unsigned char*, size_t>> stacks;  // mmap'd, reused across launches
    void* sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
#endif
    const void* sched_stack_bottom = nullptr;
    size_t sched_stack_size = 0;
    void* sched_fake = nullptr;

    uint32_t bar_arrived = 0;
    Site bar_site{};
    uint32_t epoch = 0;        // grows at every completed __syncthreads and block start
    uint32_t block_epoch = 0;  // the epoch the current block started in
    Site epoch_site{};         // the barrier that opened the current epoch (file null: block start)
    WarpSlot warps[32];

    std::vector<RegionRec*> statics;
    RegionRec* dyn = nullptr;
    uint32_t static_bytes = 0, shared_bytes = 0, max_shared = 0;
    uint64_t block_serial = 0;

    bool failed = false;
    bool in_launch = false;
    char error[4096];
};

extern __thread Runtime* t_rt __attribute__((tls_model("initial-exec")));

inline Fiber* cur() { return static_cast<Fiber*>(t_cur); }
inline bool same_site(Site a, Site b) {
    return a.line == b.line && (a.file == b.file || (a.file && b.file && !std::strcmp(a.file, b.file)));
}
const char* base_name(const char* path);
/// "paged_attention_decode.cu:97", or "the start of the block" for a null site.
const char* site_str(Site s, char* buf, size_t n);

/// `f` has stopped (its state says why: AT_BARRIER, AT_WARP, EXITED): runs the next ready
/// thread in the schedule's order, switching to it directly, or returns to the scheduler when
/// none is ready. Returns when `f` is resumed.
void block(Fiber* f);
/// Straight back to the scheduler (a failed launch); never returns.
[[noreturn]] void abort_to_scheduler(Fiber* f);
/// Stops the launch, blaming thread `f`.
[[noreturn]] void fail_thread(Fiber* f, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

enum AccessMode { ACCESS_READ, ACCESS_WRITE, ACCESS_ASYNC_ISSUE, ACCESS_ASYNC_LAND };
/// shared_access on behalf of thread `f` (a warp collective reads for the lane that gave the
/// address).
unsigned char* access_as(Fiber* f, Region* r, int64_t off, uint32_t bytes, uint32_t align,
                         AccessMode mode);
/// Lands thread `f`'s copies of groups below `group_limit`.
void land_copies(Fiber* f, uint32_t group_limit);

/// Per launch and per block bookkeeping of shared memory (emu_shared.cpp).
void shared_begin_launch(Runtime* rt, uint32_t shared_bytes, uint32_t max_shared);
void shared_begin_block(Runtime* rt);
void shared_end_launch(Runtime* rt);

/// Brings lane `f` to its warp's collective `kind`; the last lane to arrive computes every
/// lane's result (`resolve`, emu_warp.cpp) and the warp goes on.
void warp_arrive(Fiber* f, int kind, unsigned mask, Site site);
void resolve(Runtime* rt, uint32_t warp, WarpSlot& w);

}  // namespace emu
