// mk_lm_head.cuh -- the end of a step: final RMSNorm, the block's rows of the tied LM head (the embedding matrix),
// optional logits, and the argmax over the vocabulary.
// Waits for: the last MLP's barrier.
// Publishes: the block's best (logit, token) packed into one u64 and combined with atomicMax into P.best[pos & 1]
// (complete after the barrier that follows; the other slot is cleared during the next step).
//
// Two ways to the block's best row, with the same result:
//   full      every row's logit from the bf16 head (the ring streams 2 KB per row); steps that return logits.
//   screened  (lm_screened, mk_ring.cuh) the ring streams the int8 screening copy (1040 bytes per row, luce_mk.h lm8):
//             each row's score d_j = s_j (h . q_j) is within e_j = ||h||_2 c_j of its bf16 logit as the full way
//             computes it, so only rows with d_j + e_j >= L = max_k (d_k - e_k) can be the block's best; those are
//             recomputed from the bf16 head in global memory exactly as the full way does (a few per block on the
//             models measured: kernel bench's "rescored"). On sm_90 d_j comes from integer dot products with
//             the activations' digits, and e_j grows by that arithmetic's own bound (mk_math.cuh, NOTES.md v33).
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// Order-preserving u64 key: larger logit first, then the smaller token id.
__device__ __forceinline__ unsigned long long pack_best(float v, int idx) {
    unsigned u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned)idx);
}
__device__ __forceinline__ int unpack_token(unsigned long long k) { return (int)(0xffffffffu - (unsigned)(k & 0xffffffffull)); }

// The warp's best row of the block's bf16 LM-head rows (0: none), its logits written to lg when set.
__device__ __forceinline__ unsigned long long lm_full_best(Ctx& c, const LuceMkParams& P, int s, const float a[32],
                                                           float* lg) {
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    consume(c, lm_phase(c, P, s), [&](int r, const char* row) {
        const float d = warp_sum(dot1024_part(row, a, c.lane));
        if (lg && c.lane == 0) lg[r] = d;
        if (d > bv) {  // rows come in increasing order: a tie keeps the smaller token
            bv = d;
            bi = r;
        }
    });
    return bi == 0x7fffffff ? 0ull : pack_best(bv, bi);
}

