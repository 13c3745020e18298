// mk_attn.cuh -- P2 of a gated attention layer: one work item per (KV group g, query head hh of the group, sequence
// chunk ci), <= 128 per layer. An item RMS-normalises and rotates (partial RoPE) its query head and the group's key,
// appends k and v to the cache (the hh == 0 item of the last chunk), runs an online softmax over its chunk's positions
// (warps stride over positions) and stores the chunk's (max, sum, unnormalised output) as tagged values; the head's
// last chunk item polls them, merges the head's chunks and applies the sigmoid output gate.
// Waits for: the group's qkv outputs (tagged, epoch ep); the last chunk item, for the head's chunk partials (tagged).
// Every item takes the current position's k and v from shared memory (the values the cache gets), so no item reads a
// cache row another block is writing.
// Publishes: scratch().atag / amltag per chunk and scratch().aout, the merged gated output, all tagged: no grid
// barrier follows the mixer, o_proj polls aout (NOTES.md v25).
// Candidates (build options, NOTES.md v30 and v31): MK_ATT_GQA=1 (sm_90) replaces the per-head items by one item per
// (KV group, chunk) and runs the eight head merges on blocks of their own; MK_ATT_L2PF=1 prefetches the next batch's
// K/V rows into L2.
#pragma once
#include "mk_attn_math.cuh"
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// Sequence chunks per query head for pos + 1 cached positions, ceil(n / nch) positions each (at most ATT_CHUNK below
// 16 chunks). A chunk that would start past the last position has no work: its item returns at once and the merge
// counts only the `used` ones (with 30 positions per chunk none is empty at any position checked, up to 2M; the
// guard keeps other chunk sizes safe).
__device__ __forceinline__ int att_chunks(int pos) { return min(ATT_MAXCH, (pos + ATT_CHUNK) / ATT_CHUNK); }
__device__ __forceinline__ int att_items(int pos) { return NKV * QPG * att_chunks(pos); }

// A chunk's merged (max, sum, unnormalised output); threads < HD hold all three (their own dimension's output).
struct ChunkPart {
    float m, l, a;
};

// Merge the 15 warps' (m, ls, acc) through smem().acts. Threads < HD still read acts, w.wm and w.wl when they return:
// the next block barrier ends those reads (the merger's cbar in attn_item, the next item's in attn_inputs, or
// o_proj's), so nothing may write them before one.
__device__ __forceinline__ ChunkPart merge_warps(const Ctx& c, float m, float ls, const float acc[8]) {
    AttnWork& w = smem().w.attn;
    float* wacc = smem().acts;  // [15 warps][256]
    const int t = c.tid;
    if (c.lane == 0) {
        w.wm[c.warp] = m;
        w.wl[c.warp] = ls;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) wacc[c.warp * HD + c.lane * 8 + e] = acc[e];
    cbar();
    ChunkPart r{0.f, 0.f, 0.f};
    if (t < HD) {
        float M = -INFINITY;
#pragma unroll
        for (int k = 0; k < NCW; ++k) M = fmaxf(M, w.wm[k]);
        if (M == -INFINITY) M = 0.f;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int k = 0; k < NCW; ++k) {
            const float f = expf(w.wm[k] - M);
            L = fmaf(w.wl[k], f, L);
            A = fmaf(wacc[k * HD + t], f, A);
        }
        r = ChunkPart{M, L, A};
    }
    return r;
}

