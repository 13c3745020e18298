// l2_streamers.cu -- can a few SMs that only prefetch weights into L2 take the HBM stream off the SMs that compute?
// (issue 12; cuda/NOTES.md, "Candidate (d): streamer SMs". Written 2026-12-05 without a GPU: compiled, not yet run.)
//
// What it tests. stream_latency.cu measured that a release (fence) waits for the bulk copies in flight of its own SM
// only (~1,040 ns with one 32 KB copy in flight, ~2,000 with two; 311 ns on an SM that does not stream while the
// others do), and that one copy in flight per SM streams 4.1 TB/s. The decode kernel therefore keeps one copy in
// flight and pays ~0.75 us per exchange for it. If S streamer SMs keep the next few megabytes of the stream in L2
// (cp.async.bulk.prefetch.L2, no shared memory, no fences), the other SMs' copies become L2 hits: they land sooner,
// so their fences wait less, and one copy in flight may carry more than 30 GB/s per SM.
//
// One block per SM. The last S blocks are streamers: each prefetches its share of every round of the stream up to
// LEAD rounds ahead of compute block 0's progress, in bulk (cp.async.bulk.prefetch.L2, 1 MB or 32 KB per instruction:
// the TMA unit of the SM issues the lines) or line by line (prefetch.global.L2 from all 64 threads: the load/store
// units issue them), in case one SM's TMA cannot request lines as fast as the stream needs. The other C blocks
// compute: lane 0 of warp 0 copies the block's 32 KB part of each round into a 192 KB shared-memory ring (`inflight`
// copies in flight, evict-first, as the decode kernel's producer; a round is C x 32 KB contiguous, so the C blocks read
// the buffer front to back together), and lane 0 of warp 1 measures as stream_latency.cu does: a chain of dependent
// L2 loads, a store + fence.acq_rel.gpu, and a grid barrier of the C compute blocks (red.release + ld.acquire).
// Without streamers, the copier can also prefetch its own part a few rounds ahead (modes 3 and 4, Args::mode).
// Prints per case: the compute blocks' copy rate (TB/s over the measured span), the streamers' prefetch rate, and the
// medians over the compute blocks of the L2 load, the fence and the barrier (ns).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o l2_streamers experiments/l2_streamers.cu
//   ./l2_streamers
#include <vector>
#include <algorithm>
#include "ring_stream.cuh"

constexpr int RING = 192 * 1024;
constexpr unsigned SLOT = 32 * 1024;
constexpr unsigned NS = RING / SLOT;
constexpr int CHAIN = 2000;    // dependent loads per block
constexpr int FENCES = 500;
constexpr int BARRIERS = 300;
constexpr int NOUT = 8;  // per block: L2 load, fence, barrier (ns totals), copies, t0, t1, prefetched bytes, -

struct Args {
    const char* src;
    unsigned long long rounds;  // rounds in the buffer (a round: C x SLOT bytes); the stream wraps around
    unsigned streamers, lead, inflight;
    unsigned mode;  // how a streamer prefetches: 0 bulk, 1 MB per instruction; 1 bulk, 32 KB (the kernel's chunks);
                    // 2 prefetch.global.L2 line by line, all 64 threads of the block. Without streamers, 3 and 4: the
                    // compute blocks' copier prefetches its own part `lead` rounds ahead, line by line (3) or in bulk
                    // (4: v12's "L2 lead", -17 %): does a fence wait for its own SM's prefetches too?
    const unsigned* chain;  // L2-resident pointer chase: chain[i] = next index
    unsigned chain_len;
    unsigned* bar;            // barrier counter (zeroed before the launch)
    unsigned* own;            // a line per block for the fence test
    volatile unsigned* prog;  // [0]: rounds compute block 0 has issued; [32]: stop (set by compute block 0)
    unsigned long long* out;
};

extern __shared__ __align__(128) unsigned char ring[];

__device__ __forceinline__ void prefetch_l2(const char* p, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
}
__device__ __forceinline__ void prefetch_line(const char* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p) : "memory");
}

