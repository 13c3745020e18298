// mk_ring.cuh -- the weight stream. Every matvec phase's rows are split over the blocks; the producer warp copies the
// block's rows of every phase (all layers, then the LM head, for every step) into a ring of shared-memory slots and
// never waits on activations, only on free slots; the consumer warps take the chunks off the ring in the same order.
// Waits for: free slots (empty mbarriers). Publishes: full slots (bulk copy completion on the full mbarriers).
#pragma once
#include "luce_mk.h"
#include "mk_math.cuh"
#include "mk_sync.cuh"

namespace mk {

// Per-thread view of the block. Shared memory is reached through smem() (no registers spent on pointers).
struct Ctx {
    int G, b, tid, warp, lane;
    int ns;            // ring slots
    unsigned q;        // chunks consumed so far (consumer view)
    unsigned nsync;    // grid barriers passed in this launch
    bool skip_math;    // LUCE_MK_DEBUG_NO_MATH: take chunks off the ring without computing
    __device__ __forceinline__ char* ring() const { return (char*)(mk_smem + SM_RING); }
};

struct Phase {
    const char* src;  // first row of the phase
    int rows;
    int row_bytes;    // 2048 (K = 1024, or a row of a transposed matrix), 4096 (K = 2048, or a gate|up pair)
};
// Phase k of layer l: 0 in_proj / qkv, 1 GDN out_proj^T / attention o_proj, 2 gate|up, 3 down^T.
__device__ __forceinline__ Phase layer_phase(const void* wblob, int l, int k) {
    const char* base = (const char*)wblob + layer_woff(l) * 2;
    const int r1 = is_fa(l) ? FA_ROWS : GDN_ROWS;
    const char* outp = base + (long long)r1 * 2048;
    switch (k) {
        case 0: return {base, r1, 2048};
        case 1: return is_fa(l) ? Phase{outp, H, 4096} : Phase{outp, 2048, 2048};
        case 2: return {outp + W_OUT * 2, FF, 4096};
        default: return {outp + (W_OUT + W_GU) * 2, FF, 2048};
    }
}
// The LM head of step s streams the int8 screening copy (mk_lm_head.cuh) when one is given and the tune asks for it,
// unless the step returns logits or a block's rows would not fit its bound array.
__device__ __forceinline__ bool lm_screened(const Ctx& c, const LuceMkParams& P, int s) {
    return P.lm8 && P.tune.lm_screen && !(P.logits && s >= P.logits_first) && (V + c.G - 1) / c.G <= LM8_MAX_ROWS;
}
__device__ __forceinline__ Phase lm_phase(const Ctx& c, const LuceMkParams& P, int s) {
    return lm_screened(c, P, s) ? Phase{(const char*)P.lm8, V, LM8_ROW_BYTES} : Phase{(const char*)P.embed, V, 2048};
}

// A contiguous run of rows [r0, r1) of a phase that one block streams and consumes.
struct Seg {
    const char* src;  // row 0 of the phase
    int r0, r1, row_bytes;
};
__device__ __forceinline__ int split_rows(int R, int b, int G) { return (int)(((long long)R * b) / G); }
__device__ __forceinline__ Seg block_seg(const Ctx& c, const Phase& ph) {
    return {ph.src, split_rows(ph.rows, c.b, c.G), split_rows(ph.rows, c.b + 1, c.G), ph.row_bytes};
}
// Segments block c.b streams in phase k of layer l (l == NL: the LM head, one segment; its rows are lm_phase's). A
// GDN layer's out_proj^T is split by work item: item i owns rows [16 i, 16 i + 16), and block b runs items b, b + G, ...
__device__ __forceinline__ int phase_segs(const Ctx& c, int l, int k) {
    if (l < NL && k == 1 && !is_fa(l)) return c.b < GDN_ITEMS ? (GDN_ITEMS - 1 - c.b) / c.G + 1 : 0;
    return 1;
}
__device__ __forceinline__ Seg phase_seg(const Ctx& c, const LuceMkParams& P, int l, int k, int i) {
    const Phase ph = layer_phase(P.wblob, l, k);
    if (k == 1 && !is_fa(l)) {
        const int item = c.b + i * c.G;
        return {ph.src, item * SLV, item * SLV + SLV, ph.row_bytes};
    }
    return block_seg(c, ph);
}

// Position in a block's chunk stream (steps x (24 layers x 4 phases + the LM head) x segments x slot-sized chunks).
struct Walk {
    int s = 0, l = 0, k = 0, i = 0, r = -1;
};
// Next chunk of the stream: src, bytes; false at the end. The consumers take chunks in the same order.
__device__ __forceinline__ bool walk_next(const Ctx& c, const LuceMkParams& P, Walk& w, const char*& src, unsigned& bytes) {
    for (;;) {
        if (w.s >= P.n_steps) return false;
        if (w.k >= (w.l == NL ? 1 : 4)) {
            w.k = 0;
            if (++w.l > NL) {
                w.l = 0;
                ++w.s;
            }
            continue;
        }
        if (w.i >= phase_segs(c, w.l, w.k)) {
            w.i = 0;
            ++w.k;
            continue;
        }
        const Seg g = w.l == NL ? block_seg(c, lm_phase(c, P, w.s)) : phase_seg(c, P, w.l, w.k, w.i);
        if (w.r < 0) w.r = g.r0;
        if (w.r >= g.r1) {
            w.r = -1;
            ++w.i;
            continue;
        }
        const int n = min(SLOT_BYTES / g.row_bytes, g.r1 - w.r);
        src = g.src + (long long)w.r * g.row_bytes;
        bytes = (unsigned)(n * g.row_bytes);
        w.r += n;
        return true;
    }
}

// ---- copies into the ring ----
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ uint64_t evict_first_policy() {
    uint64_t pol;
    asm volatile("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(pol));
    return pol;
}
// One thread: expect `bytes` on the mbarrier and start a bulk (TMA 1D) global->shared copy completing on it.
__device__ __forceinline__ void bulk_load(void* dst, const void* src, unsigned bytes, uint64_t* bar, uint64_t pol) {
    asm volatile("{ .reg .b64 st; mbarrier.arrive.expect_tx.shared.b64 st, [%0], %1; }" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
    asm volatile(
        "cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes.L2::cache_hint [%0], [%1], %2, [%3], %4;"
        ::"r"(smem_u32(dst)), "l"(src), "r"(bytes), "r"(smem_u32(bar)), "l"(pol) : "memory");
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
// Arrivals that complete a full slot: the TMA thread's expect_tx, or the 32 lanes' cp.async arrivals.
#if __CUDA_ARCH__ >= 900
constexpr unsigned FULL_ARRIVALS = 1;
#else
constexpr unsigned FULL_ARRIVALS = 32;
#endif

// ---- producer ----
// Whether at least k of the copies before copy qp are not yet consumed (k = 0: taken as yes): copy qp - k is not
// released. Its empty barrier completes phase (qp - k) / ns when the consumers release it; the phase after that needs
// copy qp - k + ns, which is not issued yet (k < ns), so the parity is unambiguous.
__device__ __forceinline__ bool ring_stocked(unsigned qp, unsigned k, unsigned ns) {
    if (k == 0) return true;
    if (qp < k) return false;
    const unsigned q0 = qp - k;
    return !mbar_test(&smem().empty[q0 % ns], (q0 / ns) & 1u);
}

// Copies every chunk into the next free slot, with at most tune.inflight copies in flight (tune.inflight_lm in the LM
// head but its last LM_TAIL_ROWS rows, P.inflight_deep in the layer phases of P.deep_phases): every queued copy delays
// the consumers' dependent L2 round trips (NOTES.md v9), and every release a consumer makes waits for the copies in
// flight on its SM (NOTES.md v13). A pause (tune.pause_mask) holds while the ring is stocked (P.pause_ready).
__device__ void run_producer(const Ctx& c, const LuceMkParams& P) {
#if __CUDA_ARCH__ >= 900
    if (c.lane != 0) return;
    const uint64_t pol = evict_first_policy();
#endif
    const unsigned ns = (unsigned)c.ns, pause_mask = (unsigned)P.tune.pause_mask;
    const unsigned cap_layers = (unsigned)P.tune.inflight, cap_lm = (unsigned)P.tune.inflight_lm;
    const unsigned deep = (unsigned)P.deep_phases, cap_deep = (unsigned)P.inflight_deep;
    // (copy qp - ns is released before copy qp goes out: at most ns - 1 copies can be waiting to be consumed)
    const unsigned ready = min((unsigned)P.pause_ready, ns - 1);
    const int lm_end = split_rows(V, c.b + 1, c.G);
    Walk w;
    const char* src;
    unsigned bytes;
    for (unsigned qp = 0; walk_next(c, P, w, src, bytes); ++qp) {
        const unsigned slot = qp % ns;
        // wait until copy qp - cap has landed (its slot is not re-armed before copy qp - cap + ns > qp, so its full
        // barrier still shows that phase); cap 0 or >= ns: no cap beyond the ring
        const unsigned cap = w.l == NL ? (lm_end - w.r > LM_TAIL_ROWS ? cap_lm : cap_layers)
                                       : ((deep >> w.k) & 1u ? cap_deep : cap_layers);
        if (cap > 0 && cap < ns && qp >= cap) {
            const unsigned q0 = qp - cap;
            mbar_wait(&smem().full[q0 % ns], (q0 / ns) & 1u);
        }
        mbar_wait(&smem().empty[slot], ((qp / ns) & 1u) ^ 1u);
        while (paused(pause_mask) && ring_stocked(qp, ready, ns)) __nanosleep(32);
        char* dst = c.ring() + (size_t)slot * SLOT_BYTES;
#if __CUDA_ARCH__ >= 900
        bulk_load(dst, src, bytes, &smem().full[slot], pol);
#else
        warp_async_load(dst, src, bytes, &smem().full[slot], c.lane);
#endif
    }
}

// ---- consumers ----
// Calls fn(first_row, n_rows, smem_chunk) on every consumer thread for each chunk of the segment (for phases whose
// work is split over columns, not rows); each warp releases the slot when it is done with it.
template <class F>
__device__ __forceinline__ void consume_all_seg(Ctx& c, const Seg& g, F&& fn) {
    const int rps = SLOT_BYTES / g.row_bytes;
    for (int r = g.r0; r < g.r1; r += rps) {
        const int n = min(rps, g.r1 - r);
        const int slot = (int)(c.q % (unsigned)c.ns);
        mbar_wait(&smem().full[slot], (c.q / (unsigned)c.ns) & 1u);
        if (!c.skip_math) fn(r, n, (const char*)(c.ring() + (size_t)slot * SLOT_BYTES));
        __syncwarp();
        if (c.lane == 0) mbar_arrive(&smem().empty[slot]);
        ++c.q;
    }
}
// Calls fn(row, smem_row_ptr) for the rows of this warp (local row index % NCW == warp), chunk by chunk.
template <class F>
__device__ __forceinline__ void consume_seg(Ctx& c, const Seg& g, F&& fn) {
    const int warp = c.warp;
    consume_all_seg(c, g, [&](int r, int n, const char* base) {
        for (int i = (warp - (r - g.r0) % NCW + NCW) % NCW; i < n; i += NCW) fn(r + i, base + (size_t)i * g.row_bytes);
    });
}
template <class F>
__device__ __forceinline__ void consume(Ctx& c, const Phase& ph, F&& fn) {
    consume_seg(c, block_seg(c, ph), fn);
}
template <class F>
__device__ __forceinline__ void consume_all(Ctx& c, const Phase& ph, F&& fn) {
    consume_all_seg(c, block_seg(c, ph), fn);
}

}  // namespace mk
