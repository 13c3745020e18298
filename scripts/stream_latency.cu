// stream_latency.cu -- what a weight stream costs the dependent accesses beside it (issue 12's question, H200).
//
// One block per SM (192 KB of shared memory each). Lane 0 of warp 0 streams a 4 GiB buffer into a ring of shared
// memory with bulk (TMA) copies, `inflight` copies of `kb` KB in flight, as the decode kernel's producer does
// (inflight 0: no stream). Lane 0 of warp 1 measures meanwhile, in turn:
//   L2 load   a chain of dependent ld.relaxed.gpu loads through an L2-resident array (each load's address comes from
//             the previous one): the latency of one L2 round trip;
//   barrier   a grid barrier of all blocks (red.release.gpu.add + ld.acquire.gpu polling, as mk_sync.cuh's
//             grid_sync): the time per barrier.
// Prints, per (kb, inflight): the stream's rate (TB/s over the measured span), the median L2 load latency over the
// blocks (ns) and the time per barrier (ns).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o stream_latency scripts/stream_latency.cu
//   ./stream_latency
#include <cstdio>
#include <cstdint>
#include <vector>
#include <algorithm>
#include <cuda_runtime.h>

#define CK(x)                                                                                     \
    do {                                                                                          \
        cudaError_t e_ = (x);                                                                     \
        if (e_ != cudaSuccess) {                                                                  \
            fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_));   \
            return 1;                                                                             \
        }                                                                                         \
    } while (0)

constexpr int RING = 192 * 1024;
constexpr int CHAIN = 2000;    // dependent loads per block
constexpr int BARRIERS = 500;  // grid barriers

struct Args {
    const char* src;
    unsigned long long src_bytes;
    unsigned kb, inflight;
    const unsigned* chain;  // L2-resident pointer chase: chain[i] = next index
    unsigned chain_len;
    unsigned* bar;          // barrier counter (zeroed before the launch)
    unsigned long long* out;  // per block: [load ns total, barrier ns total, copies, t0, t1]
};

__device__ __forceinline__ unsigned long long now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
__device__ __forceinline__ unsigned su32(const void* p) { return (unsigned)__cvta_generic_to_shared(p); }
__device__ __forceinline__ bool mbar_test(uint64_t* b, unsigned parity) {
    unsigned ok;
    asm volatile("{ .reg .pred p; mbarrier.try_wait.parity.shared.b64 p, [%1], %2; selp.u32 %0, 1, 0, p; }"
                 : "=r"(ok) : "r"(su32(b)), "r"(parity) : "memory");
    return ok != 0;
}

extern __shared__ __align__(128) unsigned char ring[];

__global__ void __launch_bounds__(64, 1) probe(Args a) {
    __shared__ uint64_t full[12];
    __shared__ volatile unsigned phase;  // 0 warm-up, 1 measuring, 2 stop
    const int G = gridDim.x, b = blockIdx.x;
    const unsigned slot_bytes = a.kb * 1024u, ns = RING / slot_bytes;
    if (threadIdx.x == 0) {
        for (unsigned i = 0; i < ns; ++i)
            asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&full[i])));
        phase = 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // the stream
        unsigned long long copies = 0;
        const unsigned long long per_block = a.src_bytes / G / slot_bytes * slot_bytes;
        const char* base = a.src + per_block * b;
        unsigned long long off = 0, pol;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));  // as the decode kernel
        unsigned q = 0;
        for (; a.inflight && phase < 2; ++q) {
            if (q >= a.inflight) {  // copy q - inflight has landed (then so has q - ns: inflight <= ns)
                const unsigned q0 = q - a.inflight;
                while (!mbar_test(&full[q0 % ns], (q0 / ns) & 1u)) {
                }
                if (phase == 1) ++copies;
            }
            uint64_t* bar = &full[q % ns];
            asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(su32(bar)),
                         "r"(slot_bytes) : "memory");
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
                "%4;" ::"r"(su32(ring + (q % ns) * slot_bytes)),
                "l"(base + off), "r"(slot_bytes), "r"(su32(bar)), "l"(pol) : "memory");
            off += slot_bytes;
            if (off >= per_block) off = 0;
        }
        for (unsigned j = q > a.inflight ? q - a.inflight : 0; j < q; ++j)  // every issued copy lands before exit
            while (!mbar_test(&full[j % ns], (j / ns) & 1u)) {
            }
        a.out[b * 5 + 2] = copies;
        return;
    }
    if (threadIdx.x != 32) return;
    // the prober: warm up, then the L2 chain, then the barriers
    const unsigned long long t0 = now_ns();
    while (now_ns() - t0 < 200000) {
    }
    const unsigned long long ts = now_ns();
    phase = 1;
    unsigned idx = (b * 977u) % a.chain_len;
    for (int i = 0; i < 64; ++i) asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(idx) : "l"(a.chain + idx));
    unsigned long long t1 = now_ns();
    for (int i = 0; i < CHAIN; ++i) asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(idx) : "l"(a.chain + idx));
    const unsigned long long t2 = now_ns();
    a.out[b * 5 + 0] = (t2 - t1) + (idx == 0xffffffffu);  // (keeps the chain live)
    for (int i = 1; i <= BARRIERS; ++i) {
        asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.bar) : "memory");
        const unsigned target = (unsigned)(G * i);
        unsigned v;
        do {
            asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.bar) : "memory");
        } while ((int)(v - target) < 0);
    }
    const unsigned long long t3 = now_ns();
    a.out[b * 5 + 1] = t3 - t2;
    a.out[b * 5 + 3] = ts;
    a.out[b * 5 + 4] = t3;
    phase = 2;
}

