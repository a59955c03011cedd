// Launches: checks against the device's limits, then every block in turn, its threads as
// fibers on this OS thread, switched only where CUDA threads synchronise.
//
// Why fibers rather than one OS thread per CUDA thread: a warp collective (every shuffle of a
// reduction) needs all 32 lanes to meet, so a block of 128 threads meets thousands of times
// per kernel; with OS threads each meeting is a round of futex wake-ups on a 2-core machine
// (tens of microseconds), with fibers it is 64 user-space stack switches (about a
// microsecond). And the order is fixed: a launch always runs the same schedule, so a result
// or a failure repeats exactly, and races are found by the shared-memory checks
// (emu_shared.cpp), not by luck. `schedule` bit 0 runs blocks and threads in reverse order,
// so that two runs of a kernel whose result depends on the order (a race on global memory)
// differ.

#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <cstdio>
#include <cstdlib>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#endif

namespace emu {

__thread ThreadView* t_cur __attribute__((tls_model("initial-exec"))) = nullptr;
__thread Runtime* t_rt __attribute__((tls_model("initial-exec"))) = nullptr;

namespace {

/// Frees this OS thread's runtime (stacks included) when the thread ends.
struct RuntimeOwner {
    Runtime* rt = nullptr;
    ~RuntimeOwner() {
        if (!rt) return;
        for (auto& s : rt->stacks) munmap(s.first, s.second);
        delete rt;
        t_rt = nullptr;
    }
};
thread_local RuntimeOwner t_owner;

Runtime* runtime() {
    if (!t_rt) {
        t_rt = new Runtime();
        t_owner.rt = t_rt;
    }
    return t_rt;
}

#if defined(EMU_ASAN)
constexpr size_t STACK_BYTES = 1 << 20;  // ASan's redzones need room
#else
constexpr size_t STACK_BYTES = 256 << 10;
#endif

/// A fiber stack with an inaccessible guard page below it (an overflow faults, never
/// corrupts a neighbour).
std::pair<unsigned char*, size_t> new_stack() {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    const size_t total = STACK_BYTES + page;
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) return {nullptr, 0};
    mprotect(p, page, PROT_NONE);
    return {static_cast<unsigned char*>(p), total};
}

}  // namespace

// ---- context switching ----------------------------------------------------------------------

#if defined(__x86_64__)
// Saves the callee-saved registers and the FP control words on the current stack, stores the
// stack pointer in *save, and continues on `load`'s stack where the same were saved.
extern "C" void pagedrt_emu_switch(void** save, void* load);
asm(R"(
    .text
    .p2align 4
    .globl pagedrt_emu_switch
    .hidden pagedrt_emu_switch
    .type pagedrt_emu_switch,@function
pagedrt_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size pagedrt_emu_switch, .-pagedrt_emu_switch
)");
#endif

static void fiber_main();

static void start_switch(void** fake, const void* bottom, size_t size) {
#if defined(EMU_ASAN)
    __sanitizer_start_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

static void finish_switch(void* fake, const void** bottom, size_t* size) {
#if defined(EMU_ASAN)
    __sanitizer_finish_switch_fiber(fake, bottom, size);
#else
    (void)fake, (void)bottom, (void)size;
#endif
}

/// Prepares `f` to start at fiber_main on its own stack at the next resume.
static void init_fiber(Fiber* f) {
#if defined(EMU_ASAN)
    // The frames an earlier block left on this stack (its threads never return) are still
    // poisoned.
    __asan_unpoison_memory_region(f->stack_lo, f->stack_size);
#endif
#if defined(__x86_64__)
    uintptr_t top = (uintptr_t)(f->stack_lo + f->stack_size) & ~(uintptr_t)15;
    uint64_t* sp = reinterpret_cast<uint64_t*>(top);
    *--sp = 0;                                 // fiber_main's return address: it never returns
    *--sp = (uint64_t)(uintptr_t)&fiber_main;  // where pagedrt_emu_switch's `ret` goes
    for (int i = 0; i < 6; ++i) *--sp = 0;     // rbp rbx r12 r13 r14 r15
    --sp;
    uint32_t mxcsr;
    uint16_t fpcw;
    asm volatile("stmxcsr %0" : "=m"(mxcsr));
    asm volatile("fnstcw %0" : "=m"(fpcw));
    std::memcpy(sp, &mxcsr, 4);
    std::memcpy(reinterpret_cast<unsigned char*>(sp) + 4, &fpcw, 2);
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack_lo;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, fiber_main, 0);
#endif
}

