// mk_attn.cuh -- gated full attention at decode. attn_item: one (KV head, sequence chunk) work item: q/k RMSNorm +
// partial RoPE of the 4 query heads sharing the KV head and of the key, the KV-cache append (by the chunk holding the
// current position), an online-softmax pass over the chunk's positions (warps stride over positions) and a merge of
// the 16 warps' partials into one (max, sum, acc[256]) per query head in global scratch. attn_out_act: every block's
// prologue of o_proj, merging the chunks and applying the sigmoid output gate.
#pragma once
#include "mk_matvec.cuh"

namespace mk {

// Sequence chunks per KV head for pos + 1 cached positions, ceil(n / nch) positions each. The last chunks can be
// empty (e.g. n = 513: 32 chunks of 17); their items return at once and the merge skips them.
// Row (within a KV group's 2560 qkv rows) of element i of the group's [4 q heads | k | v] = 1536 values.
__device__ __forceinline__ int qkv_group_off(int i) {
    return i < 1024 ? 512 * (i >> 8) + (i & 255) : i < 1280 ? FK + (i - 1024) : FV + (i - 1280);
}

// P1 output r read after a grid barrier (complete: no poll)
__device__ __forceinline__ float raw_at(const LuceMkParams& P, int r) {
#if MK_TAGRAW
    return tag_val(__ldcg((const u64*)(P.scratch + S_RAW) + r));
#else
    return __ldcg(P.scratch + S_RAW + r);
#endif
}

__device__ __forceinline__ int att_chunks(int pos) {
    return min(MK_ATTHEAD ? ATT_MAXCH / 2 : ATT_MAXCH, (pos + ATT_CHUNK) / ATT_CHUNK);
}
// Work items of an attention layer: (KV group, chunk), or (KV group, query head, chunk) with MK_ATTHEAD (<= 128).
__device__ __forceinline__ int att_items(int pos) { return (MK_ATTHEAD ? 2 * 4 : 2) * att_chunks(pos); }

// One warp: dst[d0 + e] <- RMSNorm(x) * w (q or k head; 8 values per lane) when `scale`, else x (v).
__device__ __forceinline__ void head_norm8(float* dst, const float x[8], const float* w, int d0, bool scale) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss = fmaf(x[e], x[e], ss);
    const float r = rsqrtf(warp_sum(ss) * (1.0f / HD) + EPS);
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[d0 + e] = scale ? bfr(x[e] * r * w[d0 + e]) : x[e];
}

// Partial RoPE of one head (first 64 dims, rotate-half pairing) for the pair (i, i + 32), i < 32, bf16 like HF.
__device__ __forceinline__ void rope_pair(float* arr, int i, int pos) {
    const float inv = 1.0f / powf(10000000.0f, (float)(2 * i) / (float)ROT);
    // angle as HF forms it (f32 product), reduced to [-pi, pi] in double, then the fast sin/cos (abs err ~1e-6)
    const double ang = (double)((float)pos * inv);
    const float red = (float)(ang - 6.283185307179586 * rint(ang * 0.15915494309189535));
    float sn, cs;
    __sincosf(red, &sn, &cs);
    cs = bfr(cs);
    sn = bfr(sn);
    const float a = arr[i], b = arr[i + 32];
    arr[i] = bfr(bfr(a * cs) - bfr(b * sn));
    arr[i + 32] = bfr(bfr(b * cs) + bfr(a * sn));
}

// Online softmax: fold one position (score s, this lane's 8 values v) into the warp's (m, ls, acc).
__device__ __forceinline__ void softmax_step(float s, const float v[8], float& m, float& ls, float acc[8]) {
    const float mn = fmaxf(m, s);
    const float corr = expf(m - mn), pr = expf(s - mn);
    ls = fmaf(ls, corr, pr);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[e] = fmaf(acc[e], corr, pr * v[e]);
    m = mn;
}