int main() {
    int dev = 0, sms = 0;
    CK(cudaGetDevice(&dev));
    CK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, dev));
    const unsigned long long src_bytes = 4ull << 30;
    char* src = nullptr;
    CK(cudaMalloc(&src, src_bytes));
    CK(cudaMemset(src, 1, src_bytes));
    const unsigned chain_len = 1u << 20;  // 4 MB of indices: L2-resident
    std::vector<unsigned> h(chain_len), perm(chain_len);
    for (unsigned i = 0; i < chain_len; ++i) perm[i] = i;
    unsigned long long s = 88172645463325252ull;
    for (unsigned i = chain_len - 1; i > 0; --i) {  // a random single cycle (Sattolo)
        s ^= s << 13; s ^= s >> 7; s ^= s << 17;
        std::swap(perm[i], perm[s % i]);
    }
    for (unsigned i = 0; i < chain_len; ++i) h[perm[i]] = perm[(i + 1) % chain_len];
    unsigned *chain = nullptr, *bar = nullptr;
    unsigned long long* out = nullptr;
    CK(cudaMalloc(&chain, chain_len * 4));
    CK(cudaMemcpy(chain, h.data(), chain_len * 4, cudaMemcpyHostToDevice));
    CK(cudaMalloc(&bar, 4));
    CK(cudaMalloc(&out, sms * 5 * 8));
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    printf("%s, %d SMs; chain of dependent L2 loads (%d per block), %d grid barriers, under a bulk-copy stream\n",
           prop.name, sms, CHAIN, BARRIERS);
    printf("%6s %9s %10s %12s %14s\n", "KB", "in flight", "TB/s", "L2 load ns", "barrier ns");
    const unsigned cases[][2] = {{32, 0}, {32, 1}, {32, 2}, {32, 3}, {32, 4}, {32, 6}, {16, 1}, {16, 2}, {16, 4},
                                 {64, 1}, {64, 2}, {32, 1}, {32, 0}};
    for (auto& c : cases) {
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(bar, 0, 4));
            CK(cudaMemset(out, 0, sms * 5 * 8));
            Args a{src, src_bytes, c[0], c[1], chain, chain_len, bar, out};
            void* args[] = {&a};
            CK(cudaLaunchCooperativeKernel((const void*)probe, dim3(sms), dim3(64), args, RING, 0));
            CK(cudaDeviceSynchronize());
            std::vector<unsigned long long> o(sms * 5);
            CK(cudaMemcpy(o.data(), out, sms * 5 * 8, cudaMemcpyDeviceToHost));
            std::vector<double> lat;
            unsigned long long copies = 0, t0 = ~0ull, t1 = 0;
            double bar_ns = 0;
            for (int b = 0; b < sms; ++b) {
                lat.push_back((double)o[b * 5] / CHAIN);
                bar_ns = std::max(bar_ns, (double)o[b * 5 + 1] / BARRIERS);
                copies += o[b * 5 + 2];
                t0 = std::min(t0, o[b * 5 + 3]);
                t1 = std::max(t1, o[b * 5 + 4]);
            }
            std::sort(lat.begin(), lat.end());
            const double tbs = (double)copies * c[0] * 1024 / (double)(t1 - t0) / 1e3;
            if (rep == 1)
                printf("%6u %9u %10.2f %12.0f %14.0f\n", c[0], c[1], c[1] ? tbs : 0.0, lat[sms / 2], bar_ns);
        }
    }
    return 0;
}