// Warps 0 .. nq - 1 poll query heads hh0 .. hh0 + nq - 1 (into w.q, head-major), warp nq the key's and warp nq + 1 the
// value's 256 tagged outputs; q and k are RMS-normalised (1 + w per head), v kept as is; then the q heads and k are
// rotated. A per-head item polls one query head (nq = 1), a group item the group's four.
__device__ __forceinline__ void attn_inputs(Ctx& c, const LuceMkParams& P, int l, int g, int hh0, int nq, int pos,
                                            unsigned ep) {
    AttnWork& w = smem().w.attn;
    if (c.warp < nq + 2) {
        const bool nowait = (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
        const bool is_q = c.warp < nq, is_k = c.warp == nq;
        const int d0 = c.lane * 8, off = is_q ? 2 * HD * (hh0 + c.warp) : is_k ? FK : FV;
        const u64* src = scratch(P).raw + FA_GROWS * g + off + d0;
        const float* wn = P.sblob + (long long)l * SP + (is_q ? SP_QN : SP_KN) + d0;
        float wnv[8];  // the norm weights, loaded before the wait (NOTES.md v19: a load after it is a round trip more)
#pragma unroll
        for (int e = 0; e < 8; ++e) wnv[e] = is_q || is_k ? wn[e] : 0.f;
        lead_wait_tag(src, ep, nowait, true);
        u64 wv[8];
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = ld_gpu(src + e);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = poll_tag_w(src + e, wv[e], ep, nowait);
        head_norm8_w(is_q ? w.q + c.warp * HD : is_k ? w.k : w.v, x, wnv, d0, is_q || is_k);
    }
    cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + TR_ATT_IN);
    if (c.tid < 32 * (nq + 1)) rope_pair(c.tid < 32 * nq ? w.q + (c.tid >> 5) * HD : w.k, c.tid & 31, pos);
    cbar();
}

// The head's last chunk item (ci = used - 1): every chunk item has stored its (max, sum, output) as tagged values;
// this one polls the used chunks' (its own included: they come back from L2), merges them and applies the sigmoid
// gate. No counter, so no release on the chain (NOTES.md v22: an acq_rel count waited for the SM's copy in flight).
// The 480 threads share the polls (up to 9 partials each, all in flight at once) through smem().acts. Deadlock-free
// where a block runs several items (grids under 128 blocks at long context; not yet run on a GPU): an item waits only
// for items of smaller index, which every block runs before its larger ones.
__device__ __forceinline__ void attn_merge_tagged(Ctx& c, const LuceMkParams& P, int g, int hh, int used, unsigned ep) {
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    float* pv = smem().acts;  // [chunk][HD]
    static_assert(ATT_MAXCH * HD <= 4096, "acts holds a head's chunk partials");
    const int t = c.tid;
    const bool nowait = (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
    constexpr int NPER = (ATT_MAXCH * HD + NCT - 1) / NCT;
    const int np = used * HD;
    const u64* src = &S.atag[g][hh][0][0] + t;  // element t + i * NCT of the head's [chunk][HD]
    const u64* mls = &S.amltag[g][hh][0][0] + t;
    u64 wv[NPER];
#pragma unroll
    for (int i = 0; i < NPER; ++i) wv[i] = t + i * NCT < np ? ld_gpu(src + i * NCT) : 0ull;
    const u64 wml = t < 2 * used ? ld_gpu(mls) : 0ull;
    const u64* gp = S.raw + FA_GROWS * g + 2 * HD * hh + HD + t;  // the head's sigmoid gate (qkv's tagged outputs)
    const u64 wg = t < HD ? ld_gpu(gp) : 0ull;
#pragma unroll
    for (int i = 0; i < NPER; ++i)
        if (t + i * NCT < np) pv[t + i * NCT] = poll_tag_w(src + i * NCT, wv[i], ep, nowait);
    if (t < 2 * used) {
        const float v = poll_tag_w(mls, wml, ep, nowait);
        if (t & 1) w.cl[t >> 1] = v;
        else w.cm[t >> 1] = v;
    }
    const float gate = t < HD ? poll_tag_w(gp, wg, ep, nowait) : 0.f;
    cbar();
    if (t < HD) {
        float M = -INFINITY;
        for (int k = 0; k < used; ++k) M = fmaxf(M, w.cm[k]);
        float L = 0.f, A = 0.f;
        for (int k = 0; k < used; ++k) {
            const float f = expf(w.cm[k] - M);
            L = fmaf(w.cl[k], f, L);
            A = fmaf(pv[k * HD + t], f, A);
        }
        st_tag(&S.aout[(g * QPG + hh) * HD + t], ep, (A / L) * sigm(gate));  // o_proj polls it (no barrier)
    }
}

// MK_ATT_L2PF: a warp's prefetch of the K and V rows of position p into L2, one per 128-byte line (lanes 0, 8, 16
// and 24), issued beside a batch's loads for a position of the next batch
__device__ __forceinline__ void kv_prefetch_l2(const unsigned short* kc, const unsigned short* vc, int p, int lane) {
#if MK_ATT_L2PF
    if ((lane & 7) == 0) {
        asm volatile("prefetch.global.L2 [%0];" ::"l"(kc + (long long)p * HD + lane * 8));
        asm volatile("prefetch.global.L2 [%0];" ::"l"(vc + (long long)p * HD + lane * 8));
    }
#endif
}

// This lane's 8 values of a K or V row: the current position's from shared memory (`cur`, as the cache gets them),
// any other position's from its loaded bf16 row.
__device__ __forceinline__ void kv_row8(bool current, const float* cur, uint4 loaded, float out[8]) {
    if (current) {
#pragma unroll
        for (int e = 0; e < 8; ++e) out[e] = cur[e];
    } else {
        unpack8(loaded, out);
    }
}

__device__ __forceinline__ void attn_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, unsigned ep) {
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    const int hh = item & 3, g = (item >> 2) & 1, ci = item >> 3, t = c.tid;
    const int n = pos + 1, per = (n + att_chunks(pos) - 1) / att_chunks(pos);
    const int c0 = ci * per, c1 = min(n, c0 + per);
    if (c0 >= n) return;  // empty chunk (uniform over the block)
    const long long cache_off = (long long)(fa_index(l) * NKV + g) * P.max_seq * HD;
    unsigned short* kc = (unsigned short*)P.kcache + cache_off;
    unsigned short* vc = (unsigned short*)P.vcache + cache_off;
    attn_inputs(c, P, l, g, hh, 1, pos, ep);
    if (t < HD) {  // the current position's k, v as the cache stores them (bf16)
        const unsigned short kb = f2bf(w.k[t]), vb = f2bf(w.v[t]);
        if (c1 == n && hh == 0) {
            kc[(long long)pos * HD + t] = kb;
            vc[(long long)pos * HD + t] = vb;
        }
        w.k[t] = bf2f(kb);
        w.v[t] = bf2f(vb);
    }
    cbar();
    float q[8], acc[8], m = -INFINITY, ls = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        q[e] = w.q[c.lane * 8 + e] * 0.0625f;  // 1/sqrt(256)
        acc[e] = 0.f;
    }
    // Each warp takes positions c0 + warp, + NCW, ...; ATT_BATCH of them at a time: their K and V rows are loaded
    // together (one L2 round trip per batch, not per position), their scores folded into the softmax at once.
