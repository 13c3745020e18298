// mk_ring.cuh -- the weight stream. Every matvec phase's rows are split over the blocks; the producer warp copies the
// block's rows of every phase (all layers, then the LM head, for every step) into a ring of shared-memory slots and
// never waits on activations, only on free slots; the consumer warps take the chunks off the ring in the same order.
// Waits for: free slots (empty mbarriers). Publishes: full slots (bulk copy completion on the full mbarriers).
// Optional L2 prefetching ahead of the copies (sm_90, run-time tune): streamer blocks that walk the computing blocks'
// streams (tune.streamers), or the producer warp's own lanes (tune.prefetch_lead).
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
__device__ __forceinline__ Phase lm_phase(const void* embed) { return {(const char*)embed, V, 2048}; }

// A contiguous run of rows [r0, r1) of a phase that one block streams and consumes.
struct Seg {
    const char* src;  // row 0 of the phase
    int r0, r1, row_bytes;
};
__device__ __forceinline__ int split_rows(int R, int b, int G) { return (int)(((long long)R * b) / G); }
__device__ __forceinline__ Seg block_seg(const Ctx& c, const Phase& ph) {
    return {ph.src, split_rows(ph.rows, c.b, c.G), split_rows(ph.rows, c.b + 1, c.G), ph.row_bytes};
}
// Segments block c.b streams in phase k of layer l (l == NL: the LM head). A GDN layer's out_proj^T is split by work
// item: item i owns rows [16 i, 16 i + 16), and block b runs items b, b + G, ...
__device__ __forceinline__ int phase_segs(const Ctx& c, int l, int k) {
    if (l < NL && k == 1 && !is_fa(l)) return c.b < GDN_ITEMS ? (GDN_ITEMS - 1 - c.b) / c.G + 1 : 0;
    return 1;
}
__device__ __forceinline__ Seg phase_seg(const Ctx& c, const LuceMkParams& P, int l, int k, int i) {
    if (l == NL) return block_seg(c, lm_phase(P.embed));
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

// ---- L2 prefetch primitives (the streamers below, the producer's own prefetch) ----
#if __CUDA_ARCH__ >= 900
__device__ __forceinline__ void prefetch_l2(const char* src, unsigned bytes) {
    asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(src), "r"(bytes) : "memory");
}
#endif
// One 128-byte line into L2 through the load/store unit (the producer's own prefetch, tune.prefetch_lead).
__device__ __forceinline__ void prefetch_line(const char* p) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(p) : "memory");
}
// The producer's word: (launch << 32) | copies issued in this launch (the launch: sync_base, which grows every launch,
// so a word left by an earlier launch reads as 0 copies).
__device__ __forceinline__ void publish_progress(u64* word, unsigned launch, unsigned copies) {
    asm volatile("st.relaxed.gpu.global.u64 [%0], %1;" ::"l"(word), "l"(((u64)launch << 32) | copies) : "memory");
}
__device__ __forceinline__ unsigned read_progress(const u64* word, unsigned launch) {
    const u64 v = ld_gpu(word);
    return (unsigned)(v >> 32) == launch ? (unsigned)v : 0u;
}

// ---- producer ----
// Copies every chunk into the next free slot, with at most tune.inflight copies in flight (tune.inflight_lm in the LM
// head but its last LM_TAIL_ROWS rows): every queued copy delays the consumers' dependent L2 round trips (NOTES.md
// v9), and every release a consumer makes waits for the copies in flight on its SM (NOTES.md v13).
// With streamers (tune.streamers > 0) it also publishes how many copies it has issued (`progress`: its block's word,
// one per 128-byte line).
// With tune.prefetch_lead = k > 0 (sm_90) the whole warp runs the loop: lane 0 copies, and after each copy the 32
// lanes prefetch the lines of the chunk k ahead into L2 (prefetch.global.L2, not the TMA unit), so that its copy hits
// L2; lanes 1-31 otherwise return at once.
__device__ void run_producer(const Ctx& c, const LuceMkParams& P, u64* progress) {
#if __CUDA_ARCH__ >= 900
    const unsigned ahead = (unsigned)P.tune.prefetch_lead;
    if (c.lane != 0 && ahead == 0) return;
    const bool copier = c.lane == 0;  // lane 0 waits and copies; with prefetch_lead the others only prefetch
    const uint64_t pol = evict_first_policy();
    Walk wp;  // `ahead` chunks ahead of the copies (the first `ahead` chunks are copied at once: not prefetched)
    const char* psrc;
    unsigned pbytes;
    bool more = true;
    for (unsigned i = 0; i < ahead && more; ++i) more = walk_next(c, P, wp, psrc, pbytes);
#else
    const bool copier = true;  // the whole warp copies (cp.async per lane)
#endif
    const unsigned ns = (unsigned)c.ns, pause_mask = (unsigned)P.tune.pause_mask;
    const unsigned cap_layers = (unsigned)P.tune.inflight, cap_lm = (unsigned)P.tune.inflight_lm;
    const int lm_end = split_rows(V, c.b + 1, c.G);
    Walk w;
    const char* src;
    unsigned bytes;
    for (unsigned qp = 0; walk_next(c, P, w, src, bytes); ++qp) {
        const unsigned slot = qp % ns;
        // wait until copy qp - cap has landed (its slot is not re-armed before copy qp - cap + ns > qp, so its full
        // barrier still shows that phase); cap 0 or >= ns: no cap beyond the ring
        const unsigned cap = w.l == NL && lm_end - w.r > LM_TAIL_ROWS ? cap_lm : cap_layers;
        if (copier) {
            if (cap > 0 && cap < ns && qp >= cap) {
                const unsigned q0 = qp - cap;
                mbar_wait(&smem().full[q0 % ns], (q0 / ns) & 1u);
            }
            mbar_wait(&smem().empty[slot], ((qp / ns) & 1u) ^ 1u);
            pause_wait(pause_mask);
        }
        char* dst = c.ring() + (size_t)slot * SLOT_BYTES;
#if __CUDA_ARCH__ >= 900
        if (copier) {
            bulk_load(dst, src, bytes, &smem().full[slot], pol);
            if (progress) publish_progress(progress, P.sync_base, qp + 1);
        }
        if (ahead) {
            __syncwarp();  // the prefetching lanes follow lane 0's copies, never run ahead of them
            if (more && (more = walk_next(c, P, wp, psrc, pbytes)))
                for (unsigned off = (unsigned)c.lane * 128u; off < pbytes; off += 32u * 128u) prefetch_line(psrc + off);
        }
#else
        warp_async_load(dst, src, bytes, &smem().full[slot], c.lane);
#endif
    }
}

