// cluster_barrier.cu -- a grid barrier through thread-block-cluster leaders against the flat one, under a bulk-copy
// weight stream (issue 12's exchange cost, H200; cuda/NOTES.md, "The next question for the exchanges").
//
// One block per SM (as many as clusters of CL = 2 blocks fit: the grid is printed). Lane 0 of warp 0 streams a 4 GiB
// buffer into a 192 KB shared-memory ring with 32 KB bulk copies, as the decode kernel's producer does; lane 0 of
// warp 1 times two barriers of all blocks:
//   flat     every block: red.release.gpu on one counter, then ld.acquire.gpu polling (mk_sync.cuh's grid_sync);
//   leader   the member of each cluster arrives on an mbarrier in its leader's shared memory (a remote arrive,
//            release at cluster scope); the leader waits for it (acquire, cluster scope), makes the cluster's arrival
//            on the global counter (red.release.gpu, CL x fewer arrivals) and polls it, then arrives on the member's
//            "go" mbarrier (release, cluster scope), which the member waits on.
// Stream cases: none; every block 1 copy in flight; only the members stream, 2 copies in flight (the same bytes per
// cluster, and the leaders' releases have no copy of their own SM to wait for), or 1; the members stream 2 or 1 copies
// into their leader's ring (the leader's SM issues none but receives them: does its release wait for copies another
// SM issued into it?). Run on an H100 2026-12-05 (cuda/NOTES.md, "v15 screened"): the leader barrier lost everywhere,
// but the flat one was cheaper when the members streamed into their leaders (1,586-1,838 ns against 2,555 with every
// block streaming into its own ring). Hence a last case (added 2026-12-06, session 39, not yet run): **cross-fed**
// pairs, every block streaming into its partner's ring (rank ^ 1) while lane 0 of warp 2 acknowledges the copies
// that land in its own ring: the whole stream again, but no SM's release has a copy of its own landing on it. If its
// flat barrier stays near 1.6-1.8 us at the full stream rate, a producer that feeds its partner's ring would take
// ~0.7 us off each of a step's 55 barriers.
// Prints per case: TB/s of the stream, the median over blocks of each barrier (ns), and how many times a block did not
// see another cluster's store made before the barrier (CHECKS untimed leader barriers first; must be 0).
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o cluster_barrier experiments/cluster_barrier.cu
//   ./cluster_barrier
#include <vector>
#include <algorithm>
#include "ring_stream.cuh"

constexpr int CL = 2;           // blocks per cluster
constexpr int RING = 192 * 1024;
constexpr unsigned SLOT = 32 * 1024;
constexpr int NS = RING / SLOT;
constexpr int BARRIERS = 300;   // per kind
constexpr int CHECKS = 50;      // leader barriers first run untimed with a data check (does the protocol synchronise?)
constexpr int NOUT = 6;         // per block: flat ns, leader ns, copies, t0, t1, data-check failures

struct Args {
    const char* src;
    unsigned long long src_bytes;
    unsigned inflight;  // copies in flight per streaming block
    unsigned mode;      // 0: every block streams into its own ring; 1: only the members (rank != 0) do;
                        // 2: the members stream into their leader's ring (the copies land on the leader's SM);
                        // 3: every block streams into its partner's ring (cross-fed pairs)
    unsigned* bar;                    // 2 counters, 32 apart (zeroed before the launch)
    unsigned* seen;                   // per block: the last leader barrier it reached (the data check)
    unsigned long long* out;
};

extern __shared__ __align__(128) unsigned char ring[];