#pragma unroll 1
    for (int p0 = c0 + c.warp; p0 < c1; p0 += NCW * ATT_BATCH) {
        uint4 kr[ATT_BATCH], vr[ATT_BATCH];
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            if (p < c1 && p != pos) {
                kr[j] = __ldcg((const uint4*)(kc + (long long)p * HD + c.lane * 8));
                vr[j] = __ldcg((const uint4*)(vc + (long long)p * HD + c.lane * 8));
            }
        }
#pragma unroll 1
        for (int j = 0; MK_ATT_L2PF && j < ATT_BATCH; ++j) {
            const int p = p0 + (ATT_BATCH + j) * NCW;  // the next batch's
            if (p < c1 && p != pos) kv_prefetch_l2(kc, vc, p, c.lane);
        }
        float sc[ATT_BATCH];
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            float kf[8];
            kv_row8(p == pos, w.k + c.lane * 8, kr[j], kf);
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) s = fmaf(q[e], kf[e], s);
            sc[j] = p < c1 ? s : -INFINITY;
        }
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) sc[j] = warp_sum(sc[j]);
        float mn = m;
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) mn = fmaxf(mn, sc[j]);
        const float corr = expf(m - mn);
        ls *= corr;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[e] *= corr;
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            if (p >= c1) break;  // (warp-uniform)
            float vf[8];
            kv_row8(p == pos, w.v + c.lane * 8, vr[j], vf);
            const float pr = expf(sc[j] - mn);
            ls += pr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = fmaf(pr, vf[e], acc[e]);
        }
        m = mn;
    }
    const ChunkPart r = merge_warps(c, m, ls, acc);
    const int used = (n + per - 1) / per;
    if (t < HD) {
        st_tag(&S.atag[g][hh][ci][t], ep, r.a);
        if (t < 2) st_tag(&S.amltag[g][hh][ci][t], ep, t == 0 ? r.m : r.l);
    }
    if (ci == used - 1) {  // (block-uniform)
        cbar();
        attn_merge_tagged(c, P, g, hh, used, ep);
    }
}

