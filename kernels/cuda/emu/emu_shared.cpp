// Shared memory: each array of a block is its own allocation of exactly its size, filled with
// 0xff bytes (NaN as f32, bf16 and f16; -1 as integers) when a block starts, and every access
// goes through `access_as`, which checks
// - bounds and alignment (an index off by one past an array stops the launch, it does not
//   read the neighbour);
// - that the bytes were written by some thread of this block (no reads of the fill);
// - that no cp.async into them is in flight;
// - races, as compute-sanitizer's racecheck defines them: two accesses by different threads,
//   at least one a write, with no barrier between them. "Between" is tracked with epochs: a
//   completed __syncthreads starts a new block-wide epoch; a __syncwarp starts a new one for
//   its warp. Each byte keeps its last write and the reads since (one reader, several in one
//   warp, or several warps), so a missing barrier is found on the first run, in any order.
//
// The records are per 2-byte granule, the smallest element the kernels keep in shared
// memory (bf16, f16): a 1-byte access is checked as its granule's.

#include <cstdio>
#include <cstdlib>

#include "emu_internal.h"

namespace emu {

constexpr uint32_t GRANULE = 2;

static RegionRec* new_region(const char* name, uint32_t bytes, const StaticDecl* decl) {
    RegionRec* r = new RegionRec();
    // malloc gives 16-byte alignment on the platforms the emulator runs on; checked anyway.
    r->region.base = static_cast<unsigned char*>(std::malloc(bytes ? bytes : 1));
    r->region.size = bytes;
    r->region.name = name;
    r->decl = decl;
    r->block_serial = 0;
    r->shadow.assign((bytes + GRANULE - 1) / GRANULE, Shadow{});
    r->region.shadow = r->shadow.data();
    return r;
}

static void free_region(RegionRec* r) {
    std::free(r->region.base);
    delete r;
}

/// NaN-fills `r` if this block has not yet seen it. Its shadow needs no reset: records from
/// earlier blocks carry older epochs.
static void freshen(Runtime* rt, RegionRec* r) {
    if (r->block_serial == rt->block_serial) return;
    std::memset(r->region.base, 0xff, r->region.size);
    r->block_serial = rt->block_serial;
}

void shared_begin_launch(Runtime* rt, uint32_t shared_bytes, uint32_t max_shared) {
    rt->shared_bytes = shared_bytes;
    rt->max_shared = max_shared;
    rt->static_bytes = 0;
    rt->dyn = new_region("dynamic shared memory", shared_bytes, nullptr);
}

void shared_begin_block(Runtime* rt) {
    rt->block_serial++;
    freshen(rt, rt->dyn);
}

void shared_end_launch(Runtime* rt) {
    for (RegionRec* r : rt->statics) free_region(r);
    rt->statics.clear();
    if (rt->dyn) free_region(rt->dyn);
    rt->dyn = nullptr;
}

Region* static_region(const StaticDecl* decl) {
    Runtime* rt = t_rt;
    for (RegionRec* r : rt->statics) {
        if (r->decl == decl) {
            freshen(rt, r);
            return &r->region;
        }
    }
    rt->static_bytes += (decl->bytes + 15) & ~15u;
    if (rt->static_bytes > 48 * 1024)
        fail("static shared memory reaches %u bytes with `%s`; CUDA allows 48 KiB", rt->static_bytes,
             decl->name);
    if (rt->static_bytes + rt->shared_bytes > rt->max_shared)
        fail("%u bytes of static and %u of dynamic shared memory exceed the device's %u per block",
             rt->static_bytes, rt->shared_bytes, rt->max_shared);
    RegionRec* r = new_region(decl->name, decl->bytes, decl);
    rt->statics.push_back(r);
    freshen(rt, r);
    return &r->region;
}

Region* dynamic_region(const char* name) {
    Runtime* rt = t_rt;
    rt->dyn->region.name = name;
    return &rt->dyn->region;
}

static void describe(const Fiber* f, char* buf, size_t n) {
    std::snprintf(buf, n, "thread %u (warp %u, lane %u)", f->tid, f->warp, f->lane);
}

static void describe_tid(uint32_t tid, char* buf, size_t n) {
    std::snprintf(buf, n, "thread %u (warp %u, lane %u)", tid, tid / 32, tid % 32);
}

[[noreturn]] static void race(Fiber* f, const Region* r, int64_t byte, const char* what, uint32_t other,
                              const char* other_did) {
    Runtime* rt = t_rt;
    char me[96], them[96], site[256];
    describe(f, me, sizeof me);
    describe_tid(other, them, sizeof them);
    site_str(rt->epoch_site, site, sizeof site);
    fail_thread(f,
                "shared-memory race on `%s` (byte %lld of %u): %s %s what %s %s, with no barrier "
                "between them (both since %s%s)",
                r->name, (long long)byte, r->size, me, what, them, other_did,
                rt->epoch_site.file ? "the __syncthreads at " : "", site);
}

/// Whether an access by `tid` with warp-sync count `wsync` (in the current epoch) is ordered
/// before any later access by thread `f`.
static inline bool ordered(const Runtime* rt, const Fiber* f, uint32_t tid, uint32_t wsync) {
    return tid == f->tid || (tid / 32 == f->warp && wsync < rt->warps[f->warp].sync_count);
}

static inline void check_read(Runtime* rt, Fiber* f, const Region* r, int64_t byte, Shadow& s) {
    const uint32_t e = rt->epoch;
    // Fast path: written in an earlier epoch of this block (so not pending either: an issued
    // cp.async clears w_epoch), and read before in this one by many warps or by this thread.
    if (s.w_epoch - rt->block_epoch < e - rt->block_epoch && s.r_epoch == e &&
        (s.r_kind == READERS_MANY_WARPS || (s.r_kind == READERS_ONE && s.r_tid == f->tid &&
                                            s.r_wsync == rt->warps[f->warp].sync_count)))
        return;
    const uint32_t ws = rt->warps[f->warp].sync_count;
    if (s.pending) {
        char who[96];
        describe_tid(s.w_tid, who, sizeof who);
        fail_thread(f, "reads `%s` byte %lld while a cp.async of %s into it is in flight (%s)", r->name,
                    (long long)byte, who,
                    s.w_tid == f->tid ? "no cp_async_wait covers it"
                                      : "another thread's copy: a barrier is missing between them");
    }
    if (s.w_epoch < rt->block_epoch)
        fail_thread(f,
                    "reads `%s` byte %lld (of %u), which no thread of this block has written yet "
                    "(it holds the NaN fill): a barrier missing before this read, or an index "
                    "past what was written",
                    r->name, (long long)byte, r->size);
    if (s.w_epoch == e && !ordered(rt, f, s.w_tid, s.w_wsync)) race(f, r, byte, "reads", s.w_tid, "wrote");
    if (s.r_epoch != e || s.r_kind == READERS_NONE) {
        s.r_kind = READERS_ONE;
        s.r_tid = (uint16_t)f->tid;
        s.r_warp = (uint8_t)f->warp;
        s.r_wsync = ws;
        s.r_epoch = e;
    } else if (s.r_kind == READERS_ONE && s.r_tid == f->tid) {
        s.r_wsync = ws;
    } else if (s.r_kind != READERS_MANY_WARPS && s.r_warp == f->warp) {
        if (s.r_wsync < ws) {  // the earlier readers are ordered before this warp's later accesses
            s.r_kind = READERS_ONE;
            s.r_tid = (uint16_t)f->tid;
        } else {
            s.r_kind = READERS_ONE_WARP;
        }
        s.r_wsync = ws;
    } else {
        s.r_kind = READERS_MANY_WARPS;
    }
}

static inline void check_write(Runtime* rt, Fiber* f, const Region* r, int64_t byte, Shadow& s) {
    const uint32_t e = rt->epoch, ws = rt->warps[f->warp].sync_count;
    if (s.pending) {
        char who[96];
        describe_tid(s.w_tid, who, sizeof who);
        fail_thread(f, "writes `%s` byte %lld while a cp.async of %s into it is in flight", r->name,
                    (long long)byte, who);
    }
    if (s.w_epoch == e && !ordered(rt, f, s.w_tid, s.w_wsync)) race(f, r, byte, "writes", s.w_tid, "wrote");
    if (s.r_epoch == e) {
        switch (s.r_kind) {
            case READERS_ONE:
                if (!ordered(rt, f, s.r_tid, s.r_wsync)) race(f, r, byte, "writes", s.r_tid, "read");
                break;
            case READERS_ONE_WARP:
                if (s.r_warp != f->warp || s.r_wsync >= ws) race(f, r, byte, "writes", s.r_tid, "and others read");
                break;
            case READERS_MANY_WARPS: race(f, r, byte, "writes", s.r_tid, "and threads of other warps read");
            default: break;
        }
    }
    s.w_epoch = e;
    s.w_wsync = ws;
    s.w_tid = (uint16_t)f->tid;
    s.r_kind = READERS_NONE;
}

static inline __attribute__((always_inline)) unsigned char* access(Fiber* f, Region* r, int64_t off,
                                                                   uint32_t bytes, uint32_t align,
                                                                   AccessMode mode) {
    Runtime* rt = t_rt;
    static const char* verbs[] = {"read", "write", "cp.async", "cp.async"};
    if (off < 0 || off + (int64_t)bytes > (int64_t)r->size)
        fail_thread(f, "%s of %u bytes at byte %lld of `%s` is out of bounds (it has %u bytes)", verbs[mode],
                    bytes, (long long)off, r->name, r->size);
    if (align > 1 && ((uintptr_t)(r->base + off)) % align != 0)
        fail_thread(f, "%s of %u bytes at byte %lld of `%s` is not %u-byte aligned", verbs[mode], bytes,
                    (long long)off, r->name, align);
    Shadow* sh = static_cast<Shadow*>(r->shadow);
    const int64_t first = off / GRANULE, last = (off + bytes - 1) / GRANULE;
    for (int64_t g = first; g <= last; ++g) {
        Shadow& s = sh[g];
        const int64_t byte = g * GRANULE;
        switch (mode) {
            case ACCESS_READ: check_read(rt, f, r, byte, s); break;
            case ACCESS_WRITE: check_write(rt, f, r, byte, s); break;
            case ACCESS_ASYNC_ISSUE:
                check_write(rt, f, r, byte, s);
                s.w_epoch = 0;  // not written until it lands
                s.pending = 1;
                break;
            case ACCESS_ASYNC_LAND:
                s.pending = 0;
                check_write(rt, f, r, byte, s);
                break;
        }
    }
    return r->base + off;
}

unsigned char* access_as(Fiber* f, Region* r, int64_t off, uint32_t bytes, uint32_t align, AccessMode mode) {
    return access(f, r, off, bytes, align, mode);
}

unsigned char* shared_access(Region* r, int64_t off, uint32_t bytes, uint32_t align, bool write) {
    return access(cur(), r, off, bytes, align, write ? ACCESS_WRITE : ACCESS_READ);
}

// ---- cp.async ------------------------------------------------------------------------------

void cp_async16(Region* r, int64_t off, const void* src, int src_bytes, Site site) {
    Fiber* f = cur();
    if (src_bytes < 0 || src_bytes > 16)
        fail_thread(f, "cp.async at %s:%d of %d source bytes (0 to 16)", base_name(site.file), site.line,
                    src_bytes);
    if (src_bytes > 0 && ((uintptr_t)src % 16) != 0)
        fail_thread(f, "cp.async at %s:%d from a global address that is not 16-byte aligned (%p)",
                    base_name(site.file), site.line, src);
    access_as(f, r, off, 16, 16, ACCESS_ASYNC_ISSUE);
    AsyncCopy c;
    c.region = r;
    c.off = off;
    c.group = f->groups_committed;
    std::memset(c.data, 0, 16);
    if (src_bytes > 0) std::memcpy(c.data, src, (size_t)src_bytes);
    f->copies.push_back(c);
}

void cp_async_commit(Site) { cur()->groups_committed++; }

void land_copies(Fiber* f, uint32_t group_limit) {
    size_t kept = 0;
    for (size_t i = 0; i < f->copies.size(); ++i) {
        AsyncCopy& c = f->copies[i];
        if (c.group < group_limit) {
            unsigned char* p = access_as(f, c.region, c.off, 16, 16, ACCESS_ASYNC_LAND);
            std::memcpy(p, c.data, 16);
        } else {
            f->copies[kept++] = c;
        }
    }
    f->copies.resize(kept);
}

void cp_async_wait(int pending_groups, Site) {
    Fiber* f = cur();
    const uint32_t n = pending_groups < 0 ? 0 : (uint32_t)pending_groups;
    // All committed groups but the newest `n` land; the uncommitted group never does here.
    const uint32_t limit = f->groups_committed > n ? f->groups_committed - n : 0;
    land_copies(f, limit);
}

}  // namespace emu