/// Saves the running context in `save_sp` / `save_uc` and continues fiber `to`, or the
/// scheduler when `to` is null; returns when the saved context is resumed. `fake` is ASan's
/// slot for the leaving stack (null when it is left for good).
static void jump(Runtime* rt, void** save_sp, void* save_uc, void** fake, Fiber* to) {
    if (to) {
        t_cur = to;
        to->state = RUNNING;
        start_switch(fake, to->stack_lo, to->stack_size);
    } else {
        start_switch(fake, rt->sched_stack_bottom, rt->sched_stack_size);
    }
#if defined(__x86_64__)
    (void)save_uc;
    pagedrt_emu_switch(save_sp, to ? to->sp : rt->sched_sp);
#else
    (void)save_sp;
    swapcontext(static_cast<ucontext_t*>(save_uc), to ? &to->uc : &rt->sched_uc);
#endif
}

#if defined(__x86_64__)
#define UC_OF(x) nullptr
#else
#define UC_OF(x) (&(x)->uc)
#endif

/// Scheduler -> fiber `f`; returns when some fiber switches back to the scheduler (when no
/// thread of the block is ready any more, or the launch failed).
static void resume(Runtime* rt, Fiber* f) {
#if defined(__x86_64__)
    jump(rt, &rt->sched_sp, nullptr, &rt->sched_fake, f);
#else
    jump(rt, &rt->sched_sp, &rt->sched_uc, &rt->sched_fake, f);
#endif
    finish_switch(rt->sched_fake, nullptr, nullptr);
    t_cur = nullptr;
}

/// Fiber `from` -> fiber `to`, or the scheduler when `to` is null; returns when `from` runs
/// again.
static void switch_from(Runtime* rt, Fiber* from, Fiber* to) {
    const bool final = from->state == EXITED || from->state == ABORTED;
    jump(rt, &from->sp, UC_OF(from), final ? nullptr : &from->asan_fake, to);
    finish_switch(from->asan_fake, nullptr, nullptr);
}

/// The first ready thread after `f` in the schedule's order.
static Fiber* next_ready(Runtime* rt, const Fiber* f) {
    const uint32_t n = rt->nthreads;
    for (uint32_t k = 1; k < n; ++k) {
        uint32_t p = f->pos + k;
        if (p >= n) p -= n;
        Fiber* g = &rt->fibers[rt->order[p]];
        if (g->state == READY) return g;
    }
    return nullptr;
}

void block(Fiber* f) { switch_from(t_rt, f, next_ready(t_rt, f)); }

void abort_to_scheduler(Fiber* f) {
    f->state = ABORTED;
    switch_from(t_rt, f, nullptr);
    __builtin_trap();  // an aborted launch never resumes its fibers
}

static void fiber_main() {
    Runtime* rt = t_rt;
    Fiber* f = cur();
    // The first fiber of the first launch on this OS thread is entered from the scheduler:
    // ASan then reports the scheduler's stack, needed to switch back to it.
    if (rt->sched_stack_bottom)
        finish_switch(nullptr, nullptr, nullptr);
    else
        finish_switch(nullptr, &rt->sched_stack_bottom, &rt->sched_stack_size);
    rt->entry->invoke(rt->params);
    if (!f->copies.empty())
        fail_thread(f, "exits with %zu cp.async copies in flight (no cp_async_wait covers them)",
                    f->copies.size());
    f->state = EXITED;
    block(f);
    __builtin_trap();  // an exited fiber is never resumed
}

// ---- reports ----------------------------------------------------------------------------

const char* base_name(const char* path) {
    if (!path) return "?";
    const char* slash = std::strrchr(path, '/');
    return slash ? slash + 1 : path;
}

const char* site_str(Site s, char* buf, size_t n) {
    if (!s.file)
        std::snprintf(buf, n, "the start of the block");
    else
        std::snprintf(buf, n, "%s:%d", base_name(s.file), s.line);
    return buf;
}