// ---- MK_ATT_GQA's group items: one per (KV group g, sequence chunk ci), serving the group's four query heads ----
// Each K/V row is loaded twice per group (by two warps, two query heads each) instead of once per query head (NOTES.md,
// candidate (c) and v30): at position 4000 the per-head items read 32 MB per layer for an 8 MB cache.
// Chunks per KV group: as many as leave eight blocks of the grid G free for the eight head merges (62 on 132 SMs), at
// most ATT_GMAXCH, at least 4 (small grids merge after their items), and no more than ATT_GCHUNK positions each fill
__device__ __forceinline__ int attg_chunks(int pos, int G) {
    return min(min(ATT_GMAXCH, max(4, (G - NKV * QPG) / NKV)), (pos + ATT_GCHUNK) / ATT_GCHUNK);
}
__device__ __forceinline__ int attg_items(int pos, int G) { return NKV * attg_chunks(pos, G); }

// Query head hh's merge, as attn_merge_tagged but for up to 64 chunks: they are polled and folded in rounds of
// ATT_MAXCH (a round's polls all in flight, through smem().acts); then the sigmoid gate is applied and aout stored for
// o_proj.
__device__ __noinline__ void attn_group_merge(Ctx& c, const LuceMkParams& P, int g, int hh, int used, unsigned ep) {
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    float* pv = smem().acts;  // [chunk of the round][HD]
    const int t = c.tid;
    const bool nowait = (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
    constexpr int NPER = (ATT_MAXCH * HD + NCT - 1) / NCT;
    const u64* gp = S.raw + FA_GROWS * g + 2 * HD * hh + HD + t;  // the head's sigmoid gate (qkv's tagged outputs)
    const u64 wg = t < HD ? ld_gpu(gp) : 0ull;
    float M = -INFINITY, L = 0.f, A = 0.f;
#pragma unroll 1
    for (int k0 = 0; k0 < used; k0 += ATT_MAXCH) {
        const int nk = min(ATT_MAXCH, used - k0), np = nk * HD;
        const u64* src = &S.atag[g][hh][k0][0] + t;  // element t + i * NCT of the round's [chunk][HD]
        const u64* mls = &S.amltag[g][hh][k0][0] + t;
        u64 wv[NPER];
#pragma unroll
        for (int i = 0; i < NPER; ++i) wv[i] = t + i * NCT < np ? ld_gpu(src + i * NCT) : 0ull;
        const u64 wml = t < 2 * nk ? ld_gpu(mls) : 0ull;
#pragma unroll
        for (int i = 0; i < NPER; ++i)
            if (t + i * NCT < np) pv[t + i * NCT] = poll_tag_w(src + i * NCT, wv[i], ep, nowait);
        if (t < 2 * nk) {
            const float v = poll_tag_w(mls, wml, ep, nowait);
            if (t & 1) w.cl[t >> 1] = v;
            else w.cm[t >> 1] = v;
        }
        cbar();
        if (t < HD) {
            float Mr = M;
            for (int k = 0; k < nk; ++k) Mr = fmaxf(Mr, w.cm[k]);
            const float corr = expf(M - Mr);  // 0 in the first round (M = -inf, L = A = 0)
            L *= corr;
            A *= corr;
            for (int k = 0; k < nk; ++k) {
                const float f = expf(w.cm[k] - Mr);
                L = fmaf(w.cl[k], f, L);
                A = fmaf(pv[k * HD + t], f, A);
            }
            M = Mr;
        }
        cbar();  // the round's pv, cm and cl are read before the next round (or the next merge) writes them
    }
    if (t < HD) {
        const float gate = poll_tag_w(gp, wg, ep, nowait);
        st_tag(&S.aout[(g * QPG + hh) * HD + t], ep, (A / L) * sigm(gate));  // o_proj polls it (no barrier)
    }
}

// Group item (g = item & 1, ci = item >> 1): the chunk's partials of the group's four query heads. It waits only for
// qkv's outputs, never for another item.
__device__ __forceinline__ void attn_group_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, unsigned ep) {
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    const int g = item & 1, ci = item >> 1, t = c.tid;
    const int nch = attg_chunks(pos, c.G), n = pos + 1, per = (n + nch - 1) / nch;
    const int c0 = ci * per, c1 = min(n, c0 + per);
    if (c0 >= n) return;  // empty chunk (uniform over the block)
    const long long cache_off = (long long)(fa_index(l) * NKV + g) * P.max_seq * HD;
    unsigned short* kc = (unsigned short*)P.kcache + cache_off;
    unsigned short* vc = (unsigned short*)P.vcache + cache_off;
    attn_inputs(c, P, l, g, 0, QPG, pos, ep);
    if (t < HD) {  // the current position's k, v as the cache stores them (bf16); the last chunk's item writes them
        const unsigned short kb = f2bf(w.k[t]), vb = f2bf(w.v[t]);
        if (c1 == n) {
            kc[(long long)pos * HD + t] = kb;
            vc[(long long)pos * HD + t] = vb;
        }
        w.k[t] = bf2f(kb);
        w.v[t] = bf2f(vb);
    }
    cbar();
    // Warps 0-13 are seven pairs: warp w scores and accumulates query heads 2 hp, 2 hp + 1 (hp = w & 1) over positions
    // c0 + (w >> 1), + 7 ATT_GBATCH, ...; ATT_GBATCH of them loaded at once. Two heads per warp hold as many registers
    // as one head and its q did in attn_item (four would spill); each K/V row is read twice, not four times.
    const int hp = c.warp & 1;
    float acc[2][8], m[2], ls[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        m[h] = -INFINITY;
        ls[h] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
    }
    const float* qs = w.q + 2 * hp * HD + c.lane * 8;  // head 2 hp + h: this lane's 8 values at qs + h * HD
#pragma unroll 1
    for (int p0 = c0 + (c.warp >> 1); c.warp < 2 * ATT_GPAIRS && p0 < c1; p0 += ATT_GPAIRS * ATT_GBATCH) {
        uint4 kr[ATT_GBATCH], vr[ATT_GBATCH];
#pragma unroll
        for (int j = 0; j < ATT_GBATCH; ++j) {
            const int p = p0 + j * ATT_GPAIRS;
            if (p < c1 && p != pos) {
                kr[j] = __ldcg((const uint4*)(kc + (long long)p * HD + c.lane * 8));
                vr[j] = __ldcg((const uint4*)(vc + (long long)p * HD + c.lane * 8));
            }
        }
#pragma unroll 1
        for (int j = 0; MK_ATT_L2PF && j < ATT_GBATCH; ++j) {
            const int p = p0 + (ATT_GBATCH + j) * ATT_GPAIRS;  // the next batch's
            if (p < c1 && p != pos) kv_prefetch_l2(kc, vc, p, c.lane);
        }
        float sc[ATT_GBATCH][2];
#pragma unroll
        for (int j = 0; j < ATT_GBATCH; ++j) {
            const int p = p0 + j * ATT_GPAIRS;
            float kf[8];
            kv_row8(p == pos, w.k + c.lane * 8, kr[j], kf);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float4 qa = *(const float4*)(qs + h * HD), qb = *(const float4*)(qs + h * HD + 4);
                float s = qa.x * kf[0];
                s = fmaf(qa.y, kf[1], s);
                s = fmaf(qa.z, kf[2], s);
                s = fmaf(qa.w, kf[3], s);
                s = fmaf(qb.x, kf[4], s);
                s = fmaf(qb.y, kf[5], s);
                s = fmaf(qb.z, kf[6], s);
                s = fmaf(qb.w, kf[7], s);
                sc[j][h] = p < c1 ? s : -INFINITY;
            }
        }
#pragma unroll
        for (int j = 0; j < ATT_GBATCH; ++j)
#pragma unroll
            for (int h = 0; h < 2; ++h) sc[j][h] = warp_sum(sc[j][h]) * 0.0625f;  // 1/sqrt(256), exact
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            float mn = m[h];
#pragma unroll
            for (int j = 0; j < ATT_GBATCH; ++j) mn = fmaxf(mn, sc[j][h]);
            const float corr = expf(m[h] - mn);
            ls[h] *= corr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[h][e] *= corr;
            m[h] = mn;
        }
