// counted_sum.cu -- the decode kernel's exchange (split-K partials summed in L2, then read by every block) done two
// ways under a bulk-copy weight stream (issue 12, H200; cuda/NOTES.md, "A one-hop exchange without a release"):
//   flat     as the kernel does it today (mk_norm.cuh, mk_sync.cuh): every block adds its 1024 partials with
//            red.add.v4.f32 into copy (block % XC) of a rotating residual buffer and zeroes its owned rows of the
//            next exchange's buffer (last read two exchanges ago); grid barrier (red.release.gpu, ld.acquire.gpu
//            polling by thread 0); every thread loads its elements' XC copies and sums them; a block sum of squares
//            (the RMSNorm's).
//   counted  every partial is added as one 64-bit integer: (fixed-point value << 16) + 1, with red.relaxed.gpu.add.u64
//            into copy (block % XC). The low 16 bits count the contributions, the high 48 bits sum the values exactly
//            (two's complement wraps as integers do), so the word says by itself when it is complete: readers poll
//            their elements until every copy's count is its number of contributors. No barrier, no release (which
//            waits for the SM's copies in flight), one L2 round trip fewer, and the sum does not depend on the order.
// One block per SM, 512 threads: lane 0 of warp 0 streams 32 KB bulk copies into a 192 KB shared-memory ring (as the
// decode kernel's producer does); the 480 other threads (the kernel's 15 consumer warps) run EXCHANGES exchanges,
// each block contributing to all 1024 elements (the MLP's down_proj split-K; the GDN out_proj has 128 contributors).
// The partials are k / 1024 for small integers k, so every sum is exact in f32 and in fixed point: CHECKS untimed
// exchanges first compare every element every block reads with the exact sum (check fails: must be 0).
// Prints per case: the stream's TB/s and the median over blocks of the time per exchange (ns). Written 2026-12-04
// without a GPU: compiled, not yet run.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o counted_sum experiments/counted_sum.cu
//   ./counted_sum
#include <vector>
#include <algorithm>
#include "ring_stream.cuh"

constexpr int H = 1024;          // elements per exchange (the hidden size)
constexpr int NCT = 480;         // consumer threads
constexpr int RING = 192 * 1024;
constexpr unsigned SLOT = 32 * 1024;
constexpr int NS = RING / SLOT;
constexpr int CHECKS = 20;       // untimed exchanges with the exact check
constexpr int EXCHANGES = 300;   // timed
constexpr int NX = CHECKS + EXCHANGES;
constexpr int MAXXC = 8;
constexpr int FRAC = 24;         // fixed point: value * 2^24 in the high 48 bits (|sum| < 2^23)
constexpr int NOUT = 5;          // per block: exchange ns, copies, t0, t1, check fails

struct Args {
    const char* src;
    unsigned long long src_bytes;
    unsigned inflight;            // copies in flight per block (0: no stream)
    unsigned counted;             // 0 flat, 1 counted
    unsigned xc;                  // copies of each buffer the blocks' additions spread over
    float* xf;                    // flat: 3 rotating buffers x XC x H (zeroed before the launch)
    unsigned long long* xu;       // counted: NX buffers x XC x H, one per exchange (zeroed before the launch)
    unsigned* bar;                // flat: the barrier counter
    unsigned long long* out;
};

__device__ __forceinline__ void cbar() { asm volatile("bar.sync 1, %0;" ::"n"(NCT) : "memory"); }
// Block b's partial for element i of exchange e: k / 1024 with |k| <= 1000 (exact in f32 and in fixed point).
__device__ __forceinline__ int part_k(int b, int e, int i) { return (b * 131 + e * 17 + i * 7) % 2001 - 1000; }
// The exact sum over the G blocks, in units of 1/1024 (only the untimed check computes it).
__device__ int sum_k(int G, int e, int i) {
    int s = 0;
    for (int b = 0; b < G; ++b) s += part_k(b, e, i);
    return s;
}
// Blocks that add into copy q of XC.
__device__ __forceinline__ unsigned contributors(int G, int xc, int q) { return (unsigned)((G - q + xc - 1) / xc); }

