// ring_stream.cuh -- what the one-file experiments share: the CUDA error check, the global timer, mbarrier tests, the
// thread-block cluster helpers and the weight stream of the decode kernel's producer (bulk copies into a shared-memory
// ring, `inflight` in flight), or the same stream through the load/store unit (cp.async).
#pragma once
#include <cstdio>
#include <cstdint>
#include <algorithm>
#include <utility>
#include <vector>
#include <cuda_runtime.h>

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));   \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

// main()'s common start: the device's SM count and properties, and the buffer the stream reads (SRC_BYTES, filled).
constexpr unsigned long long SRC_BYTES = 4ull << 30;
struct Device {
    int sms = 0;
    cudaDeviceProp prop;
    char* src = nullptr;
};
inline int open_device(Device* d) {
    int dev = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&d->sms, cudaDevAttrMultiProcessorCount, dev));
    CK(cudaGetDeviceProperties(&d->prop, dev));
    CK(cudaMalloc(&d->src, SRC_BYTES));
    CK(cudaMemset(d->src, 1, SRC_BYTES));
    return 0;
}

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned su32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
// Non-blocking: has the mbarrier completed the phase with this parity?
__device__ __forceinline__ bool mbar_test(uint64_t* b, unsigned parity) {
    unsigned ok;
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(ok) : "r"(su32(b)), "r"(parity) : "memory");
    return ok != 0;
}

// An L2-resident pointer chase for timing dependent loads: `len` indices forming one random cycle (Sattolo), on the
// device at *chain.
inline int make_chain(unsigned** chain, unsigned len) {
    std::vector<unsigned> h(len), perm(len);
    for (unsigned i = 0; i < len; ++i) perm[i] = i;
    unsigned long long s = 88172645463325252ull;
    for (unsigned i = len - 1; i > 0; --i) {
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        std::swap(perm[i], perm[s % i]);
    }
    for (unsigned i = 0; i < len; ++i) h[perm[i]] = perm[(i + 1) % len];
    CK(cudaMalloc(chain, len * 4));
    CK(cudaMemcpy(*chain, h.data(), len * 4, cudaMemcpyHostToDevice));
    return 0;
}

// ns for `n` dependent ld.relaxed.gpu loads through `chain` (after 64 untimed ones), starting at `start`.
__device__ __forceinline__ unsigned long long l2_chain_ns(const unsigned* chain, unsigned start, int n) {
    unsigned idx = start;
    for (int i = 0; i < 64; ++i) asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(idx) : "l"(chain + idx));
    const unsigned long long t = now_ns();
    for (int i = 0; i < n; ++i) asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(idx) : "l"(chain + idx));
    return (now_ns() - t) + (idx == 0xffffffffu);  // (keeps the chain live)
}

// Busy-waits `ns` nanoseconds (a warm-up: the stream settles before anything is timed).
__device__ __forceinline__ void spin_ns(unsigned long long ns) {
    const unsigned long long t = now_ns();
    while (now_ns() - t < ns) {
    }
}

// ns for `n` grid barriers of `arrivals` threads on the counter `cnt` (zeroed before the launch): red.release.gpu
// arrival, ld.acquire.gpu polling (mk_sync.cuh's grid_sync). An untimed first barrier lines the threads up.
__device__ __forceinline__ unsigned long long release_barriers_ns(unsigned* cnt, unsigned arrivals, int n) {
    unsigned long long t = 0;
    for (int i = 1; i <= n + 1; ++i) {
        if (i == 2) t = now_ns();
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
        const unsigned target = arrivals * (unsigned)i;
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
        } while ((int)(v - target) < 0);
    }
    return now_ns() - t;
}

// ns for `n` x (st.relaxed.gpu to `line` + fence.acq_rel.gpu): what a release costs the thread.
__device__ __forceinline__ unsigned long long gpu_fence_ns(unsigned* line, int n) {
    const unsigned long long t = now_ns();
    for (int i = 0; i < n; ++i) {
        asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(line), "r"(i) : "memory");
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
    }
    return now_ns() - t;
}

