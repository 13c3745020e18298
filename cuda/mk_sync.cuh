// mk_sync.cuh -- the synchronisation primitives: the consumer warps' named barrier, the monotonic grid barrier,
// tagged values (the reader polls the data itself), mbarriers, the producer pause flag and the spin-loop watchdog.
#pragma once
#include <cstdint>
#include "mk_layout.cuh"

namespace mk {

extern __shared__ __align__(128) unsigned char mk_smem[];
__device__ __forceinline__ Smem& smem() { return *reinterpret_cast<Smem*>(mk_smem); }
__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Block barrier of the 15 consumer warps (the producer warp never joins).
__device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NCT) : "memory"); }

// ---- watchdog: after ~2^22 polls, a spin loop that has waited more than MK_SPIN_LIMIT_NS traps, so the launch
// fails with cudaErrorLaunchFailure instead of hanging the process ----
__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __noinline__ void spin_check(unsigned long long t0) {
    if (global_ns() - t0 > MK_SPIN_LIMIT_NS) __trap();
}
// Between two polls of a spin loop on global memory: nothing (full-speed polling), or a sleep of tune.spin_sleep_ns
// (copied into shared memory at the kernel's start) that lets the warp's scheduler slot and the L2 rest: cheaper
// waiting, measured in W and tok/J
__device__ __forceinline__ void spin_pause() {
    const unsigned ns = *(volatile unsigned*)&smem().sleep_ns;
    if (ns) __nanosleep(ns);
}

// ---- producer pause (sm_90): consumer thread 0 raises a reason while the block runs a latency-bound stretch (x
// loads for a norm, a GDN item up to its out_proj); the producer issues no new copy while a reason in
// tune.pause_mask is raised, because copies queued in the memory system slow those dependent round trips (NOTES.md,
// MK_PAUSE) ----
enum PauseReason : unsigned { PAUSE_X_LOAD = LUCE_MK_PAUSE_X_LOAD, PAUSE_GDN_ITEM = LUCE_MK_PAUSE_GDN_ITEM };
__device__ __forceinline__ void pause_set(PauseReason why, bool on) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (threadIdx.x == 0) {
        volatile unsigned* f = &smem().pause;
        *f = on ? (*f | (unsigned)why) : (*f & ~(unsigned)why);
    }
#endif
}
__device__ __forceinline__ bool paused(unsigned mask) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    return (*(volatile unsigned*)&smem().pause & mask) != 0;
#else
    return false;
#endif
}

// ---- grid barrier among the consumer threads of all blocks: `cnt` grows by one per block per barrier and is never
// reset; target = grid * (barriers completed including this one), wrap-safe in 32 bits. The release reduction
// orders this block's earlier writes (no extra __threadfence: it cost ~0.33 us per barrier) ----
__device__ __forceinline__ void grid_sync(unsigned* cnt, unsigned target) {
    cbar();
    if (threadIdx.x == 0) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
        unsigned v, n = 0;
        const unsigned long long t0 = global_ns();
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
            if ((++n & 0x3fffffu) == 0) spin_check(t0);
            if ((int)(v - target) < 0) spin_pause();
        } while ((int)(v - target) < 0);
    }
    cbar();
}

// ---- tagged values: u64 = (epoch << 32) | f32 bits, written once per epoch by one 64-bit store (single-copy
// atomic). The reader spins until the tag equals the epoch it needs, and the load that sees it returns the data: one
// L2 round trip instead of a flag's release + poll + data load. Epochs only grow (the host passes step_base), so
// stale data never matches. Reads go to L2 (ld.relaxed.gpu) ----
// The debug timing modes that skip the math or the barriers: nothing may store the values a poll waits for, so polls
// take what they find (poll_tag_w's `nowait`)
__device__ __forceinline__ bool tags_nowait(const LuceMkParams& P) {
    return (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
}
__device__ __forceinline__ u64 ld_gpu(const u64* p) {
    u64 v;
    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_tag(u64* p, unsigned epoch, float v) {
    __stcg(p, ((u64)epoch << 32) | (u64)__float_as_uint(v));
}
__device__ __forceinline__ float tag_val(u64 w) { return __uint_as_float((unsigned)w); }
__device__ __forceinline__ bool tag_ok(u64 w, unsigned epoch) { return (unsigned)(w >> 32) == epoch; }
// Spin on a tagged value whose first load (w) is already issued; no wait when `nowait` (debug timing modes).
__device__ __forceinline__ float poll_tag_w(const u64* p, u64 w, unsigned epoch, bool nowait) {
    if (!tag_ok(w, epoch) && !nowait) {
        const unsigned long long t0 = global_ns();
        unsigned n = 0;
        do {
            spin_pause();
            w = ld_gpu(p);
            if ((++n & 0xfffffu) == 0) spin_check(t0);
        } while (!tag_ok(w, epoch));
    }
    return tag_val(w);
}
__device__ __forceinline__ float poll_tag(const u64* p, unsigned epoch, bool nowait) {
    return poll_tag_w(p, ld_gpu(p), epoch, nowait);
}
// Lane 0 spins first, then the warp goes on (its values come from one writer at about the same time; every lane still
// checks its own): 32x fewer L2 requests while waiting.
__device__ __forceinline__ void lead_wait_tag(const u64* p, unsigned epoch, bool nowait, bool active) {
    if ((threadIdx.x & 31) == 0 && active && !nowait) {
        const unsigned long long t0 = global_ns();
        unsigned n = 0;
        while (!tag_ok(ld_gpu(p), epoch)) {
            if ((++n & 0xfffffu) == 0) spin_check(t0);
            spin_pause();
        }
    }
    __syncwarp();
}

// ---- mbarriers (the ring's full / empty slots) ----
__device__ __forceinline__ void mbar_init(uint64_t* b, unsigned count) {
    asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(smem_u32(b)), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint64_t* b) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.shared.b64 st, [%0]; }" ::"r"(smem_u32(b)) : "memory");
}
// Non-blocking: has the mbarrier completed the phase with this parity?
__device__ __forceinline__ bool mbar_test(uint64_t* b, unsigned parity) {
    unsigned ok;
    asm volatile("{ .reg .pred p; mbarrier.test_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(ok) : "r"(smem_u32(b)), "r"(parity) : "memory");
    return ok != 0;
}
__device__ __forceinline__ void mbar_wait(uint64_t* b, unsigned parity) {
    unsigned ok = 0, n = 0;
    unsigned long long t0 = 0;
    while (!ok) {
        if (++n == 0x400000u) {  // ~4M polls: start timing, then check every 4M
            if (t0 == 0) t0 = global_ns(); else spin_check(t0);
            n = 0;
        }
#if __CUDA_ARCH__ >= 900
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(smem_u32(b)), "r"(parity) : "memory");
#else
        ok = mbar_test(b, parity);
#endif
    }
}

}  // namespace mk
