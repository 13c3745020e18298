// mk_attn.cuh -- P2 of a gated attention layer: one work item per (KV group g, query head hh of the group, sequence
// chunk ci), <= 128 per layer. An item RMS-normalises and rotates (partial RoPE) its query head and the group's key,
// appends k and v to the cache (the hh == 0 item of the last chunk), runs an online softmax over its chunk's positions
// (warps stride over positions) and stores the chunk's (max, sum, unnormalised output) as tagged values; the head's
// last chunk item polls them, merges the head's chunks and applies the sigmoid output gate. A head of one chunk
// (short context) skips the partials: its item applies the gate and stores the output.
// Waits for: the group's qkv outputs (tagged, epoch ep); the last chunk item, for the head's chunk partials (tagged).
// Every item takes the current position's k and v from shared memory (the values the cache gets), so no item reads a
// cache row another block is writing.
// Publishes: scratch().atag / amltag per chunk and scratch().aout, the merged gated output, all tagged: no grid
// barrier follows the mixer, o_proj polls aout (NOTES.md v25).
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

// Warps 0-2 poll the query head's, the key's and the value's 256 tagged outputs; q and k are RMS-normalised
// (1 + w per head), v kept as is; then q and k are rotated.
__device__ __forceinline__ void attn_inputs(Ctx& c, const LuceMkParams& P, int l, int g, int hh, int pos, unsigned ep) {
    AttnWork& w = smem().w.attn;
    if (c.warp < 3) {
        const bool nowait = tags_nowait(P);
        const int d0 = c.lane * 8, off = c.warp == 0 ? 2 * HD * hh : c.warp == 1 ? FK : FV;
        const u64* src = scratch(P).raw + FA_GROWS * g + off + d0;
        const float* wn = P.sblob + (long long)l * SP + (c.warp == 0 ? SP_QN : SP_KN) + d0;
        float wnv[8];  // the norm weights, loaded before the wait (NOTES.md v19: a load after it is a round trip more)
#pragma unroll
        for (int e = 0; e < 8; ++e) wnv[e] = c.warp < 2 ? wn[e] : 0.f;
        lead_wait_tag(src, ep, nowait, true);
        u64 wv[8];
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = ld_gpu(src + e);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = poll_tag_w(src + e, wv[e], ep, nowait);
        head_norm8_w(c.warp == 0 ? w.q : c.warp == 1 ? w.k : w.v, x, wnv, d0, c.warp < 2);
    }
    cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + TR_ATT_IN);
    if (c.tid < 64) rope_pair(c.tid < 32 ? w.q : w.k, c.tid & 31, pos);
    cbar();
}

// The query head's sigmoid gate among the group's tagged qkv outputs (the HD values after its q).
__device__ __forceinline__ const u64* gate_tags(const Scratch& S, int g, int hh) {
    return S.raw + FA_GROWS * g + 2 * HD * hh + HD;
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
    const bool nowait = tags_nowait(P);
    constexpr int NPER = (ATT_MAXCH * HD + NCT - 1) / NCT;
    const int np = used * HD;
    const u64* src = &S.atag[g][hh][0][0] + t;  // element t + i * NCT of the head's [chunk][HD]
    const u64* mls = &S.amltag[g][hh][0][0] + t;
    u64 wv[NPER];
#pragma unroll
    for (int i = 0; i < NPER; ++i) wv[i] = t + i * NCT < np ? ld_gpu(src + i * NCT) : 0ull;
    const u64 wml = t < 2 * used ? ld_gpu(mls) : 0ull;
    const u64* gp = gate_tags(S, g, hh) + t;
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

// A head with one chunk (pos + 1 <= ATT_CHUNK): its item stores the gated output itself. The same arithmetic as
// attn_merge_tagged with used == 1 (max m, factor expf(0) = 1), so the same bits (NOTES.md v34); the gate's load is
// issued before the warps' merge, so its round trip overlaps it.
__device__ __forceinline__ void attn_single(Ctx& c, const LuceMkParams& P, int g, int hh, float m, float ls,
                                            const float acc[8], unsigned ep) {
    Scratch& S = scratch(P);
    const int t = c.tid;
    const bool nowait = tags_nowait(P);
    const u64* gp = gate_tags(S, g, hh) + t;
    const u64 wg = t < HD ? ld_gpu(gp) : 0ull;
    const ChunkPart r = merge_warps(c, m, ls, acc);
    if (t < HD) st_tag(&S.aout[(g * QPG + hh) * HD + t], ep, (r.a / r.l) * sigm(poll_tag_w(gp, wg, ep, nowait)));
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

// This lane's part of the K or V rows of a warp's batch: positions p0, p0 + NCW, ... below c1, except the current
// position `pos` (its k and v come from shared memory: another item of this step writes that cache row).
__device__ __forceinline__ void kv_load_rows(uint4 r[ATT_BATCH], const unsigned short* cache, int p0, int c1, int pos,
                                             int lane) {
#pragma unroll
    for (int j = 0; j < ATT_BATCH; ++j) {
        const int p = p0 + j * NCW;
        if (p < c1 && p != pos) r[j] = __ldcg((const uint4*)(cache + (long long)p * HD + lane * 8));
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
    // The warp's first batch of K/V rows is loaded before the wait for q, k, v: the rows of earlier positions do not
    // depend on this step, so their round trip overlaps the wait instead of following it (NOTES.md v32). Later
    // batches are loaded while the batch before them is folded: the K rows once its scores are taken, the V rows once
    // its outputs are.
    uint4 kr[ATT_BATCH], vr[ATT_BATCH];
    kv_load_rows(kr, kc, c0 + c.warp, c1, pos, c.lane);
    kv_load_rows(vr, vc, c0 + c.warp, c1, pos, c.lane);
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
        kv_load_rows(kr, kc, p0 + NCW * ATT_BATCH, c1, pos, c.lane);  // the next batch's K rows
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
        kv_load_rows(vr, vc, p0 + NCW * ATT_BATCH, c1, pos, c.lane);  // and its V rows
        m = mn;
    }
    const int used = (n + per - 1) / per;
    if (used == 1) {  // (block-uniform) the head's only chunk: no partials to store and poll back, no merge hop
        attn_single(c, P, g, hh, m, ls, acc, ep);
        return;
    }
    const ChunkPart r = merge_warps(c, m, ls, acc);
    if (t < HD) {
        st_tag(&S.atag[g][hh][ci][t], ep, r.a);
        if (t < 2) st_tag(&S.amltag[g][hh][ci][t], ep, t == 0 ? r.m : r.l);
    }
    if (ci == used - 1) {  // (block-uniform)
        cbar();
        attn_merge_tagged(c, P, g, hh, used, ep);
    }
}

// P2 of attention layer l: the block's items b, b + G, ...
__device__ __forceinline__ void attn_mix(Ctx& c, const LuceMkParams& P, int l, int pos, unsigned ep) {
    if (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING) return;
    for (int item = c.b; item < att_items(pos); item += c.G) attn_item(c, P, l, item, pos, ep);
}

}  // namespace mk