__global__ void __launch_bounds__(64, 1) probe(Args a) {
    __shared__ uint64_t full[NS];
    __shared__ volatile unsigned phase;  // 0 warm-up, 1 measuring, 2 stop
    const int G = gridDim.x, b = blockIdx.x;
    const int C = G - (int)a.streamers;
    const unsigned long long round_bytes = (unsigned long long)C * SLOT;
    if (b >= C) {  // a streamer: prefetches its share of each round, up to `lead` rounds ahead of block 0
        if (a.mode != 2 && threadIdx.x != 0) return;  // bulk modes: thread 0 alone; line mode: every thread
        const unsigned s = b - C, S = a.streamers;
        const unsigned long long share = round_bytes / S / 16 * 16;  // the last streamer also takes the remainder
        const unsigned long long first = share * s;
        const unsigned long long bytes = s + 1 == S ? round_bytes - first : share;
        unsigned long long next = 0, done = 0;  // the next round to prefetch; bytes prefetched while measuring
        const unsigned long long t0 = now_ns();
        while (!a.prog[32]) {
            const unsigned long long upto = (unsigned long long)a.prog[0] + a.lead;  // a 32-bit count, ~1,000 rounds
            if (next >= upto) {
                __nanosleep(100);
                continue;
            }
            for (; next < upto; ++next) {
                const char* base = a.src + (next % a.rounds) * round_bytes + first;
                if (a.mode == 2) {
                    for (unsigned long long off = threadIdx.x * 128ull; off < bytes; off += blockDim.x * 128ull)
                        prefetch_line(base + off);
                } else {
                    const unsigned long long most = a.mode == 0 ? 1ull << 20 : SLOT;
                    for (unsigned long long off = 0; off < bytes; off += most)
                        prefetch_l2(base + off, (unsigned)min(bytes - off, most));
                }
                // after the warm-up (as the compute blocks count); thread 0 counts for its block
                if (threadIdx.x == 0 && now_ns() - t0 > 200000) done += bytes;
            }
        }
        if (threadIdx.x == 0) a.out[b * NOUT + 6] = done;
        return;
    }
    if (threadIdx.x == 0) {
        for (unsigned i = 0; i < NS; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&full[i])));
        phase = 0;
    }
    __syncthreads();
    if (threadIdx.x == 0) {  // the compute block's stream: its 32 KB of each round, `inflight` copies in flight
        a.out[b * NOUT + 3] = stream_ring_at(
            full, NS, ring, SLOT,
            [&](unsigned q) {
                if (b == 0) a.prog[0] = q;  // the streamers pace themselves on block 0
                const auto part = [&](unsigned r) {
                    return a.src + (r % a.rounds) * round_bytes + (unsigned long long)b * SLOT;
                };
                if (a.mode >= 3)  // its own part `lead` rounds ahead (and the first `lead` parts at the start)
                    for (unsigned r = q ? q + a.lead : 0; r <= q + a.lead; ++r) {
                        if (a.mode == 4) prefetch_l2(part(r), SLOT);
                        else for (unsigned off = 0; off < SLOT; off += 128) prefetch_line(part(r) + off);
                    }
                return part(q);
            },
            a.inflight, &phase, [](unsigned long long, unsigned) {});
        return;
    }
    if (threadIdx.x != 32) return;
    // the prober: warm up, then the L2 chain, the fences and the barriers of the compute blocks
    spin_ns(200000);
    const unsigned long long ts = now_ns();
    phase = 1;
    a.out[b * NOUT + 0] = l2_chain_ns(a.chain, (b * 977u) % a.chain_len, CHAIN);
    a.out[b * NOUT + 1] = gpu_fence_ns(a.own + b * 32, FENCES);
    a.out[b * NOUT + 2] = release_barriers_ns(a.bar, (unsigned)C, BARRIERS);
    a.out[b * NOUT + 4] = ts;
    a.out[b * NOUT + 5] = now_ns();
    phase = 2;
    if (b == 0) a.prog[32] = 1;  // every compute block has left the last barrier's arrival: the streamers stop
}

