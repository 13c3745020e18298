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

// Timing trace (P.trace != NULL): thread 0 stamps %globaltimer at phase boundaries. Point k of a layer: TR_L * l + k
// (GDN layers use k = 4, 5 inside the block's recurrence item: after its inputs arrived (row counter, or the tag polls
// and the conv), after the siblings' sums of squares arrived; attention layers k = 10 after an item's inputs arrived,
// 11 after the o_proj prologue);
// then the per-step points from TR_STEP on (luce_mk.h, luce_mk_trace_points).
constexpr int TR_L = 12, TR_STEP = NL * TR_L, TR_POINTS = TR_STEP + 4;
__device__ __forceinline__ void trace_pt(const Ctx& c, const LuceMkParams& P, int s, int k) {
    if (P.trace && c.tid == 0) P.trace[((long long)s * TR_POINTS + k) * c.G + c.b] = global_ns();
}

__device__ __forceinline__ int split_rows(int R, int b, int G) { return (int)(((long long)R * b) / G); }

// P1 -> P2 row counters (MK_HEADCNT): counter k < 16 counts GDN head k's in_proj rows (514, contiguous in the
// head-major layout, so a head waits only on the ~9 blocks that own them), counter 16 + g KV group g's 2560 qkv rows.
__device__ __forceinline__ unsigned* row_counter(const LuceMkParams& P, int k) {
    return (unsigned*)(P.scratch + S_CNT) + k * CNT_STRIDE;
}
constexpr unsigned GDN_HEAD_ROWS = GDN_HROWS, FA_GROUP_ROWS = FA_GROWS;
__device__ __forceinline__ int overlap(int a0, int a1, int r0, int r1) { return max(0, min(a1, r1) - max(a0, r0)); }
// Rows of [r0, r1) that counter k counts, for a GDN (fa = false) or attention layer.
__device__ __forceinline__ int counted_rows(bool fa, int k, int r0, int r1) {
    if (!fa) return k < 16 ? overlap(k * GDN_HROWS, (k + 1) * GDN_HROWS, r0, r1) : 0;
    return (k >= 16 && k < 18) ? overlap((k - 16) * FA_GROWS, (k - 15) * FA_GROWS, r0, r1) : 0;
}

__device__ __forceinline__ Phase layer_phase(const void* wblob, int l, int k) {
    const char* base = (const char*)wblob + layer_woff(l) * 2;
    const int r1 = is_fa(l) ? FA_ROWS : GDN_ROWS;
    const char* outp = base + (long long)r1 * 2048;
    switch (k) {
        case 0: return {base, r1, 2048};
#if MK_GDNFUSE
        case 1: return is_fa(l) ? Phase{outp, H, 4096} : Phase{outp, 2048, 2048};  // GDN out_proj transposed
#else
        case 1: return {outp, H, 4096};
#endif
        case 2: return {outp + W_OUT * 2, FF, 4096};
        default: return {outp + (W_OUT + W_GU) * 2, FF, 2048};  // down_proj transposed: row k = column k
    }
}
__device__ __forceinline__ Phase lm_phase(const void* embed) { return {(const char*)embed, V, 2048}; }

// A contiguous run of rows [r0, r1) of a phase that one block streams and consumes.
struct Seg {
    const char* src;  // row 0 of the phase
    int r0, r1, row_bytes;
};
__device__ __forceinline__ Seg block_seg(const Ctx& c, const Phase& ph) {
    return {ph.src, split_rows(ph.rows, c.b, c.G), split_rows(ph.rows, c.b + 1, c.G), ph.row_bytes};
}
// GDN items (head, value slice) of a layer; with MK_GDNFUSE item i also owns rows [16 i, 16 i + 16) of out_proj^T.
constexpr int GDN_ITEMS = DH * NSL;
__device__ __forceinline__ bool fused_out(int l) { return MK_GDNFUSE && !is_fa(l); }
// Segments block c.b streams in phase k of layer l (l == NL: the LM head, one phase).
__device__ __forceinline__ int phase_segs(const Ctx& c, int l, int k) {
    if (l < NL && k == 1 && fused_out(l)) return c.b < GDN_ITEMS ? (GDN_ITEMS - 1 - c.b) / c.G + 1 : 0;
    return 1;
}
__device__ __forceinline__ Seg phase_seg(const Ctx& c, const LuceMkParams& P, int l, int k, int i) {
    if (l == NL) return block_seg(c, lm_phase(P.embed));
    const Phase ph = layer_phase(P.wblob, l, k);
    if (k == 1 && fused_out(l)) {
        const int item = c.b + i * c.G;
        return {ph.src, item * SLV, item * SLV + SLV, ph.row_bytes};
    }
    return block_seg(c, ph);
}

// Position in a block's chunk stream (steps x (24 layers x 4 phases + the LM head) x segments x 32 KB chunks).
struct Walk {
    int s = 0, l = 0, k = 0, i = 0, r = -1;
};
// Next chunk of the stream: src, bytes; false at the end. The producer's copies and L2 prefetches use the same walk,
// and the consumers take chunks in the same order.
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
        const Seg g = phase_seg(c, P, w.l, w.k, w.i);
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

