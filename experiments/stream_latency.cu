// stream_latency.cu -- what a weight stream costs the dependent accesses beside it (issue 12's question, H200).
//
// One block per SM (192 KB of shared memory each). Lane 0 of warp 0 streams a 4 GiB buffer into a ring of shared
// memory with bulk (TMA) copies, `inflight` copies of `kb` KB in flight, as the decode kernel's producer does
// (inflight 0: no stream; "odd SMs": only the odd blocks stream, the even ones are measured). Lane 0 of warp 1
// measures meanwhile, in turn:
//   L2 load   a chain of dependent ld.relaxed.gpu loads through an L2-resident array (each load's address comes from
//             the previous one): the latency of one L2 round trip;
//   fence     a relaxed store to the block's own line, then fence.acq_rel.gpu: what a release costs the thread;
//   fence cl / fence cta  the same at cluster and at CTA scope: does a narrower release wait for the copies too? (A
//             cluster-scope release is what a block would make towards a leader block of its cluster; added after the
//             2026-12-04 evening run, not yet run);
//   barrier   a grid barrier of all blocks, four ways: red.release + ld.acquire polling (mk_sync.cuh's grid_sync),
//             red.relaxed + ld.relaxed (no ordering: timing only), release + relaxed, relaxed + acquire.
// In the "LDGSTS" cases the whole of warp 0 streams the same parts with 16-byte cp.async.cg (the load/store unit's
// asynchronous copy, commit groups of one part, `inflight` groups in flight) instead of one lane's bulk copies: does a
// release on the SM wait for those as it does for bulk copies? (Added 2026-12-05 after v15's screen; not yet run.)
// In the "streamer fence" cases the streaming lane itself also times a store + fence.acq_rel.gpu right after every 8th
// copy lands, before it issues the next: the release a producer could make for its block (measured 2026-12-04 evening:
// cuda/NOTES.md, "Candidate (a) screened").
// Prints, per case: the stream's rate (TB/s over the measured span) and the median over the measured blocks of each
// latency (ns).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o stream_latency experiments/stream_latency.cu
//   ./stream_latency
#include <vector>
#include <algorithm>
#include "ring_stream.cuh"

constexpr int RING = 192 * 1024;
constexpr int CHAIN = 2000;    // dependent loads per block
constexpr int BARRIERS = 300;  // grid barriers per kind
constexpr int FENCES = 500;
constexpr int NOUT = 12;  // per block: L2 load, fence, 4 barrier kinds (ns totals), copies, t0, t1, streamer fence,
                          // cluster-scope fence, CTA-scope fence

struct Args {
    const char* src;
    unsigned long long src_bytes;
    unsigned kb, inflight, odd_only, streamer_fence, ldgsts;
    const unsigned* chain;  // L2-resident pointer chase: chain[i] = next index
    unsigned chain_len;
    unsigned* bar;          // 4 barrier counters, 32 apart (zeroed before the launch)
    unsigned* own;          // a line per block for the fence test
    unsigned long long* out;  // per block: NOUT values
};

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
    const unsigned long long per_block = a.src_bytes / G / slot_bytes * slot_bytes;
    const bool streams = a.inflight && (!a.odd_only || (b & 1));
    if (threadIdx.x < 32 && a.ldgsts) {  // the stream, through the load/store unit (the whole warp)
        const unsigned long long copies =
            streams ? stream_ldgsts(ns, ring, slot_bytes, a.src + per_block * b, per_block, a.inflight, &phase) : 0;
        if (threadIdx.x == 0) a.out[b * NOUT + 6] = copies;
        return;
    }
    if (threadIdx.x == 0) {  // the stream: bulk copies from one lane
        unsigned long long copies = 0, sf_ns = 0, sf_n = 0;
        if (streams)
            copies = stream_ring(full, ns, ring, slot_bytes, a.src + per_block * b, per_block, a.inflight, &phase,
                                 [&](unsigned long long n, unsigned q) {
                                     if ((n & 7) || !a.streamer_fence) return;
                                     // the release the producer lane could make for its block: right after a copy
                                     // landed, before the next is issued (with inflight 1, none of this SM's copies
                                     // is in flight)
                                     const unsigned long long tf = now_ns();
                                     asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(a.own + b * 32 + 16),
                                                  "r"(q) : "memory");
                                     asm volatile("fence.acq_rel.gpu;" ::: "memory");
                                     sf_ns += now_ns() - tf;
                                     ++sf_n;
                                 });
        a.out[b * NOUT + 6] = copies;
        a.out[b * NOUT + 9] = sf_n ? sf_ns / sf_n : 0;
        return;
    }
    if (threadIdx.x != 32) return;
    // the prober: warm up, then the L2 chain, then the barriers
    spin_ns(200000);
    const unsigned long long ts = now_ns();
    phase = 1;
    a.out[b * NOUT + 0] = l2_chain_ns(a.chain, (b * 977u) % a.chain_len, CHAIN);
    unsigned* mine = a.own + b * 32;
    a.out[b * NOUT + 1] = gpu_fence_ns(mine, FENCES);
    unsigned long long t;
    // the same release at cluster and at CTA scope: does a narrower release also wait for this SM's copies in flight?
    // (a cluster-scope release is what a member would make to a leader block in its cluster, through DSMEM)
    t = now_ns();
    for (int i = 0; i < FENCES; ++i) {
        asm volatile("st.relaxed.cluster.global.u32 [%0], %1;" ::"l"(mine + 8), "r"(i) : "memory");
        asm volatile("fence.acq_rel.cluster;" ::: "memory");
    }
    a.out[b * NOUT + 10] = now_ns() - t;
    t = now_ns();
    for (int i = 0; i < FENCES; ++i) {
        asm volatile("st.relaxed.cta.global.u32 [%0], %1;" ::"l"(mine + 12), "r"(i) : "memory");
        asm volatile("fence.acq_rel.cta;" ::: "memory");
    }
    a.out[b * NOUT + 11] = now_ns() - t;
    for (int kind = 0; kind < 4; ++kind) {
        unsigned* cnt = a.bar + 32 * kind;
        for (int i = 1; i <= BARRIERS + 1; ++i) {  // the first one (untimed) lines the blocks up
            if (i == 2) t = now_ns();
            if (kind == 0 || kind == 2) asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
            else asm volatile("red.relaxed.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
            const unsigned target = (unsigned)(G * i);
            unsigned v;
            do {
                if (kind == 0 || kind == 3)
                    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
                else
                    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
            } while ((int)(v - target) < 0);
        }
        a.out[b * NOUT + 2 + kind] = now_ns() - t;
    }
    const unsigned long long t3 = now_ns();
    a.out[b * NOUT + 7] = ts;
    a.out[b * NOUT + 8] = t3;
    phase = 2;
}

