// mk_sync.cuh -- synchronisation and copy primitives: consumer named barrier, monotonic grid barrier,
// mbarriers, the sm_90 bulk (TMA 1D) copy and its cp.async fallback for sm_80..sm_89, bf16 helpers.
#pragma once
#include <cstdint>
#include "mk_config.cuh"

namespace mk {

__device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NCT) : "memory"); }

__device__ __forceinline__ unsigned smem_u32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }

// Watchdog for every spin loop: after ~2^22 polls, if more than MK_SPIN_LIMIT_NS passed since the loop started,
// trap (the launch then fails with cudaErrorLaunchFailure instead of hanging the process).
#ifndef MK_SPIN_LIMIT_NS
#define MK_SPIN_LIMIT_NS 20000000000ull
#endif
__device__ __forceinline__ unsigned long long global_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __noinline__ void spin_check(unsigned long long t0) {
    if (global_ns() - t0 > MK_SPIN_LIMIT_NS) __trap();
}

// MK_PAUSE: consumer thread 0 raises / lowers the block's pause flag (shared memory) around latency-bound waits;
// the producer issues no new copy while it is raised.
// (sm_90 only: the TMA producer; the cp.async producer of older archs is not paused)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MK_PAUSE_ARCH MK_PAUSE
#else
#define MK_PAUSE_ARCH 0
#endif
extern __shared__ __align__(128) unsigned char mk_smem[];
__device__ __forceinline__ void pause_set(int bit, unsigned on) {
    if ((MK_PAUSE_ARCH & bit) && threadIdx.x == 0) {  // only thread 0 writes the flag (one bit per reason)
        volatile unsigned* f = (volatile unsigned*)(mk_smem + SM_PAUSE);
        *f = on ? (*f | (unsigned)bit) : (*f & ~(unsigned)bit);
    }
}
__device__ __forceinline__ void pause_wait() {
    if (MK_PAUSE_ARCH)
        while (*(volatile unsigned*)(mk_smem + SM_PAUSE)) __nanosleep(32);
}

// Grid-wide barrier among the consumer threads of all blocks. `cnt` is incremented once per block per barrier and
// never reset; the caller passes target = G * (barriers completed including this one). Wrap-safe in 32 bits.
__device__ __forceinline__ void grid_sync(unsigned* cnt, unsigned target) {
    cbar();
    if (threadIdx.x == 0) {
#if !MK_BAR2
        __threadfence();
#endif
        pause_set(1, 1u);
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
        unsigned v, n = 0;
        const unsigned long long t0 = global_ns();
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
            if ((++n & 0x3fffffu) == 0) spin_check(t0);
        } while ((int)(v - target) < 0);
        pause_set(1, 0u);
    }
    cbar();
}

// Consumer threads wait until *cnt >= target (thread 0 spins with acquire loads, then a block barrier).
__device__ __forceinline__ void wait_geq(const unsigned* cnt, unsigned target) {
    if (threadIdx.x == 0) {
        pause_set(2, 1u);
        unsigned v, n = 0;
        const unsigned long long t0 = global_ns();
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
            if ((++n & 0x3fffffu) == 0) spin_check(t0);
        } while (v < target);
        pause_set(2, 0u);
    }
    cbar();
}
__device__ __forceinline__ void red_release_add(unsigned* cnt, unsigned v) {
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(cnt), "r"(v) : "memory");
}

// ---- tagged values (MK_TAGRAW): the reader polls the data itself ----
// A flag costs the writer a release (~1 L2 round trip for its data to be acknowledged), then the flag's poll, then the
// data load. A tagged value = u64 (epoch << 32) | f32 bits, written once per epoch by one 64-bit store (single-copy
// atomic): the reader spins until the tag equals the epoch it needs, and the load that sees it returns the data.
// Epochs only grow (the host passes step_base), so stale data never matches. Reads go to L2 (ld.relaxed.gpu).
typedef unsigned long long u64;
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
        while (!tag_ok(ld_gpu(p), epoch))
            if ((++n & 0xfffffu) == 0) spin_check(t0);
    }
    __syncwarp();
}

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

#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint64_t evict_first_policy() {
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    return pol;
}
// One thread: expect `bytes` on the mbarrier and start a bulk global->shared copy completing on it.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes, uint64_t* bar, uint64_t pol) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
        ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(pol) : "memory");
}
// Start pulling `bytes` (multiple of 16) at src into L2 (no completion tracking).
__device__ __forceinline__ void prefetch_l2(const void* src, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes) : "memory");
}
#else
// Whole producer warp: 16-byte cp.async per lane, then each lane's arrive fires when its copies land (count 32).
__device__ __forceinline__ void warp_async_load(void* dst, const void* src, unsigned bytes, uint64_t* bar, int lane) {
    const unsigned d = smem_u32(dst);
    const char* s = (const char*)src;
    for (unsigned o = lane * 16u; o < bytes; o += 512u)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(d + o), "l"(s + o) : "memory");
    asm volatile("cp.async.mbarrier.arrive.noinc.shared.b64 [%0];" ::"r"(smem_u32(bar)) : "memory");
}
#endif

// bf16 helpers. bf16_round: round-to-nearest-even to bf16 and back. bfr: the rounding points of a bf16 transformers
// model (activations between ops); identity unless built with -DMK_BF16_MIMIC=1 (default: f32 activations, which
// track the f32 reference far closer than HF bf16 does). unpack8: 8 bf16 from a uint4.
__device__ __forceinline__ float bf16_round(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;  // inf / nan unchanged
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}
#ifndef MK_BF16_MIMIC
#define MK_BF16_MIMIC 0
#endif
__device__ __forceinline__ float bfr(float x) { return MK_BF16_MIMIC ? bf16_round(x) : x; }
__device__ __forceinline__ unsigned short f2bf(float x) { return (unsigned short)(__float_as_uint(bf16_round(x)) >> 16); }
__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
__device__ __forceinline__ void unpack8(const uint4 w, float f[8]) {
    f[0] = bf_lo(w.x); f[1] = bf_hi(w.x); f[2] = bf_lo(w.y); f[3] = bf_hi(w.y);
    f[4] = bf_lo(w.z); f[5] = bf_hi(w.z); f[6] = bf_lo(w.w); f[7] = bf_hi(w.w);
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
#if __CUDA_ARCH__ >= 900
// x[0..3] += v (vector f32 reduction in L2, sm_90)
__device__ __forceinline__ void red_add4(float* x, float4 v) {
    asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(x), "f"(v.x), "f"(v.y), "f"(v.z), "f"(v.w)
                 : "memory");
}
#endif
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

}  // namespace mk