// One lane streams copy after copy into `ns` slots of `slot_bytes` at `ring`, copy q from `addr_of(q)` (called once
// per copy, just before it is issued), each copy completing on its slot's mbarrier in `full` (initialised with one
// arrival), `inflight` copies in flight (<= ns), with the decode kernel's evict-first L2 policy, until *phase reaches
// 2; then waits for every issued copy to land. `landed()` runs after each landing while *phase == 1 (a measurement
// hook). Returns the copies that landed while *phase was 1.
template <class AddrOf, class OnLanded>
__device__ unsigned long long stream_ring_at(uint64_t* full, unsigned ns, unsigned char* ring, unsigned slot_bytes,
                                             AddrOf addr_of, unsigned inflight, volatile unsigned* phase,
                                             OnLanded landed) {
    unsigned long long copies = 0, pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    unsigned q = 0;
    for (; *phase < 2; ++q) {
        if (q >= inflight) {  // copy q - inflight has landed (then so has q - ns: inflight <= ns)
            const unsigned q0 = q - inflight;
            while (!mbar_test(&full[q0 % ns], (q0 / ns) & 1u)) {
            }
            if (*phase == 1) {
                ++copies;
                landed(copies, q);
            }
        }
        const char* src = addr_of(q);
        const unsigned bar = su32(&full[q % ns]);
        asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(bar),
                     "r"(slot_bytes) : "memory");
        asm volatile(
            "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
            "%4;" ::"r"(su32(ring + (q % ns) * slot_bytes)),
            "l"(src), "r"(slot_bytes), "r"(bar), "l"(pol) : "memory");
    }
    for (unsigned j = q > inflight ? q - inflight : 0; j < q; ++j)  // every issued copy lands before the exit
        while (!mbar_test(&full[j % ns], (j / ns) & 1u)) {
        }
    return copies;
}

// stream_ring_at over `per_block` bytes from `base`, round and round (the decode kernel's producer on its rows).
template <class OnLanded>
__device__ unsigned long long stream_ring(uint64_t* full, unsigned ns, unsigned char* ring, unsigned slot_bytes,
                                          const char* base, unsigned long long per_block, unsigned inflight,
                                          volatile unsigned* phase, OnLanded landed) {
    return stream_ring_at(
        full, ns, ring, slot_bytes,
        [=](unsigned q) { return base + (unsigned long long)q * slot_bytes % per_block; }, inflight, phase, landed);
}

// The same stream through the load/store unit instead of the TMA: the 32 lanes of the calling warp copy each
// `slot_bytes` part with 16-byte cp.async.cg (LDGSTS, sm_80's asynchronous copy; evict-first in L2 as the bulk
// copies), one commit group per part, at most `inflight` groups in flight (1..4: cp.async.wait_group takes a
// constant), until *phase reaches 2. Returns (on every lane) the parts that landed while *phase was 1.
__device__ __forceinline__ void ldgsts_wait(unsigned pending) {
    switch (pending) {
        case 0: asm volatile("cp.async.wait_group 0;" ::: "memory"); break;
        case 1: asm volatile("cp.async.wait_group 1;" ::: "memory"); break;
        case 2: asm volatile("cp.async.wait_group 2;" ::: "memory"); break;
        default: asm volatile("cp.async.wait_group 3;" ::: "memory"); break;
    }
}
__device__ unsigned long long stream_ldgsts(unsigned ns, unsigned char* ring, unsigned slot_bytes, const char* base,
                                            unsigned long long per_block, unsigned inflight, volatile unsigned* phase) {
    const unsigned lane = threadIdx.x & 31;
    unsigned long long copies = 0, pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));  // as the bulk copies
    for (unsigned q = 0;; ++q) {
        const unsigned ph = __shfl_sync(~0u, lane == 0 ? *phase : 0u, 0);
        if (ph >= 2) break;
        if (q >= inflight) {  // part q - inflight has landed (this lane's share of it; the warp's after __syncwarp)
            ldgsts_wait(inflight - 1);
            __syncwarp();
            if (ph == 1) ++copies;
        }
        const char* src = base + (unsigned long long)q * slot_bytes % per_block;
        unsigned char* dst = ring + (q % ns) * slot_bytes;
        for (unsigned off = lane * 16; off < slot_bytes; off += 32 * 16)
            asm volatile("cp.async.cg.shared.global.L2::cache_hint [%0], [%1], 16, %2;" ::"r"(su32(dst + off)),
                         "l"(src + off), "l"(pol) : "memory");
        asm volatile("cp.async.commit_group;" ::: "memory");
    }
    asm volatile("cp.async.wait_all;" ::: "memory");
    return copies;
}