// The warp's best row among the block's rows that the screen cannot rule out (0: none); adds their number to
// smem().rescored. The activations are in acts.
__device__ __forceinline__ unsigned long long lm_screened_best(Ctx& c, const LuceMkParams& P, int s) {
#if MK_LM_INT_SCORES
    // integer scores (mk_math.cuh): d_j = s_j t (D1 + D2 / 128 + D3 / 128^2) is within 16 s_j t of s_j (h . q_j):
    // < 4 from the digits' remainder, < 2 from the lanes' two roundings, < 5 from the warp sum, < 1 from the scale
    // (NOTES.md v33). The activations wait in w.mlp.part for the rescoring (acts gets the bounds)
    float ss = 0.f, am = 0.f;
#pragma unroll
    for (int k = 0; k < 32; ++k) {
        const float v = smem().acts[(k >> 3) * 256 + c.lane * 8 + (k & 7)];  // as load_act_regs
        ss = fmaf(v, v, ss);
        am = fmaxf(am, fabsf(v));
    }
    const float t = pow2_at_least(warp_max(am) * (1.f / 127.f));
    LmDigits dg;
    lm_digits(smem().acts, c.lane, 1.f / t, dg);
    float* hsave = smem().w.mlp.part;
    for (int i = c.tid; i < H; i += NCT) hsave[i] = smem().acts[i];
#else
    float a[32];
    load_act_regs(a, smem().acts, c.lane);
    float ss = 0.f;
#pragma unroll
    for (int k = 0; k < 32; ++k) ss = fmaf(a[k], a[k], ss);
#endif
    const float hn = sqrtf(warp_sum(ss)) * 1.00001f;  // ||h||_2 rounded up: every warp holds all 1024 activations
    if (c.tid == 0) smem().rescored = 0u;
    cbar();  // the bounds overwrite acts: every warp has its activations in registers (or digits)
    float* ub = smem().acts;
    const Seg g = block_seg(c, lm_phase(c, P, s));
    float lo = -INFINITY;  // the largest lower bound among this warp's rows
    consume_seg(c, g, [&](int r, const char* row) {
        const float2 sc = *(const float2*)(row + H);  // s_j, c_j
#if MK_LM_INT_SCORES
        const float st = sc.x * t;  // exact: t is a power of two
        const float d = st * warp_sum(dot1024_u8_dp4a_part(row, dg, c.lane)), e = fmaf(hn, sc.y, 16.f * st);
#else
        const float d = sc.x * warp_sum(dot1024_u8_part(row, a, c.lane)), e = hn * sc.y;
#endif
        if (c.lane == 0) ub[r - g.r0] = d + e;
        lo = fmaxf(lo, d - e);
    });
    if (c.skip_math) {  // (timing mode: no bounds were written)
        trace_pt(c, P, s, TR_LM_STREAMED);
        return 0ull;
    }
    if (c.lane == 0) smem().red[c.warp] = lo;
    cbar();
    trace_pt(c, P, s, TR_LM_STREAMED);
    float L = -INFINITY;
#pragma unroll
    for (int w = 0; w < NCW; ++w) L = fmaxf(L, smem().red[w]);
#if MK_LM_INT_SCORES
    float ar[32];  // the activations again, for the rows' exact logits
    load_act_regs(ar, smem().w.mlp.part, c.lane);
#else
    const float* ar = a;
#endif
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    unsigned n = 0;
    const int nr = g.r1 - g.r0;
    for (int i0 = c.warp * 32; i0 < nr; i0 += NCT) {
        unsigned m = __ballot_sync(0xffffffffu, i0 + c.lane < nr && ub[i0 + c.lane] >= L);
        n += __popc(m);
        while (m) {  // in increasing row order: a tie keeps the smaller token, as in the full way
            const int r = g.r0 + i0 + __ffs(m) - 1;
            m &= m - 1;
            const float d = warp_sum(dot1024_global_part((const char*)P.embed + (size_t)r * 2048, ar, c.lane));
            if (d > bv) {
                bv = d;
                bi = r;
            }
        }
    }
    if (c.lane == 0 && n) atomicAdd(&smem().rescored, n);
    return bi == 0x7fffffff ? 0ull : pack_best(bv, bi);
}

// `wn`: the final norm weights (norm_weights of final_norm_w(P)), loaded before the barrier that precedes it.
__device__ __forceinline__ const float* final_norm_w(const LuceMkParams& P) { return P.sblob + (long long)NL * SP; }
__device__ __forceinline__ void lm_head(Ctx& c, const LuceMkParams& P, int s, const NormW& wn) {
    const int pos = P.pos + s;
    load_x_norm(c, xbuf(P, xk(NL)), nullptr, wn);
    trace_pt(c, P, s, TR_STEP + 1);
    const bool screened = lm_screened(c, P, s);
    float* lg = (P.logits && s >= P.logits_first) ? P.logits + (long long)(s - P.logits_first) * V : nullptr;
    unsigned long long best;
    if (screened) {
        best = lm_screened_best(c, P, s);
    } else {
        float a[32];
        load_act_regs(a, smem().acts, c.lane);
        best = lm_full_best(c, P, s, a, lg);
    }
    if (c.lane == 0) smem().best[c.warp] = best;
    cbar();
    if (c.tid == 0) {
        unsigned long long k = 0;
        for (int r = 0; r < NCW; ++r) k = smem().best[r] > k ? smem().best[r] : k;
        atomicMax(P.best + (pos & 1), k);
        // a reduction, not a load and a store: nothing waits for it (the load was a round trip before the barrier)
        if (screened && P.lm_rescored) atomicAdd(P.lm_rescored + c.b, smem().rescored);
    }
    if (!screened) trace_pt(c, P, s, TR_LM_STREAMED);
    trace_pt(c, P, s, TR_STEP + 2);
}

}  // namespace mk