extern __shared__ __align__(128) unsigned char ring[];

__global__ void __launch_bounds__(512, 1) exchange(Args a) {
    __shared__ uint64_t full[NS];
    __shared__ float red[16];
    __shared__ volatile unsigned phase;  // 0 warm-up, 1 measuring, 2 stop
    const int G = gridDim.x, b = blockIdx.x, xc = (int)a.xc;
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&full[i])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        phase = 0;
    }
    __syncthreads();
    if (threadIdx.x < 32) {  // the producer warp: lane 0 streams
        if (threadIdx.x == 0 && a.inflight) {
            const unsigned long long per_block = a.src_bytes / G / SLOT * SLOT;
            a.out[b * NOUT + 1] = stream_ring(full, NS, ring, SLOT, a.src + per_block * b, per_block, a.inflight,
                                              &phase, [](unsigned long long, unsigned) {});
        }
        return;
    }
    // the consumers
    const int t = threadIdx.x - 32, warp = t >> 5, lane = t & 31;
    const int r0 = H * b / G, r1 = H * (b + 1) / G;  // owned rows (flat: this block zeroes them)
    if (t == 0) {  // let the stream get going
        const unsigned long long t0 = now_ns();
        while (now_ns() - t0 < 200000) {
        }
    }
    cbar();
    unsigned long long bad = 0, t_start = 0, ts = 0;
    float keep = 0.f;  // (the sums of squares, so the compiler keeps the reads)
    for (int e = 0; e < NX; ++e) {
        if (e == CHECKS && t == 0) {
            ts = now_ns();
            phase = 1;
            t_start = ts;
        }
        const bool check = e < CHECKS;
        float ss = 0.f;
        if (!a.counted) {
            float* xb = a.xf + (size_t)(e % 3) * xc * H;
            float* xz = a.xf + (size_t)((e + 1) % 3) * xc * H;  // next exchange's, last read two exchanges ago
            for (int k = t; k < (r1 - r0) * xc; k += NCT) __stcg(xz + (k / (r1 - r0)) * H + r0 + k % (r1 - r0), 0.f);
            if (t < H / 4) {
                const int i = t * 4;
                float4 v = make_float4(part_k(b, e, i) * (1.0f / 1024), part_k(b, e, i + 1) * (1.0f / 1024),
                                       part_k(b, e, i + 2) * (1.0f / 1024), part_k(b, e, i + 3) * (1.0f / 1024));
                float* dst = xb + (b % xc) * H + i;
                asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(dst), "f"(v.x), "f"(v.y), "f"(v.z),
                             "f"(v.w) : "memory");
            }
            cbar();
            if (t == 0) {
                asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(a.bar) : "memory");
                const unsigned target = (unsigned)(G * (e + 1));
                unsigned v;
                do {
                    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.bar) : "memory");
                } while ((int)(v - target) < 0);
            }
            cbar();
            for (int k = 0; k < 3; ++k) {
                const int i = t + k * NCT;
                if (i >= H) break;
                float v = 0.f;
                for (int q = 0; q < xc; ++q) v += __ldcg(xb + q * H + i);
                ss = fmaf(v, v, ss);
                if (check) bad += v != sum_k(G, e, i) * (1.0f / 1024);
            }
        } else {
            unsigned long long* xb = a.xu + (size_t)e * xc * H;
            if (t < H / 4) {
                unsigned long long* dst = xb + (b % xc) * H + t * 4;
                for (int j = 0; j < 4; ++j) {
                    // k / 1024 in units of 2^-24: k << 14; shifted over the 16 count bits, plus one contribution
                    const unsigned long long w = ((unsigned long long)(long long)part_k(b, e, t * 4 + j) << 30) + 1ull;
                    asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" ::"l"(dst + j), "l"(w) : "memory");
                }
            }
            for (int k = 0; k < 3; ++k) {
                const int i = t + k * NCT;
                if (i >= H) break;
                long long s = 0;
                for (int q = 0; q < xc; ++q) {
                    const unsigned want = contributors(G, xc, q);
                    unsigned long long w;
                    do {
                        asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(w) : "l"(xb + q * H + i) : "memory");
                    } while ((unsigned)(w & 0xffffu) != want);
                    s += (long long)w >> 16;
                }
                const float v = (float)s * (1.0f / (1 << FRAC));
                ss = fmaf(v, v, ss);
                if (check) bad += s != (long long)sum_k(G, e, i) * 16384;
            }
        }
        // the RMSNorm's block sum of squares (two consumer barriers, as the kernel's block_sum)
        for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) red[warp] = ss;
        cbar();
        float tot = 0.f;
        for (int w = 0; w < NCT / 32; ++w) tot += red[w];
        keep += tot;
        cbar();
    }
    if (t == 0) {
        const unsigned long long te = now_ns();
        phase = 2;
        a.out[b * NOUT + 0] = (te - t_start) / EXCHANGES + (keep == -1.f);
        a.out[b * NOUT + 2] = ts;
        a.out[b * NOUT + 3] = te;
    }
    for (int o = 16; o; o >>= 1) bad += __shfl_xor_sync(0xffffffffu, bad, o);
    if (lane == 0 && bad) atomicAdd(&a.out[b * NOUT + 4], bad);
}

