// sibling_exchange.cu -- an all-to-all exchange of one value among 8 blocks, through L2 (tagged values, as the GDN
// items' sums of squares today) or through distributed shared memory (st.async into the siblings' shared memory,
// completing on their mbarriers), under the decode kernel's bulk-copy weight stream.
//
// The question (issue 12, cuda/NOTES.md v23): the 8 value slices of a GDN head exchange their partial sums of squares
// for the gated RMSNorm (mk_gdn.cuh): each item stores a tagged value and polls its 7 siblings' (an L2 round trip
// after the slowest sibling's store lands, ~1 us under the stream per the v20-v22 traces: "recurrence + sibling
// wait"). If the head's 8 items ran in one thread-block cluster (grid 128 = 16 clusters of 8, item = block), the
// values could go SM to SM: `st.async` writes a 32-bit value into a sibling's shared memory and signals the sibling's
// mbarrier with its byte count, so the reader waits on its own shared memory and no release or L2 round trip is on
// the way. A cluster-scope fence waits for the SM's copies in flight like a GPU-scope one (stream_latency.cu), but
// st.async needs no fence.
//
// One block per SM in clusters of 8 (as many clusters as fit; the grid is printed). Lane 0 of warp 0 streams 32 KB
// bulk copies into a 192 KB ring (ring_stream.cuh), `inflight` in flight (0: no stream). Warp 1 measures meanwhile
// ROUNDS exchanges of each kind, every round depending on the previous one (a block starts round r + 1 only after it
// has its 7 siblings' round r values):
//   tags    lane 0 stores the block's value as a tagged u64 (epoch << 32 | value, st.global.cg as mk_sync.cuh's
//           st_tag) in the block's slot, then lane i < 8 polls sibling i's slot (ld.relaxed.gpu) until its tag is
//           the round's. Two slot sets alternate by round: a sibling one round ahead must not overwrite a value this
//           block still polls;
//   dsmem   lane 0 arms the block's mbarrier for the round (arrive.expect_tx, 7 x 4 bytes), lane i != rank st.async's
//           the value into sibling i's inbox[round & 1][rank] with sibling i's mbarrier[round & 1]; lane 0 waits on
//           its own mbarrier (acquire, cluster scope). Two inboxes and mbarriers alternate: a sibling can be a round
//           ahead, never two (it needs this block's value of the round before).
// Each value is checked (a wrong or stale value counts as a failure; must be 0). Prints, per stream: TB/s and the
// median over blocks of ns per exchange, each way.
//
//   nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o sibling_exchange experiments/sibling_exchange.cu
//   ./sibling_exchange
#include <vector>
#include <algorithm>
#include "ring_stream.cuh"

constexpr int CL = 8;            // blocks per cluster (a GDN head's value slices)
constexpr int RING = 192 * 1024;
constexpr unsigned SLOT = 32 * 1024;
constexpr int NS = RING / SLOT;
constexpr int ROUNDS = 1000;     // exchanges per kind
constexpr int NOUT = 6;          // per block: tags ns, dsmem ns, copies, t0, t1, check failures

struct Args {
    const char* src;
    unsigned long long src_bytes;
    unsigned inflight;             // copies in flight per block (0: no stream)
    unsigned epoch0;               // the tags' first epoch (grows by ROUNDS + 1 per launch: no stale match)
    unsigned long long* slots;     // [2][grid] tagged values, one per block and round parity
    unsigned long long* out;
};

// The value a block sends in round r (distinct per block and round, so a stale or misplaced one is caught).
__device__ __forceinline__ unsigned value_of(int block, int r) {
    return (unsigned)block * 7919u + (unsigned)r * 104729u;
}

extern __shared__ __align__(128) unsigned char ring[];