const char* collective_name(int kind) {
    switch (kind) {
        case COLL_SHFL_IDX: return "__shfl_sync";
        case COLL_SHFL_XOR: return "__shfl_xor_sync";
        case COLL_SHFL_DOWN: return "__shfl_down_sync";
        case COLL_SHFL_UP: return "__shfl_up_sync";
        case COLL_BALLOT: return "__ballot_sync";
        case COLL_SYNCWARP: return "__syncwarp";
        case COLL_MMA_BF16: return "mma.sync m16n8k16 bf16";
        case COLL_MMA_F16: return "mma.sync m16n8k16 f16";
        case COLL_LDMATRIX: return "ldmatrix";
        default: return "a warp collective";
    }
}

static void vreport(Runtime* rt, Fiber* f, const char* fmt, va_list ap) {
    if (rt->failed) return;
    rt->failed = true;
    int n = 0;
    const BlockView& v = rt->view;
    if (f)
        n = std::snprintf(rt->error, sizeof rt->error,
                          "block (%u,%u,%u) thread (%u,%u,%u) [warp %u lane %u]: ", v.block_idx.x,
                          v.block_idx.y, v.block_idx.z, f->thread_idx.x, f->thread_idx.y,
                          f->thread_idx.z, f->warp, f->lane);
    if (n < 0 || (size_t)n >= sizeof rt->error) n = 0;
    std::vsnprintf(rt->error + n, sizeof rt->error - n, fmt, ap);
}