int main() {
    Device d;
    if (open_device(&d)) return 1;
    const unsigned chain_len = 1u << 20;  // 4 MB of indices: L2-resident
    unsigned *chain = nullptr, *bar = nullptr, *own = nullptr;
    unsigned long long* out = nullptr;
    if (make_chain(&chain, chain_len)) return 1;
    CK(cudaMalloc(&bar, 4 * 32 * 4));
    CK(cudaMalloc(&own, d.sms * 32 * 4));
    CK(cudaMalloc(&out, d.sms * NOUT * 8));
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    printf("%s, %d SMs, under a bulk-copy stream: L2 load = one of %d dependent loads; fence = st.relaxed + "
           "fence.acq_rel.gpu; barriers of all blocks (%d each): arrival red.{release|relaxed} + polling "
           "ld.{acquire|relaxed}; streamer = the streaming lane's fence after a copy lands; fence cl / cta = the "
           "fence at cluster / CTA scope; medians over the measured blocks, ns\n",
           d.prop.name, d.sms, CHAIN, BARRIERS);
    printf("%6s %4s %9s %8s %7s %9s %7s %7s %7s %7s %7s %9s %8s %8s\n", "copy", "KB", "in flight", "streams", "TB/s",
           "L2 load", "fence", "rel/acq", "rlx/rlx", "rel/rlx", "rlx/acq", "streamer", "fence cl", "fence cta");
    // kb, copies in flight, only the odd blocks stream (the even ones are measured), the streamer times its own fence,
    // the copies are cp.async (LDGSTS) from a warp instead of bulk copies from a lane
    const unsigned cases[][5] = {{32, 0, 0, 0, 0}, {32, 1, 0, 0, 0}, {32, 2, 0, 0, 0}, {32, 3, 0, 0, 0},
                                 {64, 1, 0, 0, 0}, {16, 2, 0, 0, 0}, {32, 1, 1, 0, 0}, {32, 2, 1, 0, 0},
                                 {32, 1, 0, 1, 0}, {32, 2, 0, 1, 0}, {32, 1, 0, 0, 1}, {32, 2, 0, 0, 1},
                                 {32, 4, 0, 0, 1}, {16, 4, 0, 0, 1}, {32, 2, 1, 0, 1}, {32, 1, 0, 0, 0},
                                 {32, 0, 0, 0, 0}};
    for (auto& c : cases) {
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(bar, 0, 4 * 32 * 4));
            CK(cudaMemset(out, 0, d.sms * NOUT * 8));
            Args a{d.src, SRC_BYTES, c[0], c[1], c[2], c[3], c[4], chain, chain_len, bar, own, out};
            std::vector<unsigned long long> o;
            if (run_coop(probe, a, d.sms, 64, RING, out, d.sms * NOUT, &o)) return 1;
            std::vector<double> v[9];
            unsigned long long copies = 0, t0 = ~0ull, t1 = 0;
            const double per[6] = {CHAIN, FENCES, BARRIERS, BARRIERS, BARRIERS, BARRIERS};
            for (int b = 0; b < d.sms; ++b) {
                copies += o[b * NOUT + 6];
                t0 = std::min(t0, o[b * NOUT + 7]);
                t1 = std::max(t1, o[b * NOUT + 8]);
                if (c[2] && (b & 1)) continue;  // measure the blocks that do not stream
                for (int k = 0; k < 6; ++k) v[k].push_back((double)o[b * NOUT + k] / per[k]);
                v[6].push_back((double)o[b * NOUT + 9]);
                v[7].push_back((double)o[b * NOUT + 10] / FENCES);
                v[8].push_back((double)o[b * NOUT + 11] / FENCES);
            }
            double med[9];
            for (int k = 0; k < 9; ++k) med[k] = median(v[k]);
            const double tbs = (double)copies * c[0] * 1024 / (double)(t1 - t0) / 1e3;
            char sf[16] = "-";
            if (c[3]) snprintf(sf, sizeof sf, "%.0f", med[6]);
            if (rep == 1)
                printf("%6s %4u %9u %8s %7.2f %9.0f %7.0f %7.0f %7.0f %7.0f %7.0f %9s %8.0f %8.0f\n",
                       c[4] ? "LDGSTS" : "bulk", c[0], c[1], c[1] ? (c[2] ? "odd SMs" : "all") : "-", tbs, med[0],
                       med[1], med[2], med[3], med[4], med[5], sf, med[7], med[8]);
        }
    }
    return 0;
}