// ---- streamers (tune.streamers > 0, sm_90; cuda/NOTES.md, "v15") ----
// The last tune.streamers blocks of the grid compute nothing. A release waits for the bulk copies in flight of its own
// SM (NOTES.md, v13), so every computing SM pays for its own HBM stream at every grid barrier; the streamers take the
// HBM side off them. Each serves a set of computing blocks: it walks each one's chunk stream as its producer does and
// prefetches the chunks into L2 up to tune.stream_lead chunks ahead of the copies that producer has issued, so the
// producers' copies hit L2 and land sooner. Prefetches are hints: nothing waits for them and nothing computed depends
// on them (but the launch ends when they have walked their blocks' streams: one that falls behind skips the chunks
// already copied). The streamers take no part in the grid barriers. The prefetched lines keep L2's normal priority
// (the copies that read them are evict-first), and stream_lead x computing blocks x 32 KB should stay well inside L2
// (16 MB at lead 4 on 128 blocks; the H200's L2 holds 50 MB).
// Streamer block c.b (>= c.G, the computing blocks) serves computing blocks c.b - c.G + S * j: warp w serves j = w and
// j = w + 16 (the host asks STREAMED_PER_STREAMER x S >= G), its lanes in step. Per chunk: one bulk prefetch from lane
// 0, or with tune.stream_lines the chunk's 128-byte lines from all 32 lanes (prefetch.global.L2, 8 per lane for 32 KB),
// in case one SM's TMA unit cannot request lines as fast as the stream needs (experiments/l2_streamers.cu measures
// both).
struct Served {
    Ctx t;                // the served block's view: its walk is its producer's
    Walk w;
    unsigned qs, issued;  // chunks walked; the producer's copies issued, as last read
    bool on;              // chunks left
};
// Moves served block v on by one chunk if it may (fewer than `lead` ahead of its producer's copies): true if it did.
__device__ __forceinline__ bool stream_step(Served& v, const LuceMkParams& P, const u64* progress, unsigned lead,
                                            bool lines, int lane) {
#if __CUDA_ARCH__ >= 900
    if (v.qs >= v.issued + lead || (v.qs & 7u) == 0) {  // (lane 0 reads, so that the warp stays in step)
        const unsigned x = lane == 0 ? read_progress(progress + PROGRESS_STRIDE * v.t.b, P.sync_base) : 0u;
        v.issued = __shfl_sync(0xffffffffu, x, 0);
    }
    if (v.qs >= v.issued + lead) return false;
    const char* src;
    unsigned bytes;
    if (!walk_next(v.t, P, v.w, src, bytes)) {
        v.on = false;
        return true;
    }
    if (v.qs >= v.issued) {  // (a chunk its producer has copied already is too late to help)
        if (lines) {
            for (unsigned off = (unsigned)lane * 128u; off < bytes; off += 32u * 128u) prefetch_line(src + off);
        } else if (lane == 0) {
            prefetch_l2(src, bytes);
        }
    }
    ++v.qs;
#else
    v.on = false;  // (no bulk or line prefetch here: a library without sm_90 code leaves the streamers idle)
#endif
    return true;
}
__device__ void run_streamer(const Ctx& c, const LuceMkParams& P, const u64* progress) {
    const int S = (int)gridDim.x - c.G, k = c.b - c.G;
    const unsigned lead = (unsigned)P.tune.stream_lead;
    const bool lines = P.tune.stream_lines != 0;
    Served a{c, Walk(), 0u, 0u, false}, b{c, Walk(), 0u, 0u, false};
    a.t.b = k + S * c.warp;
    b.t.b = k + S * (c.warp + NT / 32);
    a.on = a.t.b < c.G;
    b.on = b.t.b < c.G;
    unsigned long long t0 = 0;
    unsigned idle = 0;
    while (a.on || b.on) {
        bool moved = false;
        if (a.on) moved = stream_step(a, P, progress, lead, lines, c.lane);
        if (b.on) moved = stream_step(b, P, progress, lead, lines, c.lane) || moved;
        if (moved) {
            idle = 0;
            continue;
        }
        if (idle++ == 0) t0 = global_ns();
        else if ((idle & 0xfffu) == 0) spin_check(t0);  // a producer that stopped for MK_SPIN_LIMIT_NS: trap
        __nanosleep(256);
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
