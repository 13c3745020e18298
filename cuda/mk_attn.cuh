// mk_attn.cuh -- P2 of a gated attention layer: one work item per (KV group g, query head hh of the group, sequence
// chunk ci), <= 128 per layer. An item RMS-normalises and rotates (partial RoPE) its query head and the group's key,
// appends k and v to the cache (the hh == 0 item of the last chunk), runs an online softmax over its chunk's positions
// (warps stride over positions) and publishes the chunk's (unnormalised output, max, sum); the chunk-0 item of each
// query head merges the head's chunks and applies the sigmoid output gate.
// Waits for: the group's qkv outputs (tagged, epoch ep); the chunk-0 item, for the head's other chunks (tagged). Every
// item takes the current position's k and v from shared memory (the values the cache gets), so no item reads a cache
// row another block is writing.
// Publishes: scratch().apart per chunk (tagged); scratch().aout, the merged gated output (tagged).
#pragma once
#include "mk_attn_math.cuh"
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// Sequence chunks per query head for pos + 1 cached positions, ceil(n / nch) positions each. The last chunks can be
// empty (e.g. n = 257: 16 chunks of 17); their items return at once and the merge skips them.
__device__ __forceinline__ int att_chunks(int pos) { return min(ATT_MAXCH, (pos + ATT_CHUNK) / ATT_CHUNK); }
__device__ __forceinline__ int att_items(int pos) { return NKV * QPG * att_chunks(pos); }

// Merge the 15 warps' (m, ls, acc) through smem().acts into the chunk's w.po (unnormalised output), w.pm, w.pl.
// Ends with a block barrier.
__device__ __forceinline__ void merge_warps(const Ctx& c, float m, float ls, const float acc[8]) {
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
        w.po[t] = A;
        if (t == 0) {
            w.pm = M;
            w.pl = L;
        }
    }
    cbar();
}

// Warps 0-2 poll the query head's, the key's and the value's 256 tagged outputs; q and k are RMS-normalised
// (1 + w per head), v kept as is; then q and k are rotated.
__device__ __forceinline__ void attn_inputs(Ctx& c, const LuceMkParams& P, int l, int g, int hh, int pos, unsigned ep) {
    AttnWork& w = smem().w.attn;
    if (c.warp < 3) {
        const bool nowait = no_waits(P);
        const int d0 = c.lane * 8, off = c.warp == 0 ? 2 * HD * hh : c.warp == 1 ? FK : FV;
        const u64* src = scratch(P).raw + FA_GROWS * g + off + d0;
        lead_wait_tag(src, ep, nowait, true);
        u64 wv[8];
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = ld_gpu(src + e);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = poll_tag_w(src + e, wv[e], ep, nowait);
        const float* wn = P.sblob + (long long)l * SP + (c.warp == 0 ? SP_QN : SP_KN);
        head_norm8(c.warp == 0 ? w.q : c.warp == 1 ? w.k : w.v, x, wn, d0, c.warp < 2);
    }
    cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + TR_ATT_IN);
    if (c.tid < 64) rope_pair(c.tid < 32 ? w.q : w.k, c.tid & 31, pos);
    cbar();
}