int main() {
    Device d;
    if (open_device(&d)) return 1;
    CK(cudaFuncSetAttribute(exchange, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    const int grid = d.sms;
    float* xf = nullptr;
    unsigned long long *xu = nullptr, *out = nullptr;
    unsigned* bar = nullptr;
    const size_t xf_bytes = 3ull * MAXXC * H * 4, xu_bytes = (size_t)NX * MAXXC * H * 8;
    CK(cudaMalloc(&xf, xf_bytes));
    CK(cudaMalloc(&xu, xu_bytes));
    CK(cudaMalloc(&bar, 128));
    CK(cudaMalloc(&out, grid * NOUT * 8));
    printf("%s, %d SMs, %d blocks of 480 consumer threads, each adding to all %d elements per exchange; 32 KB bulk "
           "copies; %d exchanges, ns per exchange (median over blocks)\n",
           d.prop.name, d.sms, grid, H, EXCHANGES);
    printf("%-9s %3s %10s %7s %10s %12s\n", "exchange", "XC", "in flight", "TB/s", "ns", "check fails");
    // {counted, XC, copies in flight}
    const unsigned cases[][3] = {{0, 4, 0}, {1, 4, 0}, {1, 1, 0}, {1, 8, 0}, {0, 4, 1}, {1, 4, 1}, {1, 1, 1},
                                 {1, 8, 1}, {0, 4, 2}, {1, 4, 2}, {0, 4, 1}, {1, 4, 1}};
    for (auto& c : cases) {
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(xf, 0, xf_bytes));
            CK(cudaMemset(xu, 0, xu_bytes));
            CK(cudaMemset(bar, 0, 128));
            CK(cudaMemset(out, 0, grid * NOUT * 8));
            Args args{d.src, SRC_BYTES, c[2], c[0], c[1], xf, xu, bar, out};
            void* params[] = {&args};
            CK(cudaLaunchCooperativeKernel((void*)exchange, dim3(grid), dim3(512), params, RING));
            CK(cudaDeviceSynchronize());
            std::vector<unsigned long long> o(grid * NOUT);
            CK(cudaMemcpy(o.data(), out, grid * NOUT * 8, cudaMemcpyDeviceToHost));
            std::vector<double> ns;
            unsigned long long copies = 0, t0 = ~0ull, t1 = 0, bad = 0;
            for (int b = 0; b < grid; ++b) {
                ns.push_back((double)o[b * NOUT + 0]);
                copies += o[b * NOUT + 1];
                t0 = std::min(t0, o[b * NOUT + 2]);
                t1 = std::max(t1, o[b * NOUT + 3]);
                bad += o[b * NOUT + 4];
            }
            const double tbs = c[2] ? (double)copies * SLOT / (double)(t1 - t0) / 1e3 : 0.0;
            if (rep == 1)
                printf("%-9s %3u %10u %7.2f %10.0f %12llu\n", c[0] ? "counted" : "flat", c[1], c[2], tbs,
                       median(ns), bad);
        }
    }
    return 0;
}