// Merge the 15 warps' (m, ls, acc) of one query head through the activation area: threads < 256 write the chunk's
// unnormalised output to part[t], thread 0 (max, sum) to ml[0..1]. Ends with a block barrier.
__device__ __forceinline__ void merge_warps(const Ctx& c, float m, float ls, const float acc[8], float* part, float* ml) {
    float* wm = c.misc() + 1536;  // [16 warps]
    float* wl = c.misc() + 1552;  // [16 warps]
    const int t = c.tid;
    if (c.lane == 0) {
        wm[c.warp] = m;
        wl[c.warp] = ls;
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) c.acts()[c.warp * 256 + c.lane * 8 + e] = acc[e];
    cbar();
    if (t < 256) {
        float M = -INFINITY;
#pragma unroll
        for (int w = 0; w < NCW; ++w) M = fmaxf(M, wm[w]);
        if (M == -INFINITY) M = 0.f;
        float L = 0.f, A = 0.f;
#pragma unroll
        for (int w = 0; w < NCW; ++w) {
            const float f = expf(wm[w] - M);
            L = fmaf(wl[w], f, L);
            A = fmaf(c.acts()[w * 256 + t], f, A);
        }
        part[t] = A;
        if (t == 0) {
            ml[0] = M;
            ml[1] = L;
        }
    }
    cbar();
}

// ep: epoch tag of this layer's qkv outputs (MK_TAGRAW: polled, the item waits only for its group's rows).
// Inlined unless MK_NOINLINE (see mk_config.cuh).
MK_ITEM_FN void attn_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, unsigned ep) {
    const int g = item & 1, ci = item >> 1, t = c.tid;
    const int n = pos + 1, nch = att_chunks(pos);
    const int per = (n + nch - 1) / nch;
    const int c0 = ci * per, c1 = min(n, c0 + per);
    if (c0 >= n) return;  // empty chunk (uniform over the block)
#if MK_HEADCNT && !MK_TAGRAW
    if (!(P.debug_flags & 4)) wait_geq(row_counter(P, 16 + g), FA_GROUP_ROWS);
    else cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + 10);
#endif
    float* qsm = c.misc();          // [4][256]
    float* ksm = c.misc() + 1024;   // [256]
    float* vsm = c.misc() + 1280;   // [256]
    const float* sp = P.sblob + (long long)l * SP;
    const int fi = fa_index(l);
    unsigned short* kc = (unsigned short*)P.kcache + ((long long)(fi * NKV + g) * P.max_seq) * HD;
    unsigned short* vc = (unsigned short*)P.vcache + ((long long)(fi * NKV + g) * P.max_seq) * HD;

#if MK_TAGRAW
    // the group's 1536 q, k, v values -> qsm | ksm | vsm (contiguous), every load in flight at once
    {
        const bool nowait = (P.debug_flags & 5) != 0;
        const u64* gt = (const u64*)(P.scratch + S_RAW) + FA_GROWS * g;
        lead_wait_tag(gt + qkv_group_off(t), ep, nowait, true);
        u64 wv[4];
#pragma unroll
        for (int k = 0; k < 4; ++k)
            if (t + k * NCT < 1536) wv[k] = ld_gpu(gt + qkv_group_off(t + k * NCT));
#pragma unroll
        for (int k = 0; k < 4; ++k)
            if (t + k * NCT < 1536) qsm[t + k * NCT] = poll_tag_w(gt + qkv_group_off(t + k * NCT), wv[k], ep, nowait);
    }
    cbar();
    // q heads 4g..4g+3 (warps 0-3) and k (warp 4): RMSNorm(1+w) per head, in place; v as is.
    if (c.warp < 5) {
        const int d0 = c.lane * 8;
        float* dst = c.warp < 4 ? qsm + 256 * c.warp : ksm;
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = dst[d0 + e];
        head_norm8(dst, x, sp + (c.warp < 4 ? SP_QN : SP_KN), d0, true);
    }
