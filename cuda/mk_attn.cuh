// mk_attn.cuh -- P2 of a gated attention layer: one work item per (KV group g, set of ATT_HEADS query heads of the
// group, sequence chunk ci), 128 per layer at most; with MK_ATT_HEADS = 2 each K/V row is read twice per layer, not
// once per query head. An item RMS-normalises and rotates (partial RoPE) its query heads and the group's key, appends
// k and v to the cache (the first head set's item of the last chunk), runs an online softmax per head over its
// chunk's positions (warps stride over positions) and writes the chunk's (max, sum, unnormalised output) per head; the
// last item of a head set's chunks to finish merges them and applies the sigmoid output gate (with two heads, the
// last two to finish merge one head each, once every chunk is in).
// Waits for: the group's qkv outputs (tagged, epoch ep). Every item takes the current position's k and v from shared
// memory (the values the cache gets), so no item reads a cache row another block is writing.
// Publishes: scratch().apart / aml per chunk; scratch().aout, the merged gated output (complete after the mixer
// barrier); scratch().done counts the finished chunk items (reset after the barrier).
#pragma once
#include "mk_attn_math.cuh"
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// Sequence chunks per item's heads for pos + 1 cached positions, ceil(n / nch) positions each. The last chunks can be
// empty (e.g. n = 257: 16 chunks of 17); their items return at once and the merge skips them.
__device__ __forceinline__ int att_chunks(int pos) { return min(ATT_MAXCH, (pos + ATT_CHUNK) / ATT_CHUNK); }
__device__ __forceinline__ int att_items(int pos) { return NKV * (QPG / ATT_HEADS) * att_chunks(pos); }
// The counter of the finished chunk items of the head set that starts at query head hh0 of group g.
__device__ __forceinline__ unsigned* att_done(Scratch& S, int g, int hh0) { return &S.done[g * QPG + hh0][0]; }

// Merge the 15 warps' (m, ls, acc) through smem().acts: threads < 256 write the chunk's unnormalised output to
// part[t], thread 0 (max, sum) to ml[0..1]. Ends with a block barrier.
__device__ __forceinline__ void merge_warps(const Ctx& c, float m, float ls, const float acc[8], float* part, float* ml) {
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
    if (t < HD) {
        float M = -INFINITY;
#pragma unroll
        for (int r = 0; r < NCW; ++r) M = fmaxf(M, w.wm[r]);
        if (M == -INFINITY) M = 0.f;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int r = 0; r < NCW; ++r) {
            const float f = expf(w.wm[r] - M);
            L = fmaf(w.wl[r], f, L);
            A = fmaf(wacc[r * HD + t], f, A);
        }
        part[t] = A;
        if (t == 0) {
            ml[0] = M;
            ml[1] = L;
        }
    }
    cbar();
}

// Warps 0 .. ATT_HEADS - 1 poll the item's query heads' (hh0, ...) 256 tagged outputs each, the next two warps the
// key's and the value's; q and k are RMS-normalised (1 + w per head), v kept as is; then q and k are rotated.
__device__ __forceinline__ void attn_inputs(Ctx& c, const LuceMkParams& P, int l, int g, int hh0, int pos, unsigned ep) {
    AttnWork& w = smem().w.attn;
    constexpr int NH = ATT_HEADS;
    if (c.warp < NH + 2) {
        const bool nowait = (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
        const int d0 = c.lane * 8, off = c.warp < NH ? 2 * HD * (hh0 + c.warp) : c.warp == NH ? FK : FV;
        const u64* src = scratch(P).raw + FA_GROWS * g + off + d0;
        lead_wait_tag(src, ep, nowait, true);
        u64 wv[8];
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = ld_gpu(src + e);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = poll_tag_w(src + e, wv[e], ep, nowait);
        const float* wn = P.sblob + (long long)l * SP + (c.warp < NH ? SP_QN : SP_KN);
        head_norm8(c.warp < NH ? w.q[c.warp] : c.warp == NH ? w.k : w.v, x, wn, d0, c.warp <= NH);
    }
    cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + TR_ATT_IN);
    if (c.tid < 32 * (NH + 1)) rope_pair(c.tid < 32 * NH ? w.q[c.tid >> 5] : w.k, c.tid & 31, pos);
    cbar();
}