static void report(Runtime* rt, Fiber* f, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static void report(Runtime* rt, Fiber* f, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(rt, f, fmt, ap);
    va_end(ap);
}

void fail_thread(Fiber* f, const char* fmt, ...) {
    Runtime* rt = t_rt;
    va_list ap;
    va_start(ap, fmt);
    vreport(rt, f, fmt, ap);
    va_end(ap);
    // `f` is the thread to blame; the one running may be another lane resolving a warp
    // collective for it. Either way the launch ends here.
    abort_to_scheduler(cur());
}

void fail(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vreport(t_rt, cur(), fmt, ap);
    va_end(ap);
    abort_to_scheduler(cur());
}

/// The barrier watchdog: no fiber can run, yet some have not finished. Says who waits where.
static void report_deadlock(Runtime* rt) {
    char buf[256], buf2[256];
    char msg[3000];
    size_t n = 0;
    auto put = [&](const char* fmt, auto... args) {
        if (n < sizeof msg) {
            int k = std::snprintf(msg + n, sizeof msg - n, fmt, args...);
            if (k > 0) n += (size_t)k;
        }
    };
    uint32_t exited = 0, at_warp = 0;
    const Fiber* first_exited = nullptr;
    const Fiber* first_at_warp = nullptr;
    for (const Fiber& f : rt->fibers) {
        if (f.state == EXITED) {
            exited++;
            if (!first_exited) first_exited = &f;
        } else if (f.state == AT_WARP) {
            at_warp++;
            if (!first_at_warp) first_at_warp = &f;
        }
    }
    if (rt->bar_arrived > 0) {
        put("__syncthreads at %s: %u of %u threads arrived", site_str(rt->bar_site, buf, sizeof buf),
            rt->bar_arrived, rt->nthreads);
        if (exited) put("; %u exited (the first: thread %u)", exited, first_exited->tid);
        if (at_warp)
            put("; %u wait at %s at %s (the first: thread %u)", at_warp,
                collective_name(first_at_warp->wait_kind),
                site_str(first_at_warp->wait_site, buf2, sizeof buf2), first_at_warp->tid);
    }
    for (uint32_t w = 0; w < rt->nwarps; ++w) {
        const WarpSlot& ws = rt->warps[w];
        if (ws.arrived == 0) continue;
        put("%swarp %u: %s at %s: %d of 32 lanes arrived", n ? "; " : "", w, collective_name(ws.kind),
            site_str(ws.site, buf, sizeof buf), ws.arrived);
        for (uint32_t l = 0; l < 32; ++l) {
            const Fiber& f = rt->fibers[w * 32 + l];
            if (f.state == EXITED) {
                put(" (lane %u exited)", l);
                break;
            }
            if (f.state == AT_BARRIER) {
                put(" (lane %u waits at __syncthreads at %s)", l, site_str(f.wait_site, buf2, sizeof buf2));
                break;
            }
        }
    }
    report(rt, nullptr, "barrier watchdog: block (%u,%u,%u) cannot go on: %s", rt->view.block_idx.x,
           rt->view.block_idx.y, rt->view.block_idx.z, msg);
}

// ---- barriers -------------------------------------------------------------------------------

void sync_threads(Site site) {
    Runtime* rt = t_rt;
    Fiber* f = cur();
    if (rt->bar_arrived == 0) {
        rt->bar_site = site;
    } else if (!same_site(rt->bar_site, site)) {
        char a[256], b[256];
        fail_thread(f, "divergent __syncthreads: this thread is at %s while %u threads wait at %s",
                    site_str(site, a, sizeof a), rt->bar_arrived, site_str(rt->bar_site, b, sizeof b));
    }
    if (++rt->bar_arrived < rt->nthreads) {
        f->state = AT_BARRIER;
        f->wait_site = site;
        block(f);
        return;
    }
    rt->bar_arrived = 0;
    rt->epoch++;
    rt->epoch_site = site;
    for (Fiber& o : rt->fibers)
        if (o.state == AT_BARRIER) o.state = READY;
}

// ---- launches -------------------------------------------------------------------------------

static bool run_block(Runtime* rt) {
    rt->epoch++;
    rt->block_epoch = rt->epoch;
    rt->epoch_site = Site{nullptr, 0};
    rt->bar_arrived = 0;
    for (uint32_t w = 0; w < rt->nwarps; ++w) {
        rt->warps[w].arrived = 0;
        rt->warps[w].sync_count = 0;
    }
    shared_begin_block(rt);
    for (Fiber& f : rt->fibers) {
        f.state = READY;
        f.copies.clear();
        f.groups_committed = 0;
        init_fiber(&f);
    }
    // The threads hand over to one another (block()); control comes back here only when
    // none is ready: all have exited, or the block is stuck.
    resume(rt, &rt->fibers[rt->order[0]]);
    if (rt->failed) return false;
    for (const Fiber& f : rt->fibers)
        if (f.state != EXITED) {
            report_deadlock(rt);
            return false;
        }
    return true;
}

static const char* kind_name(uint8_t k, char* buf, size_t n) {
    static const char* elems[] = {"f32", "bf16", "f16", "i32", "i64", "u64"};
    if (k & KIND_PTR) {
        const unsigned e = k & 0x0f;
        std::snprintf(buf, n, "%s%s*", (k & KIND_MUT) ? "" : "const ", e < 6 ? elems[e] : "?");
    } else {
        std::snprintf(buf, n, "%s", k == KIND_I32 ? "i32" : k == KIND_I64 ? "i64" : k == KIND_F32 ? "f32" : "?");
    }
    return buf;
}

/// The launch's arguments against the kernel's parameters: count, type, and a read-only
/// buffer never passed where the kernel writes.
static bool check_args(Runtime* rt, const EntryInfo* e, const uint8_t* kinds, uint32_t nargs) {
    if (nargs != e->nparams) {
        report(rt, nullptr, "launch of %s: %u arguments given, the kernel takes %u", e->name, nargs, e->nparams);
        return false;
    }
    for (uint32_t i = 0; i < nargs; ++i) {
        const uint8_t want = e->kinds[i], got = kinds[i];
        const bool ok = (want & KIND_PTR) ? (got & KIND_PTR) && (got & 0x0f) == (want & 0x0f) &&
                                                (!(want & KIND_MUT) || (got & KIND_MUT))
                                          : got == want;
        if (!ok) {
            char a[32], b[32];
            report(rt, nullptr, "launch of %s: argument %u is %s, the kernel takes %s%s", e->name, i + 1,
                   kind_name(got, a, sizeof a), kind_name(want, b, sizeof b),
                   (want & KIND_MUT) && (got & KIND_PTR) && !(got & KIND_MUT)
                       ? " (a read-only buffer where the kernel writes)"
                       : "");
            return false;
        }
    }
    return true;
}

/// The limits a CUDA device enforces at launch (cudaErrorInvalidConfiguration and friends).
static bool check_config(Runtime* rt, const EntryInfo* e, const LaunchConfig* c) {
    const uint64_t threads = (uint64_t)c->block[0] * c->block[1] * c->block[2];
    if (c->block[0] < 1 || c->block[1] < 1 || c->block[2] < 1 || c->block[0] > 1024 || c->block[1] > 1024 ||
        c->block[2] > 64 || threads > 1024) {
        report(rt, nullptr, "launch of %s: block (%u,%u,%u) is not 1 to 1,024 threads (x, y <= 1,024, z <= 64)",
               e->name, c->block[0], c->block[1], c->block[2]);
        return false;
    }
    if (threads % 32 != 0) {
        report(rt, nullptr,
               "launch of %s: block of %llu threads is not whole warps (pagedrt's kernels and the "
               "emulator assume full 32-lane warps)",
               e->name, (unsigned long long)threads);
        return false;
    }
    if (c->grid[0] < 1 || c->grid[1] < 1 || c->grid[2] < 1 || c->grid[0] > 0x7fffffffu || c->grid[1] > 65535 ||
        c->grid[2] > 65535) {
        report(rt, nullptr, "launch of %s: grid (%u,%u,%u) outside 1..2^31-1 x 1..65,535 x 1..65,535", e->name,
               c->grid[0], c->grid[1], c->grid[2]);
        return false;
    }
    if (c->shared_bytes > c->max_shared_bytes) {
        report(rt, nullptr, "launch of %s: %u bytes of dynamic shared memory, the device allows %u per block",
               e->name, c->shared_bytes, c->max_shared_bytes);
        return false;
    }
    return true;
}

static bool prepare_threads(Runtime* rt, const LaunchConfig* c) {
    const uint32_t bx = c->block[0], by = c->block[1];
    rt->nthreads = bx * by * c->block[2];
    rt->nwarps = rt->nthreads / 32;
    while (rt->stacks.size() < rt->nthreads) {
        auto s = new_stack();
        if (!s.first) {
            report(rt, nullptr, "the emulator could not map a fiber stack");
            return false;
        }
        rt->stacks.push_back(s);
    }
    rt->fibers.resize(rt->nthreads);
    rt->order.resize(rt->nthreads);
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    for (uint32_t t = 0; t < rt->nthreads; ++t) {
        Fiber& f = rt->fibers[t];
        f.thread_idx = uint3{t % bx, (t / bx) % by, t / (bx * by)};
        f.block = &rt->view;
        f.tid = t;
        f.warp = t / 32;
        f.lane = t % 32;
        f.stack_lo = rt->stacks[t].first + page;
        f.stack_size = rt->stacks[t].second - page;
        f.asan_fake = nullptr;
        f.pos = (c->schedule & 1) ? rt->nthreads - 1 - t : t;
        rt->order[f.pos] = t;
    }
    return true;
}

int launch(const EntryInfo* e, const LaunchConfig* c, void** params, const uint8_t* kinds, uint32_t nargs,
           char* err, size_t err_len) {
    Runtime* rt = runtime();
    if (rt->in_launch) {
        std::snprintf(err, err_len, "launch of %s from inside a kernel", e->name);
        return 1;
    }
    rt->failed = false;
    rt->error[0] = 0;
    bool ok = check_args(rt, e, kinds, nargs) && check_config(rt, e, c) && prepare_threads(rt, c);
    if (ok) {
        rt->in_launch = true;
        rt->entry = e;
        rt->params = params;
        rt->view.grid_dim = dim3{c->grid[0], c->grid[1], c->grid[2]};
        rt->view.block_dim = dim3{c->block[0], c->block[1], c->block[2]};
        shared_begin_launch(rt, c->shared_bytes, c->max_shared_bytes);
        const uint64_t gx = c->grid[0], gy = c->grid[1], blocks = gx * gy * c->grid[2];
        for (uint64_t i = 0; i < blocks && ok; ++i) {
            const uint64_t b = (c->schedule & 1) ? blocks - 1 - i : i;
            rt->view.block_idx = uint3{(unsigned)(b % gx), (unsigned)((b / gx) % gy), (unsigned)(b / (gx * gy))};
            ok = run_block(rt);
        }
        shared_end_launch(rt);
        rt->in_launch = false;
    }
    if (!ok || rt->failed) {
        std::snprintf(err, err_len, "%s", rt->error[0] ? rt->error : "the launch failed");
        return 1;
    }
    return 0;
}

}  // namespace emu