#else
    // q heads 4g..4g+3 (warps 0-3) and k (warp 4): RMSNorm(1+w) per head; v (warp 5) as is.
    (void)ep;
    const float* raw = P.scratch + S_RAW;
    if (c.warp < 6) {
        const int d0 = c.lane * 8;
        const float* src = raw + FA_GROWS * g + (c.warp < 4 ? 512 * c.warp : c.warp == 4 ? FK : FV);
        float x[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = __ldcg(src + d0 + e);
        head_norm8(c.warp < 4 ? qsm + 256 * c.warp : c.warp == 4 ? ksm : vsm, x, sp + (c.warp < 4 ? SP_QN : SP_KN), d0,
                   c.warp < 5);
    }
#endif
    cbar();
    if (t < 160) rope_pair(t < 128 ? qsm + 256 * (t >> 5) : ksm, t & 31, pos);  // the 4 query heads and the key
    cbar();
    if (c1 == n) {  // this chunk holds the current position: append k, v to the cache
        if (t < 256) {
            kc[(long long)pos * HD + t] = f2bf(ksm[t]);
            vc[(long long)pos * HD + t] = f2bf(vsm[t]);
        }
    }
    cbar();

    // query heads one pass each (K/V re-read from L2): keeps the register footprint small
    float* part = P.scratch + S_APART + ((g * ATT_MAXCH + ci) * 4) * 256;
    float* ml = P.scratch + S_AML + ((g * ATT_MAXCH + ci) * 4) * 2;
#pragma unroll 1
    for (int hh = 0; hh < 4; ++hh) {
        float q[8], acc[8], m = -INFINITY, ls = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            q[e] = qsm[256 * hh + c.lane * 8 + e] * 0.0625f;  // 1/sqrt(256)
            acc[e] = 0.f;
        }
#pragma unroll 1
        for (int p = c0 + c.warp; p < c1; p += NCW) {
            const uint4 kr = __ldcg((const uint4*)(kc + (long long)p * HD + c.lane * 8));
            const uint4 vr = __ldcg((const uint4*)(vc + (long long)p * HD + c.lane * 8));
            float f[8];
            unpack8(kr, f);
            float s = 0.f;
#pragma unroll
            for (int e = 0; e < 8; ++e) s = fmaf(q[e], f[e], s);
            unpack8(vr, f);
            softmax_step(warp_sum(s), f, m, ls, acc);
        }
        merge_warps(c, m, ls, acc, part + hh * 256, ml + hh * 2);
    }
}

#if MK_ATTHEAD
// MK_ATTHEAD: one (KV group g, query head hh of the group, chunk ci) item: one pass over the chunk's positions instead
// of four (the item chain is ~4x shorter; 4x the items). Every item normalises and rotates its q head and the key
// itself; the hh == 0 item appends k, v to the cache, and every item takes the current position's k, v from shared
// memory (the value the cache gets), so no item reads a cache row another block is writing.
// ep: epoch tag of this layer's qkv outputs (MK_TAGRAW: the item polls its q head, k, v and gate values themselves).
MK_ITEM_FN void attn_head_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, unsigned ep) {
    const int hh = item & 3, g = (item >> 2) & 1, ci = item >> 3, t = c.tid;
    const int n = pos + 1, nch = att_chunks(pos);
    const int per = (n + nch - 1) / nch;
    const int c0 = ci * per, c1 = min(n, c0 + per);
    if (c0 >= n) return;  // empty chunk (uniform over the block)
    pause_set(16, 1u);  // (lowered at the end of the item)
#if MK_TAGRAW
    const bool nowait = (P.debug_flags & 5) != 0;
    const u64* graw = (const u64*)(P.scratch + S_RAW) + FA_GROWS * g;
#else
    (void)ep;
#if MK_HEADCNT
    if (!(P.debug_flags & 4)) wait_geq(row_counter(P, 16 + g), FA_GROUP_ROWS);
    else cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + 10);
#endif
#endif
    float* qsm = c.misc();          // [256]
    float* ksm = c.misc() + 256;    // [256]
    float* vsm = c.misc() + 512;    // [256]
    const float* sp = P.sblob + (long long)l * SP;
    const int fi = fa_index(l);
    unsigned short* kc = (unsigned short*)P.kcache + ((long long)(fi * NKV + g) * P.max_seq) * HD;
    unsigned short* vc = (unsigned short*)P.vcache + ((long long)(fi * NKV + g) * P.max_seq) * HD;
    if (c.warp < 3) {  // warp 0: q head hh, 1: k (RMSNorm(1+w) per head), 2: v as is
        const int d0 = c.lane * 8, off = c.warp == 0 ? 512 * hh : c.warp == 1 ? FK : FV;
        float x[8];
#if MK_TAGRAW
        lead_wait_tag(graw + off + d0, ep, nowait, true);
        u64 wv[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) wv[e] = ld_gpu(graw + off + d0 + e);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = poll_tag_w(graw + off + d0 + e, wv[e], ep, nowait);
#else
        const float* src = P.scratch + S_RAW + FA_GROWS * g + off;
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = __ldcg(src + d0 + e);
#endif
        head_norm8(c.misc() + 256 * c.warp, x, sp + (c.warp == 0 ? SP_QN : SP_KN), d0, c.warp < 2);
    }
    cbar();