__global__ void __launch_bounds__(96, 1) probe(Args a) {
    __shared__ uint64_t full[NS];
    __shared__ uint64_t lbar, go;  // leader: the members' arrivals; member: the leader's go
    __shared__ uint64_t freed[NS];  // modes 2, 3: the block fed saw the copy into this slot of its ring land
    __shared__ volatile unsigned phase;  // 0 warm-up, 1 measuring, 2 stop
    __shared__ volatile unsigned fed;    // modes 2, 3: copies the feeding block issued into this ring (set when it stops)
    const int G = gridDim.x, b = blockIdx.x;
    const unsigned rank = cluster_rank();
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&full[i])));
        asm volatile("mbarrier.init.shared.b64 [%0], %1;" ::"r"(su32(&lbar)), "r"(CL - 1));
        asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&go)));
        for (int i = 0; i < NS; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&freed[i])));
        fed = 0xffffffffu;
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        phase = 0;
    }
    __syncthreads();
    cluster_sync_all();  // every block's mbarriers exist before any remote arrive
    const bool acker =
        a.inflight != 0 && (a.mode == 2 ? threadIdx.x == 0 && rank == 0 : a.mode == 3 && threadIdx.x == 64);
    const unsigned fed_by = a.mode == 2 ? 1u : rank ^ 1u;  // the block whose copies land in this ring (modes 2, 3)
    if (acker) {  // modes 2 (leader), 3: ack each copy that lands in this block's ring
        unsigned q = 0;
        for (;; ++q) {
            while (!mbar_test(&full[q % NS], (q / NS) & 1u))
                if (fed <= q) break;  // the feeder stopped and every copy it issued has landed
            if (fed <= q) break;
            mbar_arrive_remote(remote(su32(&freed[q % NS]), fed_by));
        }
    } else if (threadIdx.x == 0 && a.inflight && (a.mode == 0 || a.mode == 3 || rank != 0)) {  // the stream
        // modes 0 and 1: into the block's own ring, a slot free once its copy landed (full); mode 2: into the
        // leader's ring, mode 3 into the partner's, a slot free once that block acked its landing (freed)
        const bool into_leader = a.mode >= 2;
        const unsigned target = a.mode == 2 ? 0u : rank ^ 1u;
        uint64_t* landed = into_leader ? freed : full;
        unsigned long long copies = 0;
        const unsigned long long per_block = a.src_bytes / G / SLOT * SLOT;
        const char* base = a.src + per_block * b;
        unsigned long long off = 0, pol;
        asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
        unsigned q = 0;
        for (; phase < 2; ++q) {
            if (q >= a.inflight) {  // copy q - inflight is done (and so is q - NS: inflight <= NS)
                const unsigned q0 = q - a.inflight;
                while (!mbar_test(&landed[q0 % NS], (q0 / NS) & 1u)) {
                }
                if (phase == 1) ++copies;
            }
            unsigned bar = su32(&full[q % NS]), dst = su32(ring + (q % NS) * SLOT);
            if (into_leader) {  // the target's slot and mbarrier, through distributed shared memory
                bar = remote(bar, target);
                dst = remote(dst, target);
                asm volatile("mbarrier.arrive.expect_tx.release.cluster.shared::cluster.b64 _, [%0], %1;" ::"r"(bar),
                             "r"(SLOT) : "memory");
            } else {
                asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(bar),
                             "r"(SLOT) : "memory");
            }
            asm volatile(
                "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], "
                "%4;" ::"r"(dst), "l"(base + off), "r"(SLOT), "r"(bar), "l"(pol) : "memory");
            off += SLOT;
            if (off >= per_block) off = 0;
        }
        for (unsigned j = q > a.inflight ? q - a.inflight : 0; j < q; ++j)  // every issued copy done before exit
            while (!mbar_test(&landed[j % NS], (j / NS) & 1u)) {
            }
        if (into_leader) {  // the target stops acking after copy q - 1
            const unsigned fed_at = remote(su32((const void*)&fed), target);
            asm volatile("st.shared::cluster.u32 [%0], %1;" ::"r"(fed_at), "r"(q) : "memory");
        }
        a.out[b * NOUT + 2] = copies;
    } else if (threadIdx.x == 32) {  // the prober
        spin_ns(200000);
        const unsigned long long ts = now_ns();
        phase = 1;
        a.out[b * NOUT + 0] = release_barriers_ns(a.bar, (unsigned)G, BARRIERS);  // flat: G arrivals per barrier
        unsigned long long t = 0;
        unsigned* cnt = a.bar + 32;  // leader: G / CL arrivals per barrier
        unsigned long long bad = 0;
        const int other = (b + G / 2 + 1) % G;  // a block of another cluster
        for (int i = 1; i <= CHECKS + BARRIERS + 1; ++i) {
            if (i == CHECKS + 2) t = now_ns();
            const unsigned parity = (unsigned)(i - 1) & 1u;
            if (i <= CHECKS)  // before the arrival: every block must see it after the barrier
                asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(a.seen + b), "r"(i) : "memory");
            if (rank != 0) {
                mbar_arrive_remote(remote(su32(&lbar), 0));
                mbar_wait_cluster(&go, parity);
            } else {
                mbar_wait_cluster(&lbar, parity);
                asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(cnt) : "memory");
                const unsigned target = (unsigned)(G / CL * i);
                unsigned v;
                do {
                    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
                } while ((int)(v - target) < 0);
                for (unsigned r = 1; r < CL; ++r) mbar_arrive_remote(remote(su32(&go), r));
            }
            if (i <= CHECKS) {
                unsigned v;
                asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(a.seen + other) : "memory");
                bad += (int)(v - (unsigned)i) < 0;
            }
        }
        a.out[b * NOUT + 1] = now_ns() - t;
        a.out[b * NOUT + 5] = bad;
        a.out[b * NOUT + 3] = ts;
        a.out[b * NOUT + 4] = now_ns();
        phase = 2;
    }
    cluster_sync_all();  // no block leaves while another may still arrive on its mbarriers
}

