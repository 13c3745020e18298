// mk_norm.cuh -- the residual stream and the RMSNorm prologue of every matvec phase.
//
// Residual stream: sub-layer j (= 2 * layer + {0: mixer, 1: MLP}, 48 per step) reads x_j and writes
// x_{j+1} = x_j + (its output) into scratch().x[(j + 1) % 2], every value tagged with sub_epoch(j + 1). A split-K
// output (the GDN items' out_proj, the blocks' down_proj) is reduced without atomics or barriers: every contributor
// stores its 1024 partials, tagged, into scratch().part[i][contributor]; the block owning output rows [r0, r1) polls
// the partials of its rows, sums them in a fixed order (the result is deterministic) and stores x_{j+1} of its rows.
// Readers poll x_{j+1} value by value. (x_{j+1} can reuse x_{j-1}'s buffer and the partials their slots: a value of
// sub-layer j + 1 depends on every block having read x_j in full, hence x_{j-1}'s reducers' and partials' readers
// are done.)
// The prologue: load x (the tagged residual, or the embedding row in layer 0), keep it in smem().x, and write
// RMSNorm(x) * (1 + w) into smem().acts for the phase's matvec.
#pragma once
#include "mk_ring.cuh"

namespace mk {

__device__ __forceinline__ Scratch& scratch(const LuceMkParams& P) { return *reinterpret_cast<Scratch*>(P.scratch); }
// The residual stream's tagged buffer that sub-layer j reads (x_j).
__device__ __forceinline__ u64* xbuf(const LuceMkParams& P, int j) { return scratch(P).x[j & 1]; }
// Epoch tag of x_j and of sub-layer j's partials in step s: unique per (launch history, step, j), never 0.
__device__ __forceinline__ unsigned sub_epoch(const LuceMkParams& P, int s, int j) {
    return (P.step_base + (unsigned)s) * 64u + (unsigned)j + 1u;
}
// The x-row count (scratch().xcnt, +1 per block and sub-layer) once x_j is complete in step s: sub-layers finished
// since the scratch was zeroed, times the grid.
__device__ __forceinline__ unsigned x_count(const Ctx& c, const LuceMkParams& P, int s, int j) {
    return (unsigned)c.G * ((P.step_base + (unsigned)s) * (2u * NL) + (unsigned)j);
}
// Debug timing modes skip every wait on another block's values.
__device__ __forceinline__ bool no_waits(const LuceMkParams& P) {
    return (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
}

// Rows [r0, r1) of the hidden state this block owns (reduces, or writes as o_proj rows).
__device__ __forceinline__ int own_r0(const Ctx& c) { return split_rows(H, c.b, c.G); }
__device__ __forceinline__ int own_r1(const Ctx& c) { return split_rows(H, c.b + 1, c.G); }

// This block's rows of x_{j+1} are stored: count them (every block once per sub-layer, after its stores).
__device__ __forceinline__ void publish_rows_done(const Ctx& c, const LuceMkParams& P) {
    cbar();
    if (c.tid == 0) hint_add(scratch(P).xcnt);
}

// Contributor `who`'s split-K partial (this thread's outputs tid, tid + NCT, tid + 2 NCT in acc) into scratch().part
// (coalesced: a warp stores 32 consecutive outputs).
__device__ __forceinline__ void publish_partial(const Ctx& c, const LuceMkParams& P, int who, const float acc[3],
                                                unsigned ep) {
    u64* part = scratch(P).part[who];
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (c.tid + k * NCT < H) st_tag(part + c.tid + k * NCT, ep, acc[k]);
}

// The owned rows of x_{j+1} = x_j + the sum of the n contributors' partials (tagged ep_part), stored tagged ep_out.
// Each thread polls one contributor's values of 4 owned rows (32 bytes), all at once, into smem().acts; then one warp
// per row sums the contributors in a fixed order (the result is deterministic). x_j is smem().x. `nowait` (debug
// timing modes): no polling.
__device__ __forceinline__ void reduce_rows(const Ctx& c, const LuceMkParams& P, int n, unsigned ep_part, u64* xout,
                                            unsigned ep_out, bool nowait) {
    constexpr int R = 4;  // rows per thread (more spill)
    const int r0 = own_r0(c), nr = own_r1(c) - r0, groups = (nr + R - 1) / R;
    float* red = smem().acts;  // [row][contributor]
    for (int i = c.tid; i < groups * n; i += NCT) {
        const int who = i % n, a = (i / n) * R;
        const u64* src = scratch(P).part[who] + r0 + a;
        u64 w[R];
#pragma unroll
        for (int k = 0; k < R; ++k)
            if (a + k < nr) w[k] = ld_gpu(src + k);
#pragma unroll
        for (int k = 0; k < R; ++k)
            if (a + k < nr) red[(a + k) * n + who] = poll_tag_w(src + k, w[k], ep_part, nowait);
    }
    cbar();
    for (int k = c.warp; k < nr; k += NCW) {
        float sum = 0.f;
        for (int who = c.lane; who < n; who += 32) sum += red[k * n + who];
        sum = warp_sum(sum);
        if (c.lane == 0) st_tag(xout + r0 + k, ep_out, smem().x[r0 + k] + sum);
    }
    publish_rows_done(c, P);
}

// Sum over the consumer threads. Ends with a barrier, so smem().red can be reused at once.
__device__ __forceinline__ float block_sum(const Ctx& c, float v) {
    float* red = smem().red;
    v = warp_sum(v);
    if (c.lane == 0) red[c.warp] = v;
    cbar();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < NCW; ++i) t += red[i];
    cbar();
    return t;
}

// acts <- RMSNorm(x) * w1p for this thread's values v[k] = x[tid + k * NCT] (ss: their partial sum of squares).
__device__ __forceinline__ void norm_to_acts(Ctx& c, const float v[3], float ss, const float* w1p) {
    ss = block_sum(c, ss);
    pause_set(PAUSE_X_LOAD, false);  // (every x load has returned)
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const int i = c.tid + k * NCT;
        if (i < H) smem().acts[i] = v[k] * r * w1p[i];
    }
    cbar();
}

// smem().x <- x (the tagged residual xg of epoch ep, once the x-row count reached `count`; or the bf16 embedding row
// `emb` when set); smem().acts <- RMSNorm(x) * w1p.
__device__ __forceinline__ void load_x_norm(Ctx& c, const LuceMkParams& P, const u64* xg, unsigned ep, unsigned count,
                                            const unsigned short* emb, const float* w1p, bool nowait) {
    float v[3], ss = 0.f;
    pause_set(PAUSE_X_LOAD, true);
    if (!emb) hint_wait(scratch(P).xcnt, count, nowait);
    u64 w[3];
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (!emb && c.tid + k * NCT < H) w[k] = ld_gpu(xg + c.tid + k * NCT);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const int i = c.tid + k * NCT;
        v[k] = 0.f;
        if (i < H) v[k] = emb ? bf2f(emb[i]) : poll_tag_w(xg + i, w[k], ep, nowait);
        ss = fmaf(v[k], v[k], ss);
    }
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (c.tid + k * NCT < H) smem().x[c.tid + k * NCT] = v[k];
    norm_to_acts(c, v, ss, w1p);
}

}  // namespace mk