#if MK_TAGRAW
    trace_pt(c, P, pos - P.pos, TR_L * l + 10);  // (after the polls and the norms)
#endif
    if (t < 64) rope_pair(t < 32 ? qsm : ksm, t & 31, pos);  // q head and key
    cbar();
    if (t < 256) {  // the current position's k, v as the cache stores them (bf16)
        const unsigned short kb = f2bf(ksm[t]), vb = f2bf(vsm[t]);
        if (c1 == n && hh == 0) {
            kc[(long long)pos * HD + t] = kb;
            vc[(long long)pos * HD + t] = vb;
        }
        ksm[t] = __uint_as_float((unsigned)kb << 16);
        vsm[t] = __uint_as_float((unsigned)vb << 16);
    }
    cbar();
    float q[8], acc[8], m = -INFINITY, ls = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        q[e] = qsm[c.lane * 8 + e] * 0.0625f;  // 1/sqrt(256)
        acc[e] = 0.f;
    }
#pragma unroll 1
    for (int p = c0 + c.warp; p < c1; p += NCW) {
        float kf[8], vf[8];
        if (p == pos) {
#pragma unroll
            for (int e = 0; e < 8; ++e) {
                kf[e] = ksm[c.lane * 8 + e];
                vf[e] = vsm[c.lane * 8 + e];
            }
        } else {
            unpack8(__ldcg((const uint4*)(kc + (long long)p * HD + c.lane * 8)), kf);
            unpack8(__ldcg((const uint4*)(vc + (long long)p * HD + c.lane * 8)), vf);
        }
        float s = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) s = fmaf(q[e], kf[e], s);
        softmax_step(warp_sum(s), vf, m, ls, acc);
    }
    const int b = (g * ATT_MAXCH + ci) * 4 + hh;
    merge_warps(c, m, ls, acc, P.scratch + S_APART + b * 256, P.scratch + S_AML + b * 2);
#if MK_ATTMERGE
    // the last of the head's chunk items to finish (acq_rel count) merges all of them
    const int used = (n + per - 1) / per;
    volatile int* last = (volatile int*)(c.misc() + 1568);
    if (t == 0) {
        unsigned old;
        asm volatile("atom.acq_rel.gpu.global.add.u32 %0, [%1], 1;" : "=r"(old) : "l"(row_counter(P, 34 + g * 4 + hh)) : "memory");
        *last = old == (unsigned)(used - 1);
    }
    cbar();
    if (*last) {  // (block-uniform)
        float* cm = c.misc() + 1584;  // [16] chunk maxima
        float* cl = c.misc() + 1600;  // [16] chunk sums
        float av[ATT_MAXCH / 2];
        const int b0 = (g * ATT_MAXCH) * 4 + hh;
#if MK_TAGRAW
        const float gate = t < 256 ? poll_tag(graw + 512 * hh + 256 + t, ep, nowait) : 0.f;
#else
        const float gate = t < 256 ? __ldcg(P.scratch + S_RAW + FA_GROWS * g + 512 * hh + 256 + t) : 0.f;
#endif
#pragma unroll
        for (int k = 0; k < ATT_MAXCH / 2; ++k)
            av[k] = (t < 256 && k < used) ? __ldcg(P.scratch + S_APART + (b0 + 4 * k) * 256 + t) : 0.f;
        if (t < used) {
            cm[t] = __ldcg(P.scratch + S_AML + (b0 + 4 * t) * 2);
            cl[t] = __ldcg(P.scratch + S_AML + (b0 + 4 * t) * 2 + 1);
        }
        cbar();
        if (t < 256) {
            float M = -INFINITY;
            for (int k = 0; k < used; ++k) M = fmaxf(M, cm[k]);
            float L = 0.f, A = 0.f;
#pragma unroll
            for (int k = 0; k < ATT_MAXCH / 2; ++k) {
                const float f = k < used ? expf(cm[k] - M) : 0.f;
                L = fmaf(k < used ? cl[k] : 0.f, f, L);
                A = fmaf(av[k], f, A);
            }
            __stcg(P.scratch + S_AOUT + (g * 4 + hh) * 256 + t, bfr(bfr(A / L) * bfr(sigm(gate))));
        }
    }