// Query head (g, hh): merge the `used` chunks' partials (up to ATT_MERGE_BATCH loads in flight per thread), apply the
// sigmoid gate, store aout. With more heads per item it ends with a block barrier (the next merge reuses w.cm, w.cl).
constexpr int ATT_MERGE_BATCH = 16;
__device__ __forceinline__ void attn_merge_head(Ctx& c, const LuceMkParams& P, int g, int hh, int used, unsigned ep) {
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    const int t = c.tid;
    const bool nowait = (P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)) != 0;
    const float gate = t < HD ? poll_tag(S.raw + FA_GROWS * g + 2 * HD * hh + HD + t, ep, nowait) : 0.f;
    float av[ATT_MERGE_BATCH];
#pragma unroll
    for (int k = 0; k < ATT_MERGE_BATCH; ++k) av[k] = (t < HD && k < used) ? __ldcg(&S.apart[g][k][hh][t]) : 0.f;
    if (t < used) {
        w.cm[t] = __ldcg(&S.aml[g][t][hh][0]);
        w.cl[t] = __ldcg(&S.aml[g][t][hh][1]);
    }
    cbar();
    if (t < HD) {
        float M = -INFINITY;
        for (int k = 0; k < used; ++k) M = fmaxf(M, w.cm[k]);
        float L = 0.f, A = 0.f;
#pragma unroll 1
        for (int k0 = 0;;) {
#pragma unroll
            for (int k = 0; k < ATT_MERGE_BATCH; ++k) {
                const float f = k0 + k < used ? expf(w.cm[k0 + k] - M) : 0.f;
                L = fmaf(k0 + k < used ? w.cl[k0 + k] : 0.f, f, L);
                A = fmaf(av[k], f, A);
            }
            k0 += ATT_MERGE_BATCH;
            if (ATT_MAXCH <= ATT_MERGE_BATCH || k0 >= used) break;  // (one pass with one head per item)
#pragma unroll
            for (int k = 0; k < ATT_MERGE_BATCH; ++k) av[k] = k0 + k < used ? __ldcg(&S.apart[g][k0 + k][hh][t]) : 0.f;
        }
        __stcg(&S.aout[(g * QPG + hh) * HD + t], (A / L) * sigm(gate));
    }
    if (ATT_HEADS > 1) cbar();
}

// Spin (acquire) until *cnt >= target; not inlined: its registers stay out of the items' (scalar arguments only)
__device__ __noinline__ void wait_count(const unsigned* cnt, unsigned target) {
    const unsigned long long t0 = global_ns();
    unsigned v, n = 0;
    do {
        asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(cnt) : "memory");
        if ((++n & 0xfffffu) == 0) spin_check(t0);
    } while (v < target);
}

