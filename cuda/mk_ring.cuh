// mk_ring.cuh -- the weight stream: per-block row split of every matvec phase, the producer warp that streams the
// block's rows of every phase (all layers, then the LM head, for every step) into a shared-memory ring of 32 KB slots
// without ever waiting on activations, and the consumer side that takes chunks off the ring in the same order.
#pragma once
#include "luce_mk.h"
#include "mk_config.cuh"
#include "mk_sync.cuh"

namespace mk {

struct Phase {
    const char* src;  // first row of the phase
    int rows;
    int row_bytes;    // 2048 (K=1024, or a column of down_proj), 4096 (K=2048 or a gate|up pair)
};

extern __shared__ __align__(128) unsigned char mk_smem[];

// Per-thread view. Shared-memory regions are fixed offsets from mk_smem (no registers spent on pointers).
struct Ctx {
    int G, b, tid, warp, lane;
    int ns;            // ring slots
    unsigned q;        // chunks consumed so far (consumer view)
    unsigned nsync;    // grid barriers passed in this launch
    bool skip_math;    // debug: take chunks off the ring without computing
    __device__ __forceinline__ uint64_t* full() const { return (uint64_t*)mk_smem; }
    __device__ __forceinline__ uint64_t* empty() const { return (uint64_t*)mk_smem + MAX_SLOTS; }
    __device__ __forceinline__ char* ring() const { return (char*)(mk_smem + SM_RING); }
    __device__ __forceinline__ float* xs() const { return (float*)(mk_smem + SM_X); }      // sub-layer input x (1024)
    __device__ __forceinline__ float* acts() const { return (float*)(mk_smem + SM_ACT); }  // matvec input (<= 4096)
    __device__ __forceinline__ float* misc() const { return (float*)(mk_smem + SM_MISC); } // 2048 floats scratch
};

__device__ __forceinline__ int split_rows(int R, int b, int G) { return (int)(((long long)R * b) / G); }

// P1 -> P2 row counters (MK_HEADCNT): counter k < 16 counts the in_proj rows GDN head k's recurrence reads (q, k, v
// channels, b, a: 386), counter 16 + g the qkv rows attention KV group g reads (4 q heads, k, v: 1536).
__device__ __forceinline__ unsigned* row_counter(const LuceMkParams& P, int k) {
    return (unsigned*)(P.scratch + S_CNT) + k * CNT_STRIDE;
}
constexpr unsigned GDN_HEAD_ROWS = 3 * 128 + 2, FA_GROUP_ROWS = 6 * 256;
__device__ __forceinline__ int overlap(int a0, int a1, int r0, int r1) { return max(0, min(a1, r1) - max(a0, r0)); }
// Rows of [r0, r1) that counter k counts, for a GDN (fa = false) or attention layer.
__device__ __forceinline__ int counted_rows(bool fa, int k, int r0, int r1) {
    if (!fa) {
        if (k >= 16) return 0;
        return overlap(k * 128, k * 128 + 128, r0, r1) + overlap(2048 + k * 128, 2048 + k * 128 + 128, r0, r1) +
               overlap(4096 + k * 128, 4096 + k * 128 + 128, r0, r1) + overlap(8192 + k, 8193 + k, r0, r1) +
               overlap(8208 + k, 8209 + k, r0, r1);
    }
    if (k < 16 || k >= 18) return 0;
    const int g = k - 16;
    int n = overlap(4096 + 256 * g, 4096 + 256 * g + 256, r0, r1) + overlap(4608 + 256 * g, 4608 + 256 * g + 256, r0, r1);
#pragma unroll
    for (int w = 0; w < 4; ++w) n += overlap(512 * (4 * g + w), 512 * (4 * g + w) + 256, r0, r1);
    return n;
}

__device__ __forceinline__ Phase layer_phase(const void* wblob, int l, int k) {
    const char* base = (const char*)wblob + layer_woff(l) * 2;
    const int r1 = is_fa(l) ? FA_ROWS : GDN_ROWS;
    const char* outp = base + (long long)r1 * 2048;
    switch (k) {
        case 0: return {base, r1, 2048};
        case 1: return {outp, H, 4096};
        case 2: return {outp + W_OUT * 2, FF, 4096};
        default: return {outp + (W_OUT + W_GU) * 2, FF, 2048};  // down_proj transposed: row k = column k
    }
}
__device__ __forceinline__ Phase lm_phase(const void* embed) { return {(const char*)embed, V, 2048}; }

// ---- producer ----
struct Producer {
    unsigned qp = 0;
#if __CUDA_ARCH__ >= 900
    uint64_t pol;
#endif
    __device__ __forceinline__ void issue(const Ctx& c, const Phase& ph) {
        const int r0 = split_rows(ph.rows, c.b, c.G), r1 = split_rows(ph.rows, c.b + 1, c.G);
        const int rps = SLOT_BYTES / ph.row_bytes;
        for (int r = r0; r < r1; r += rps) {
            const int n = min(rps, r1 - r);
            const unsigned bytes = (unsigned)(n * ph.row_bytes);
            const int slot = (int)(qp % (unsigned)c.ns);
            mbar_wait(&c.empty()[slot], ((qp / (unsigned)c.ns) & 1u) ^ 1u);
            char* dst = c.ring() + (size_t)slot * SLOT_BYTES;
            const char* src = ph.src + (long long)r * ph.row_bytes;
#if __CUDA_ARCH__ >= 900
            bulk_load(dst, src, bytes, &c.full()[slot], pol);
#else
            warp_async_load(dst, src, bytes, &c.full()[slot], c.lane);
#endif
            ++qp;
        }
    }
};

__device__ void run_producer(const Ctx& c, const LuceMkParams& P) {
    Producer pr;
#if __CUDA_ARCH__ >= 900
    if (c.lane != 0) return;
    pr.pol = evict_first_policy();
#endif
    for (int s = 0; s < P.n_steps; ++s) {
        for (int l = 0; l < NL; ++l)
            for (int k = 0; k < 4; ++k) pr.issue(c, layer_phase(P.wblob, l, k));
        pr.issue(c, lm_phase(P.embed));
    }
}

// ---- consumer ----
// Calls fn(row, smem_row_ptr) for the rows of this warp (local row index % NCW == warp), chunk by chunk.
template <class F>
__device__ __forceinline__ void consume(Ctx& c, const Phase& ph, F&& fn) {
    const int r0 = split_rows(ph.rows, c.b, c.G), r1 = split_rows(ph.rows, c.b + 1, c.G);
    const int rps = SLOT_BYTES / ph.row_bytes;
    for (int r = r0; r < r1; r += rps) {
        const int n = min(rps, r1 - r);
        const int slot = (int)(c.q % (unsigned)c.ns);
        mbar_wait(&c.full()[slot], (c.q / (unsigned)c.ns) & 1u);
        if (!c.skip_math) {
            for (int i = (c.warp - (r - r0) % NCW + NCW) % NCW; i < n; i += NCW)
                fn(r + i, c.ring() + (size_t)slot * SLOT_BYTES + (size_t)i * ph.row_bytes);
        }
        __syncwarp();
        if (c.lane == 0) mbar_arrive(&c.empty()[slot]);
        ++c.q;
    }
}

// Calls fn(first_row, n_rows, smem_chunk) on every consumer thread for each chunk of this block's rows (for phases
// whose work is split over columns, not rows); each warp releases the slot when it is done with it.
template <class F>
__device__ __forceinline__ void consume_all(Ctx& c, const Phase& ph, F&& fn) {
    const int r0 = split_rows(ph.rows, c.b, c.G), r1 = split_rows(ph.rows, c.b + 1, c.G);
    const int rps = SLOT_BYTES / ph.row_bytes;
    for (int r = r0; r < r1; r += rps) {
        const int n = min(rps, r1 - r);
        const int slot = (int)(c.q % (unsigned)c.ns);
        mbar_wait(&c.full()[slot], (c.q / (unsigned)c.ns) & 1u);
        if (!c.skip_math) fn(r, n, (const char*)(c.ring() + (size_t)slot * SLOT_BYTES));
        __syncwarp();
        if (c.lane == 0) mbar_arrive(&c.empty()[slot]);
        ++c.q;
    }
}

}  // namespace mk