#endif
    pause_set(16, 0u);
}
#endif

// acts[0..2048) <- bf16(attn_out) * bf16(sigmoid(gate)), merging the sequence chunks of every query head.
__device__ __forceinline__ void attn_out_act(Ctx& c, const LuceMkParams& P, int pos) {
#if MK_ATTMERGE
    // merged by the items: one load per value
    (void)pos;
    for (int i = c.tid; i < NQH * HD; i += NCT) c.acts()[i] = __ldcg(P.scratch + S_AOUT + i);
    cbar();
    return;
#endif
    const int n = pos + 1, nch = att_chunks(pos), per = (n + nch - 1) / nch;
    const int used = (n + per - 1) / per;  // non-empty chunks
#if MK_PROLOGUE2
    // chunk weights exp(m_ci - M) / L per query head (warp jh, lane ci), then one pass with all loads issued early
    constexpr int IT = (NQH * HD + NCT - 1) / NCT;
    float* wf = c.misc();  // [8 heads][32 chunks]
    float gate[IT];
#pragma unroll
    for (int k = 0; k < IT; ++k) {
        const int i = c.tid + k * NCT;
        gate[k] = i < NQH * HD ? raw_at(P, FA_GROWS * (i >> 10) + 512 * ((i >> 8) & 3) + 256 + (i & 255)) : 0.f;
    }
    if (c.warp < NQH) {
        const int jh = c.warp, g = jh >> 2, hh = jh & 3, ci = c.lane;
        float m = -INFINITY, ls = 0.f;
        if (ci < used) {
            const int b = (g * ATT_MAXCH + ci) * 4 + hh;
            m = __ldcg(P.scratch + S_AML + b * 2);
            ls = __ldcg(P.scratch + S_AML + b * 2 + 1);
        }
        float M = m;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) M = fmaxf(M, __shfl_xor_sync(0xffffffffu, M, o));
        const float f = ci < used ? expf(m - M) : 0.f;
        const float L = warp_sum(ls * f);
        wf[jh * 32 + ci] = f / L;
    }
    cbar();
#pragma unroll
    for (int k = 0; k < IT; ++k) {
        const int i = c.tid + k * NCT;
        if (i < NQH * HD) {
            const int jh = i >> 8, d = i & 255, g = jh >> 2, hh = jh & 3;
            const float* src = P.scratch + S_APART + ((g * ATT_MAXCH) * 4 + hh) * 256 + d;
            float A = 0.f;
#pragma unroll 8
            for (int ci = 0; ci < used; ++ci) A = fmaf(__ldcg(src + ci * 4 * 256), wf[jh * 32 + ci], A);
            c.acts()[i] = bfr(bfr(A) * bfr(sigm(gate[k])));
        }
    }
#else
#pragma unroll 1
    for (int i = c.tid; i < NQH * HD; i += NCT) {
        const int jh = i >> 8, d = i & 255, g = jh >> 2, hh = jh & 3;
        float M = -INFINITY;
        for (int ci = 0; ci < used; ++ci) M = fmaxf(M, __ldcg(P.scratch + S_AML + ((g * ATT_MAXCH + ci) * 4 + hh) * 2));
        float L = 0.f, A = 0.f;
        for (int ci = 0; ci < used; ++ci) {
            const int b = (g * ATT_MAXCH + ci) * 4 + hh;
            const float f = expf(__ldcg(P.scratch + S_AML + b * 2) - M);
            L = fmaf(__ldcg(P.scratch + S_AML + b * 2 + 1), f, L);
            A = fmaf(__ldcg(P.scratch + S_APART + b * 256 + d), f, A);
        }
        const float gate = raw_at(P, FA_GROWS * g + 512 * hh + 256 + d);
        c.acts()[i] = bfr(bfr(A / L) * bfr(sigm(gate)));
    }
#endif
    cbar();
}

}  // namespace mk