// After an item's partials are out: the last item of its head set's chunks to finish merges them. With two heads per
// item the one that finishes r-th from last (r < 2) merges heads hh0 + r, hh0 + r + used, ...; the one with r > 0 waits
// for the last one's count first, which is safe only while every block has at most one item (items <= grid), else the
// last merges both.
__device__ __forceinline__ void attn_finish(Ctx& c, const LuceMkParams& P, int g, int hh0, int used, int pos,
                                            unsigned ep) {
    AttnWork& w = smem().w.attn;
    unsigned* done = att_done(scratch(P), g, hh0);
    if (c.tid == 0) w.order = (int)atom_add_acq_rel(done, 1u);
    cbar();
    const int r = used - 1 - *(volatile int*)&w.order;  // 0: this item finished last (block-uniform)
    if (ATT_HEADS == 1) {
        if (r == 0) attn_merge_head(c, P, g, hh0, used, ep);
        return;
    }
    const bool spread = att_items(pos) <= c.G;
    if (r < 0 || r >= (spread ? ATT_HEADS : 1)) return;  // r < 0: the counters were not reset (debug: no barriers)
    if (r > 0 && c.tid == 0 && !(P.debug_flags & (LUCE_MK_DEBUG_NO_MATH | LUCE_MK_DEBUG_NO_BARRIERS)))
        wait_count(done, (unsigned)used);
    cbar();
#pragma unroll 1
    for (int h = r; h < ATT_HEADS; h += spread ? used : 1) attn_merge_head(c, P, g, hh0 + h, used, ep);
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
    constexpr int NH = ATT_HEADS;
    constexpr int SETS = QPG / NH;  // head sets per group; item = (ci * NKV + g) * SETS + set
    const int hh0 = item % SETS * NH, g = item / SETS % NKV, ci = item / (SETS * NKV), t = c.tid;
    const int n = pos + 1, per = (n + att_chunks(pos) - 1) / att_chunks(pos);
    const int c0 = ci * per, c1 = min(n, c0 + per);
    if (c0 >= n) return;  // empty chunk (uniform over the block)
    const long long cache_off = (long long)(fa_index(l) * NKV + g) * P.max_seq * HD;
    unsigned short* kc = (unsigned short*)P.kcache + cache_off;
    unsigned short* vc = (unsigned short*)P.vcache + cache_off;
    attn_inputs(c, P, l, g, hh0, pos, ep);
    if (t < HD) {  // the current position's k, v as the cache stores them (bf16)
        const unsigned short kb = f2bf(w.k[t]), vb = f2bf(w.v[t]);
        if (c1 == n && hh0 == 0) {
            kc[(long long)pos * HD + t] = kb;
            vc[(long long)pos * HD + t] = vb;
        }
        w.k[t] = bf2f(kb);
        w.v[t] = bf2f(vb);
    }
    // q * 1/sqrt(256): one head in registers; more stay in shared memory (their values in registers beside the
    // heads' accumulators spill)
    float q0[8];
    if (NH > 1) {
        for (int i = t; i < NH * HD; i += NCT) (&w.q[0][0])[i] *= 0.0625f;
    }
    cbar();
#pragma unroll
    for (int e = 0; e < 8; ++e) q0[e] = NH > 1 ? 0.f : w.q[0][c.lane * 8 + e] * 0.0625f;
    float acc[NH][8], m[NH], ls[NH];
#pragma unroll
    for (int h = 0; h < NH; ++h) {
        m[h] = -INFINITY;
        ls[h] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[h][e] = 0.f;
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
        float sc[NH][ATT_BATCH];
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            float kf[8];
            kv_row8(p == pos, w.k + c.lane * 8, kr[j], kf);
#pragma unroll
            for (int h = 0; h < NH; ++h) {
                float qh[8];
                if (NH > 1) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) qh[e] = w.q[h][c.lane * 8 + e];
                } else {
#pragma unroll
                    for (int e = 0; e < 8; ++e) qh[e] = q0[e];
                }
                float s = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) s = fmaf(qh[e], kf[e], s);
                sc[h][j] = p < c1 ? s : -INFINITY;
            }
        }
        float mn[NH];
#pragma unroll
        for (int h = 0; h < NH; ++h) {
#pragma unroll
            for (int j = 0; j < ATT_BATCH; ++j) sc[h][j] = warp_sum(sc[h][j]);
            mn[h] = m[h];
#pragma unroll
            for (int j = 0; j < ATT_BATCH; ++j) mn[h] = fmaxf(mn[h], sc[h][j]);
            const float corr = expf(m[h] - mn[h]);
            ls[h] *= corr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[h][e] *= corr;
        }
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            if (p >= c1) break;  // (warp-uniform)
            float vf[8];
            kv_row8(p == pos, w.v + c.lane * 8, vr[j], vf);
#pragma unroll
            for (int h = 0; h < NH; ++h) {
                const float pr = expf(sc[h][j] - mn[h]);
                ls[h] += pr;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[h][e] = fmaf(pr, vf[e], acc[h][e]);
            }
        }
#pragma unroll
        for (int h = 0; h < NH; ++h) m[h] = mn[h];
    }
#pragma unroll
    for (int h = 0; h < NH; ++h) merge_warps(c, m[h], ls[h], acc[h], S.apart[g][ci][hh0 + h], S.aml[g][ci][hh0 + h]);
    attn_finish(c, P, g, hh0, (n + per - 1) / per, pos, ep);
}

// P2 of attention layer l: the block's items b, b + G, ...
__device__ __forceinline__ void attn_mix(Ctx& c, const LuceMkParams& P, int l, int pos, unsigned ep) {
    if (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING) return;
    for (int item = c.b; item < att_items(pos); item += c.G) attn_item(c, P, l, item, pos, ep);
}

}  // namespace mk