#pragma unroll
        for (int j = 0; j < ATT_GBATCH; ++j) {
            const int p = p0 + j * ATT_GPAIRS;
            if (p >= c1) break;  // (warp-uniform)
            float vf[8];
            kv_row8(p == pos, w.v + c.lane * 8, vr[j], vf);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const float pr = expf(sc[j][h] - m[h]);
                ls[h] += pr;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(pr, vf[e], acc[h][e]);
            }
        }
    }
    // The chunk partials of heads h and 2 + h (h = 0, 1): the warps' (max, sum, output) go through smem().acts and
    // w.wm / w.wl, then threads < HD merge the even warps' for head h and the odd warps' for head 2 + h
    float* wacc = smem().acts;  // [14 warps][HD]
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (h) cbar();  // threads < HD have read head 0's and 2's warp partials
        if (c.warp < 2 * ATT_GPAIRS) {
            if (c.lane == 0) {
                w.wm[c.warp] = m[h];
                w.wl[c.warp] = ls[h];
            }
#pragma unroll
            for (int e = 0; e < 8; ++e) wacc[c.warp * HD + c.lane * 8 + e] = acc[h][e];
        }
        cbar();
        if (t < HD) {
#pragma unroll
            for (int side = 0; side < 2; ++side) {
                float M = -INFINITY;
#pragma unroll
                for (int k = 0; k < ATT_GPAIRS; ++k) M = fmaxf(M, w.wm[2 * k + side]);
                if (M == -INFINITY) M = 0.f;
                float L = 0.f, A = 0.f;
#pragma unroll
                for (int k = 0; k < ATT_GPAIRS; ++k) {
                    const float f = expf(w.wm[2 * k + side] - M);
                    L = fmaf(w.wl[2 * k + side], f, L);
                    A = fmaf(wacc[(2 * k + side) * HD + t], f, A);
                }
                const int hh = 2 * side + h;
                st_tag(&S.atag[g][hh][ci][t], ep, A);
                if (t < 2) st_tag(&S.amltag[g][hh][ci][t], ep, t == 0 ? M : L);
            }
        }
    }
}

