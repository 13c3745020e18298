// mk_lm_head.cuh -- the end of a step: final RMSNorm, the block's rows of the tied LM head (the embedding matrix),
// optional logits, and the argmax over the vocabulary.
// Waits for: the last MLP's barrier.
// Publishes: the block's best (logit, token) packed into one u64 and combined with atomicMax into P.best[pos & 1]
// (complete after the barrier that follows; the other slot is cleared during the next step).
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

__device__ __forceinline__ void lm_head(Ctx& c, const LuceMkParams& P, int s) {
    const int pos = P.pos + s;
    load_x_norm(c, xbuf(P, 2 * NL), nullptr, P.sblob + (long long)NL * SP);
    trace_pt(c, P, s, TR_STEP + 1);
    float a[32];
    load_act_regs(a, smem().acts, c.lane);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    float* lg = (P.logits && s >= P.logits_first) ? P.logits + (long long)(s - P.logits_first) * V : nullptr;
    consume(c, lm_phase(P.embed), [&](int r, const char* row) {
        const float d = warp_sum(dot1024_part(row, a, c.lane));
        if (lg && c.lane == 0) lg[r] = d;
        if (d > bv) {
            bv = d;
            bi = r;
        }
    });
    if (c.lane == 0) smem().best[c.warp] = bi == 0x7fffffff ? 0ull : pack_best(bv, bi);
    cbar();
    if (c.tid == 0) {
        unsigned long long k = 0;
        for (int r = 0; r < NCW; ++r) k = smem().best[r] > k ? smem().best[r] : k;
        atomicMax(P.best + (pos & 1), k);
    }
    trace_pt(c, P, s, TR_STEP + 2);
}

}  // namespace mk