// After a launch: wait for it, then copy the n per-block outputs at `out` into *o.
inline int read_back(const unsigned long long* out, size_t n, std::vector<unsigned long long>* o) {
    CK(cudaDeviceSynchronize());
    o->resize(n);
    CK(cudaMemcpy(o->data(), out, n * 8, cudaMemcpyDeviceToHost));
    return 0;
}
// Launches `kernel(a)` cooperatively (`grid` blocks of `threads`, `smem` bytes of dynamic shared memory), waits for
// it, and copies the `n` results at `out` into *o.
template <class A>
inline int run_coop(void (*kernel)(A), A a, int grid, int threads, int smem, const unsigned long long* out, size_t n,
                    std::vector<unsigned long long>* o) {
    void* args[] = {&a};
    CK(cudaLaunchCooperativeKernel((const void*)kernel, dim3(grid), dim3(threads), args, smem, 0));
    return read_back(out, n, o);
}
// TB/s of a stream from per-block outputs (stride nout): copies of `slot` bytes at index ic, the measured span from
// the earliest start (index it0) to the latest end (it1), in ns.
inline double stream_tbs(const std::vector<unsigned long long>& o, int grid, int nout, int ic, int it0, int it1,
                         unsigned slot) {
    unsigned long long copies = 0, t0 = ~0ull, t1 = 0;
    for (int b = 0; b < grid; ++b) {
        copies += o[b * nout + ic];
        t0 = std::min(t0, o[b * nout + it0]);
        t1 = std::max(t1, o[b * nout + it1]);
    }
    return (double)copies * slot / (double)(t1 - t0) / 1e3;
}

// ---- thread-block clusters (cluster_barrier, sibling_exchange) ----
__device__ __forceinline__ unsigned cluster_rank() {
    unsigned r;
    asm volatile("mov.u32 %0, %%cluster_ctarank;" : "=r"(r));
    return r;
}
// This block's shared address `a`, as the same variable of block `rank` of the cluster.
__device__ __forceinline__ unsigned remote(unsigned a, unsigned rank) {
    unsigned r;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(a), "r"(rank));
    return r;
}
__device__ __forceinline__ void cluster_sync_all() {  // every thread of every block of the cluster (not aligned)
    asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
}
__device__ __forceinline__ void mbar_wait_cluster(uint64_t* b, unsigned parity) {  // acquire at cluster scope
    unsigned ok = 0;
    while (!ok)
        asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.acquire.cluster.shared::cta.b64 p, [%1], %2; "
                     "selp.u32 %0, 1, 0, p; }"
                     : "=r"(ok) : "r"(su32(b)), "r"(parity) : "memory");
}
__device__ __forceinline__ void mbar_arrive_remote(unsigned cluster_addr) {  // release at cluster scope
    asm volatile("mbarrier.arrive.release.cluster.shared::cluster.b64 _, [%0];" ::"r"(cluster_addr) : "memory");
}
// The launch attribute of 1-D clusters of `n` blocks (consecutive blocks: block b has rank b % n).
inline cudaLaunchAttribute cluster_dim(unsigned n) {
    cudaLaunchAttribute a;
    a.id = cudaLaunchAttributeClusterDimension;
    a.val.clusterDim.x = n;
    a.val.clusterDim.y = 1;
    a.val.clusterDim.z = 1;
    return a;
}

// The median (the upper one of an even count) of `v`.
inline double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}