// ---- producer ----
// One lane copies every chunk into the next free ring slot (TMA 1D bulk copy on sm_90, the whole warp's cp.async
// below). With MK_L2LEAD > 0 it also keeps up to MK_L2LEAD bytes beyond the chunk being copied prefetched into L2,
// so HBM keeps streaming while the ring is full (the ring holds only ~8 us of per-SM streaming).
__device__ void run_producer(const Ctx& c, const LuceMkParams& P) {
#if __CUDA_ARCH__ >= 900
    if (c.lane != 0) return;
    const uint64_t pol = evict_first_policy();
#endif
    Walk w;
#if __CUDA_ARCH__ >= 900 && MK_L2LEAD > 0
    Walk pf;
    long long ahead = 0;  // bytes prefetched beyond the copy cursor
#endif
#if __CUDA_ARCH__ >= 900 && MK_IDLEPF > 0
    Walk pfw;                    // idle-time L2 prefetch cursor, pf_ahead chunks beyond the copy cursor
    int pf_ahead = 0;
    unsigned long long pf_t = 0;
#endif
    const int lm_end = split_rows(V, c.b + 1, c.G);
    const char* src;
    unsigned bytes;
    unsigned qp = 0;
    while (walk_next(c, P, w, src, bytes)) {
#if __CUDA_ARCH__ >= 900 && MK_IDLEPF > 0
        if (pf_ahead > 0) {
            --pf_ahead;
        } else {
            const char* ps;
            unsigned pb;
            walk_next(c, P, pfw, ps, pb);  // keep the prefetch cursor at or beyond the copy cursor
        }
#endif
#if __CUDA_ARCH__ >= 900 && MK_L2LEAD > 0
        const char* psrc;
        unsigned pbytes;
        while (ahead < MK_L2LEAD && walk_next(c, P, pf, psrc, pbytes)) {
            prefetch_l2(psrc, pbytes);
            ahead += pbytes;
        }
        ahead -= bytes;
#endif
        const int slot = (int)(qp % (unsigned)c.ns);
        // at most N copies in flight (N = MK_INFLIGHT in the layers, MK_INFLIGHT_LM in the LM head, which has no
        // dependent round trips to slow down): wait until copy qp - N has landed (its slot is not re-armed before
        // copy qp - N + ns > qp, so its full barrier still shows that phase; N >= ns: no cap beyond the ring)
        const unsigned cap = (unsigned)(w.l == NL ? (lm_end - w.r > MK_LMTAIL_ROWS ? MK_INFLIGHT_LM : MK_INFLIGHT)
                                        : w.k == 0 ? MK_CAP_K0 : w.k == 1 ? MK_CAP_K1 : w.k == 2 ? MK_CAP_K2 : MK_CAP_K3);
        if (cap > 0 && cap < (unsigned)c.ns && qp >= cap) {
            const unsigned q0 = qp - cap;
            mbar_wait(&c.full()[q0 % (unsigned)c.ns], (q0 / (unsigned)c.ns) & 1u);
        }
#if __CUDA_ARCH__ >= 900 && MK_IDLEPF > 0
        // ring full (the consumers are in a latency-bound stretch, HBM idle): pull the chunks after the ring's into
        // L2, at most one every MK_IDLEPF_NS and MK_IDLEPF bytes ahead
        while (!mbar_test(&c.empty()[slot], ((qp / (unsigned)c.ns) & 1u) ^ 1u)) {
            if (pf_ahead * SLOT_BYTES < MK_IDLEPF) {
                const unsigned long long now = global_ns();
                if (now - pf_t >= (unsigned long long)MK_IDLEPF_NS) {
                    const char* ps;
                    unsigned pb;
                    if (walk_next(c, P, pfw, ps, pb)) {
                        prefetch_l2(ps, pb);
                        ++pf_ahead;
                    }
                    pf_t = now;
                }
            }
        }
#endif
        mbar_wait(&c.empty()[slot], ((qp / (unsigned)c.ns) & 1u) ^ 1u);
        pause_wait();
        char* dst = c.ring() + (size_t)slot * SLOT_BYTES;
#if __CUDA_ARCH__ >= 900
        bulk_load(dst, src, bytes, &c.full()[slot], pol);
#else
        warp_async_load(dst, src, bytes, &c.full()[slot], c.lane);
#endif
        ++qp;
    }
}

// ---- consumer ----
// Calls fn(first_row, n_rows, smem_chunk) on every consumer thread for each chunk of the segment (for phases whose
// work is split over columns, not rows); each warp releases the slot when it is done with it.
template <class F>
__device__ __forceinline__ void consume_all_seg(Ctx& c, const Seg& g, F&& fn) {
    const int rps = SLOT_BYTES / g.row_bytes;
    for (int r = g.r0; r < g.r1; r += rps) {
        const int n = min(rps, g.r1 - r);
        const int slot = (int)(c.q % (unsigned)c.ns);
        mbar_wait(&c.full()[slot], (c.q / (unsigned)c.ns) & 1u);
        if (!c.skip_math) fn(r, n, (const char*)(c.ring() + (size_t)slot * SLOT_BYTES));
        __syncwarp();
        if (c.lane == 0) mbar_arrive(&c.empty()[slot]);
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