// P2 of attention layer l: the block's items b, b + G, ... (group items with MK_ATT_GQA=1 on sm_90)
__device__ __forceinline__ void attn_mix(Ctx& c, const LuceMkParams& P, int l, int pos, unsigned ep) {
    if (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING) return;
#if MK_ATT_GROUP_ITEMS
    const int items = attg_items(pos, c.G);
    for (int item = c.b; item < items; item += c.G) attn_group_item(c, P, l, item, pos, ep);
    // The eight head merges, each by the block `items + m` (mod G): blocks left without an item on every grid of >= 16
    // blocks (attg_chunks), else after the block's own items. A merge waits only for chunk items, which wait for
    // nothing: no deadlock on any grid.
    const int nch = attg_chunks(pos, c.G), n = pos + 1, per = (n + nch - 1) / nch, used = (n + per - 1) / per;
#pragma unroll 1
    for (int m = 0; m < NKV * QPG; ++m) {
        if ((items + m) % c.G != c.b) continue;  // (block-uniform)
        cbar();  // the block's last item has read its warp partials in acts
        attn_group_merge(c, P, m / QPG, m % QPG, used, ep);
    }
#else
    for (int item = c.b; item < att_items(pos); item += c.G) attn_item(c, P, l, item, pos, ep);
#endif
}

}  // namespace mk