__global__ void __launch_bounds__(64, 1) probe(Args a) {
    __shared__ uint64_t full[NS];
    __shared__ uint64_t xbar[2];             // dsmem: this block's mbarriers, alternating by round
    __shared__ unsigned inbox[2][CL];        // dsmem: the siblings' values, alternating by round
    __shared__ volatile unsigned phase;      // 0 warm-up, 1 measuring, 2 stop
    const int G = gridDim.x, b = blockIdx.x;
    const unsigned rank = cluster_rank();
    const int first = b - (int)rank;         // the cluster's first block (1-D clusters: consecutive blocks)
    if (threadIdx.x == 0) {
        for (int i = 0; i < NS; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&full[i])));
        for (int i = 0; i < 2; ++i) asm volatile("mbarrier.init.shared.b64 [%0], 1;" ::"r"(su32(&xbar[i])));
        asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
        phase = 0;
    }
    __syncthreads();
    cluster_sync_all();  // every block's mbarriers exist before any st.async reaches them
    if (threadIdx.x == 0) {
        unsigned long long copies = 0;
        if (a.inflight) {
            const unsigned long long per_block = a.src_bytes / G / SLOT * SLOT;
            copies = stream_ring(full, NS, ring, SLOT, a.src + per_block * b, per_block, a.inflight, &phase,
                                 [](unsigned long long, unsigned) {});
        }
        a.out[b * NOUT + 2] = copies;
    } else if (threadIdx.x >= 32) {  // warp 1: the prober
        const int lane = threadIdx.x - 32;
        if (lane == 0) spin_ns(200000);
        __syncwarp();
        unsigned long long ts = now_ns(), bad = 0;
        if (lane == 0) phase = 1;
        // tags through L2
        unsigned long long t = 0;
        for (int r = 0; r <= ROUNDS; ++r) {  // round 0 untimed: the blocks line up
            if (r == 1) t = now_ns();
            const unsigned ep = a.epoch0 + (unsigned)r;
            unsigned long long* set = a.slots + (r & 1) * G;
            if (lane == 0)  // (a weak st.global.cg, as mk_sync.cuh's st_tag: the kernel's way)
                __stcg(set + b, ((unsigned long long)ep << 32) | value_of(b, r));
            if (lane < CL && lane != (int)rank) {
                unsigned long long w;
                do {
                    asm volatile("ld.relaxed.gpu.global.u64 %0, [%1];" : "=l"(w) : "l"(set + first + lane) : "memory");
                } while ((unsigned)(w >> 32) != ep);
                bad += (unsigned)w != value_of(first + lane, r);
            }
            __syncwarp();
        }
        const unsigned long long tags_ns = now_ns() - t;
        // dsmem: st.async into the siblings' inboxes
        for (int r = 0; r <= ROUNDS; ++r) {
            if (r == 1) t = now_ns();
            const int k = r & 1;
            if (lane == 0)
                asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(
                                 su32(&xbar[k])),
                             "r"((CL - 1) * 4) : "memory");
            __syncwarp();  // (siblings' values may land before the arming: the phase cannot complete before it)
            if (lane < CL && lane != (int)rank) {
                const unsigned dst = remote(su32(&inbox[k][rank]), (unsigned)lane);
                const unsigned bar = remote(su32(&xbar[k]), (unsigned)lane);
                asm volatile("st.async.shared::cluster.mbarrier::complete_tx::bytes.b32 [%0], %1, [%2];" ::"r"(dst),
                             "r"(value_of(b, r)), "r"(bar) : "memory");
            }
            if (lane == 0) mbar_wait_cluster(&xbar[k], (unsigned)(r >> 1) & 1u);
            __syncwarp();
            if (lane < CL && lane != (int)rank) bad += inbox[k][lane] != value_of(first + lane, r);
            __syncwarp();
        }
        const unsigned long long dsmem_ns = now_ns() - t;
        for (int o = 16; o; o >>= 1) bad += __shfl_xor_sync(0xffffffffu, bad, o);
        if (lane == 0) {
            a.out[b * NOUT + 0] = tags_ns;
            a.out[b * NOUT + 1] = dsmem_ns;
            a.out[b * NOUT + 3] = ts;
            a.out[b * NOUT + 4] = now_ns();
            a.out[b * NOUT + 5] = bad;
            phase = 2;
        }
    }
    __syncthreads();
    cluster_sync_all();  // no block leaves while a sibling may still write into its shared memory
}

int main() {
    Device d;
    if (open_device(&d)) return 1;
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeMaxDynamicSharedMemorySize, RING));
    CK(cudaFuncSetAttribute(probe, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
    cudaLaunchConfig_t cfg = {};
    cudaLaunchAttribute attr[1];
    attr[0] = cluster_dim(CL);
    cfg.blockDim = dim3(64);
    cfg.dynamicSmemBytes = RING;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    cfg.gridDim = dim3(d.sms / CL * CL);
    int clusters = 0;
    CK(cudaOccupancyMaxActiveClusters(&clusters, (void*)probe, &cfg));
    const int grid = std::min(d.sms / CL, clusters) * CL;
    if (grid < CL) {
        printf("no cluster of %d blocks with 192 KB of shared memory each fits on this GPU\n", CL);
        return 1;
    }
    cfg.gridDim = dim3(grid);  // every cluster resident at once (the occupancy query), so the stream's TB/s window
                               // (first start to last end) covers them all; a cluster's blocks are co-scheduled
    unsigned long long *slots = nullptr, *out = nullptr;
    CK(cudaMalloc(&slots, 2 * grid * 8));
    CK(cudaMemset(slots, 0, 2 * grid * 8));
    CK(cudaMalloc(&out, grid * NOUT * 8));
    printf("%s, %d SMs, %d blocks in clusters of %d (%d clusters fit), 32 KB bulk copies; %d exchanges of one value "
           "among a cluster's %d blocks per kind; medians over blocks, ns per exchange\n",
           d.prop.name, d.sms, grid, CL, clusters, ROUNDS, CL);
    printf("%-22s %7s %9s %9s %12s\n", "stream", "TB/s", "tags (L2)", "st.async", "check fails");
    const unsigned cases[] = {0, 1, 2, 1, 0};  // copies in flight per block
    unsigned epoch = 1;
    for (unsigned inflight : cases) {
        for (int rep = 0; rep < 2; ++rep) {
            CK(cudaMemset(out, 0, grid * NOUT * 8));
            Args args{d.src, SRC_BYTES, inflight, epoch, slots, out};
            epoch += ROUNDS + 1;
            CK(cudaLaunchKernelEx(&cfg, probe, args));
            std::vector<unsigned long long> o;
            if (read_back(out, grid * NOUT, &o)) return 1;
            std::vector<double> tags, dsm;
            unsigned long long bad = 0;
            for (int b = 0; b < grid; ++b) {
                tags.push_back((double)o[b * NOUT + 0] / ROUNDS);
                dsm.push_back((double)o[b * NOUT + 1] / ROUNDS);
                bad += o[b * NOUT + 5];
            }
            const double tbs = stream_tbs(o, grid, NOUT, 2, 3, 4, SLOT);
            char what[32];
            if (!inflight) snprintf(what, sizeof what, "none");
            else snprintf(what, sizeof what, "%u x 32 KB per block", inflight);
            if (rep == 1) printf("%-22s %7.2f %9.0f %9.0f %12llu\n", what, tbs, median(tags), median(dsm), bad);
        }
    }
    return 0;
}