// The chunk-0 item of query head (g, hh): merge its own chunk (smem) with chunks 1 .. used - 1 (tagged, polled),
// apply the sigmoid gate, publish aout (tagged ep).
__device__ __forceinline__ void attn_merge_head(Ctx& c, const LuceMkParams& P, int g, int hh, int used, unsigned ep) {
    constexpr int B = 4;  // chunks whose values a thread loads at once (more spill)
    AttnWork& w = smem().w.attn;
    Scratch& S = scratch(P);
    const int t = c.tid;
    const bool nowait = no_waits(P);
    u64 gw = 0, aw[B];
    if (t < HD) {
        gw = ld_gpu(S.raw + FA_GROWS * g + 2 * HD * hh + HD + t);
#pragma unroll
        for (int k = 0; k < B; ++k)
            if (1 + k < used) aw[k] = ld_gpu(&S.apart[g][1 + k][hh][t]);
    } else if (t < HD + 2 * ATT_MAXCH) {  // the chunks' (max, sum)
        const int k = (t - HD) >> 1;
        if (k >= 1 && k < used) {
            const float v = poll_tag(&S.apart[g][k][hh][HD + ((t - HD) & 1)], ep, nowait);
            if ((t - HD) & 1) w.cl[k] = v; else w.cm[k] = v;
        }
    }
    if (t == 0) {
        w.cm[0] = w.pm;
        w.cl[0] = w.pl;
    }
    cbar();
    if (t < HD) {
        float M = -INFINITY;
        for (int k = 0; k < used; ++k) M = fmaxf(M, w.cm[k]);
        float L = w.cl[0] * expf(w.cm[0] - M), A = w.po[t] * expf(w.cm[0] - M);
#pragma unroll 1
        for (int k0 = 1; k0 < used; k0 += B) {
            if (k0 > 1) {
#pragma unroll
                for (int k = 0; k < B; ++k)
                    if (k0 + k < used) aw[k] = ld_gpu(&S.apart[g][k0 + k][hh][t]);
            }
#pragma unroll
            for (int k = 0; k < B; ++k) {
                if (k0 + k < used) {
                    const float f = expf(w.cm[k0 + k] - M);
                    L = fmaf(w.cl[k0 + k], f, L);
                    A = fmaf(poll_tag_w(&S.apart[g][k0 + k][hh][t], aw[k], ep, nowait), f, A);
                }
            }
        }
        const float gate = poll_tag_w(S.raw + FA_GROWS * g + 2 * HD * hh + HD + t, gw, ep, nowait);
        st_tag(&S.aout[(g * QPG + hh) * HD + t], ep, (A / L) * sigm(gate));
    }
    cbar();
    if (t == 0) hint_add(S.acnt);  // (after the head's 256 stores were issued)
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
    attn_inputs(c, P, l, g, hh, pos, ep);
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
        float sc[ATT_BATCH];
#pragma unroll
        for (int j = 0; j < ATT_BATCH; ++j) {
            const int p = p0 + j * NCW;
            float kf[8];
            if (p == pos) {
#pragma unroll
                for (int e = 0; e < 8; ++e) kf[e] = w.k[c.lane * 8 + e];
            } else {
                unpack8(kr[j], kf);
            }
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
            if (p == pos) {
#pragma unroll
                for (int e = 0; e < 8; ++e) vf[e] = w.v[c.lane * 8 + e];
            } else {
                unpack8(vr[j], vf);
            }
            const float pr = expf(sc[j] - mn);
            ls += pr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] = fmaf(pr, vf[e], acc[e]);
        }
        m = mn;
    }
    merge_warps(c, m, ls, acc);
    if (ci > 0) {  // publish the chunk for the head's chunk-0 item
        if (t < HD) st_tag(&S.apart[g][ci][hh][t], ep, w.po[t]);
        else if (t < HD + 2) st_tag(&S.apart[g][ci][hh][t], ep, t == HD ? w.pm : w.pl);
    } else {
        attn_merge_head(c, P, g, hh, (n + per - 1) / per, ep);
    }
    cbar();  // (smem().w.attn is the next item's)
}

// P2 of attention layer l: the block's items b, b + G, ...
__device__ __forceinline__ void attn_mix(Ctx& c, const LuceMkParams& P, int l, int pos, unsigned ep) {
    if (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING) {  // no items: count the heads' aout as published all the same
        if (c.b == 0 && c.tid == 0) atomicAdd(scratch(P).acnt, (unsigned)NQH);
        return;
    }
    for (int item = c.b; item < att_items(pos); item += c.G) attn_item(c, P, l, item, pos, ep);
}

}  // namespace mk