int main() {
    Device d;
    if (open_device(&d)) return 1;
    const unsigned chain_len = 1u << 20;  // 4 MB of indices: L2-resident
    unsigned *chain = nullptr, *bar = nullptr, *own = nullptr, *prog = nullptr;
    unsigned long long* out = nullptr;
    if (make_chain(&chain, chain_len)) return 1;
    CK(cudaMalloc(&bar, 32 * 4));
    CK(cudaMalloc(&own, d.sms * 32 * 4));
    CK(cudaMalloc(&prog, 64 * 4));
    CK(cudaMalloc(&out, d.sms * NOUT * 8));
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    printf("%s, %d SMs, L2 %d MB; compute blocks copy 32 KB parts of each round (C x 32 KB) into a 192 KB ring; "
           "streamer blocks prefetch the rounds ahead into L2; medians over the compute blocks: L2 load = one of %d "
           "dependent loads, fence = st.relaxed + fence.acq_rel.gpu, barrier = red.release + ld.acquire of the compute "
           "blocks (%d), ns\n",
           d.prop.name, d.sms, d.prop.l2CacheSize >> 20, CHAIN, BARRIERS);
    printf("%10s %9s %9s %6s %10s %13s %9s %7s %8s\n", "streamers", "lead (MB)", "in flight", "mode", "copy TB/s",
           "prefetch TB/s", "L2 load", "fence", "barrier");
    // streamer SMs, lead in rounds, copies in flight per compute block, prefetch mode (Args::mode: 0 bulk 1 MB, 1 bulk
    // 32 KB as the kernel's streamers, 2 line by line); the first two: today's stream
    const unsigned cases[][4] = {{0, 0, 1, 0},  {0, 0, 2, 0},  {4, 2, 1, 0}, {4, 4, 1, 0}, {4, 4, 1, 1}, {4, 4, 1, 2},
                                 {8, 2, 1, 0},  {8, 4, 1, 0},  {8, 4, 1, 1}, {8, 4, 1, 2}, {8, 8, 1, 0}, {8, 4, 2, 0},
                                 {16, 4, 1, 0}, {16, 4, 1, 2}, {16, 4, 2, 0}, {0, 2, 1, 3},  {0, 4, 1, 3}, {0, 4, 1, 4},
                                 {0, 0, 1, 0}};
    for (auto& c : cases) {
        const int C = d.sms - (int)c[0];
        const unsigned long long round_bytes = (unsigned long long)C * SLOT;
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(bar, 0, 32 * 4));
            CK(cudaMemset(prog, 0, 64 * 4));
            CK(cudaMemset(out, 0, d.sms * NOUT * 8));
            Args a{d.src, SRC_BYTES / round_bytes, c[0], c[1], c[2], c[3], chain, chain_len, bar, own, prog, out};
            std::vector<unsigned long long> o;
            if (run_coop(probe, a, d.sms, 64, RING, out, d.sms * NOUT, &o)) return 1;
            std::vector<double> v[3];
            unsigned long long copies = 0, t0 = ~0ull, t1 = 0, pf = 0;
            const double per[3] = {CHAIN, FENCES, BARRIERS};
            for (int b = 0; b < d.sms; ++b) {
                if (b >= C) {
                    pf += o[b * NOUT + 6];
                    continue;
                }
                copies += o[b * NOUT + 3];
                t0 = std::min(t0, o[b * NOUT + 4]);
                t1 = std::max(t1, o[b * NOUT + 5]);
                for (int k = 0; k < 3; ++k) v[k].push_back((double)o[b * NOUT + k] / per[k]);
            }
            double med[3];
            for (int k = 0; k < 3; ++k) med[k] = median(v[k]);
            const double span = (double)(t1 - t0);
            if (rep == 1)  // the streamers' bytes are counted from their own warm-up end: a rate, roughly
                printf("%10u %9.1f %9u %6u %10.2f %13.2f %9.0f %7.0f %8.0f\n", c[0], c[1] * round_bytes / 1048576.0,
                       c[2], c[3], copies * (double)SLOT / span / 1e3, pf / span / 1e3, med[0], med[1], med[2]);
        }
    }
    return 0;
}