int main() {
    Device d;
    if (open_device(&d)) return 1;
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[2];
    attr[0] = cluster_dim(CL);
    attr[1].id = cudaLaunchAttributeCooperative;
    attr[1].val.cooperative = 1;
    cfg.blockDim = dim3(96);
    cfg.dynamicSmemBytes = RING;
    cfg.attrs = attr;
    cfg.numAttrs = 1;  // the occupancy query takes the cluster shape only
    cfg.gridDim = dim3(d.sms / CL * CL);
    int clusters = 0;
    CK(cudaOccupancyMaxActiveClusters(&clusters, (void*)probe, &cfg));
    const int grid = std::min(d.sms / CL, clusters) * CL;
    cfg.gridDim = dim3(grid);
    cfg.numAttrs = 2;
    unsigned *bar = nullptr, *seen = nullptr;
    unsigned long long* out = nullptr;
    CK(cudaMalloc(&bar, 2 * 32 * 4));
    CK(cudaMalloc(&seen, grid * 4));
    CK(cudaMalloc(&out, grid * NOUT * 8));
    printf("%s, %d SMs, %d blocks in clusters of %d (%d clusters fit), 32 KB bulk copies; barriers of all blocks (%d "
           "each), medians over blocks, ns\n",
           d.prop.name, d.sms, grid, CL, clusters, BARRIERS);
    printf("%-38s %7s %8s %8s %12s\n", "stream", "TB/s", "flat", "leader", "check fails");
    // copies in flight per streaming block, mode (Args)
    const unsigned cases[][2] = {{0, 0}, {1, 0}, {2, 1}, {1, 1}, {2, 2}, {1, 2}, {1, 3}, {2, 3}, {1, 0}, {0, 0}};
    bool coop = true;
    for (auto& c : cases) {
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(bar, 0, 2 * 32 * 4));
            CK(cudaMemset(seen, 0, grid * 4));
            CK(cudaMemset(out, 0, grid * NOUT * 8));
            Args args{d.src, SRC_BYTES, c[0], c[1], bar, seen, out};
            cfg.numAttrs = coop ? 2 : 1;
            cudaError_t e = cudaLaunchKernelEx(&cfg, probe, args);
            if (e != cudaSuccess && coop) {  // cooperative launch with clusters refused: co-residency by the grid size
                printf("(cooperative launch with clusters refused: %s; launching %d blocks without it)\n",
                       cudaGetErrorString(e), grid);
                (void)cudaGetLastError();
                coop = false;
                cfg.numAttrs = 1;
                e = cudaLaunchKernelEx(&cfg, probe, args);
            }
            CK(e);
            std::vector<unsigned long long> o;
            if (read_back(out, grid * NOUT, &o)) return 1;
            std::vector<double> flat, lead;
            unsigned long long bad = 0;
            for (int b = 0; b < grid; ++b) {
                bad += o[b * NOUT + 5];
                flat.push_back((double)o[b * NOUT + 0] / BARRIERS);
                lead.push_back((double)o[b * NOUT + 1] / BARRIERS);
            }
            const double tbs = stream_tbs(o, grid, NOUT, 2, 3, 4, SLOT);
            char what[64];
            if (!c[0]) snprintf(what, sizeof what, "none");
            else
                snprintf(what, sizeof what, "%u x 32 KB per %s", c[0],
                         c[1] == 0   ? "block"
                         : c[1] == 1 ? "member (leaders idle)"
                         : c[1] == 2 ? "member, into the leader"
                                     : "block, into its partner");
            if (rep == 1)
                printf("%-38s %7.2f %8.0f %8.0f %12llu\n", what, tbs, median(flat), median(lead), bad);
        }
    }
    return 0;
}
