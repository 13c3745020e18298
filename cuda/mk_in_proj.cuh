// mk_in_proj.cuh -- P1 of every layer: RMSNorm of the residual stream (or the token's embedding in layer 0), then the
// block's rows of the GDN in_proj (8224 rows) or the attention qkv (5120 rows).
// Waits for: the previous sub-layer's barrier (its residual buffer is complete).
// Publishes: every output row as a tagged value in scratch().raw (epoch `ep`), which the mixer items poll directly.
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// Epoch tag of layer l's P1 outputs in step s: unique per (launch history, step, layer), never 0.
__device__ __forceinline__ unsigned layer_epoch(const LuceMkParams& P, int s, int l) {
    return (P.step_base + (unsigned)s) * NL + (unsigned)l + 1u;
}

// `wn`: the layer's input-norm weights (norm_weights of ln1_w(P, l)), loaded before the barrier that precedes it.
__device__ __forceinline__ const float* ln1_w(const LuceMkParams& P, int l) { return P.sblob + (long long)l * SP + SP_LN1; }
__device__ __forceinline__ void in_proj(Ctx& c, const LuceMkParams& P, int s, int l, int tok, unsigned ep, const NormW& w_ln) {
    zero_owned(c, xbuf(P, xk(l) + 2));  // the MLP's target buffer (MK_O_TAGS, attention: the next layer's; mk_norm.cuh)
    if (l == 0) load_x_norm(c, nullptr, (const unsigned short*)P.embed + (long long)tok * H, w_ln);
    else load_x_norm(c, xbuf(P, xk(l)), nullptr, w_ln);
    trace_pt(c, P, s, TR_L * l + TR_X_READY);
    float a[32];
    load_act_regs(a, smem().acts, c.lane);
    u64* raw = scratch(P).raw;
    consume(c, layer_phase(P.wblob, l, 0), [&](int r, const char* row) {
        const float d = warp_sum(dot1024_part(row, a, c.lane));
        if (c.lane == 0) st_tag(raw + r, ep, d);
    });
    trace_done(c, P, s, TR_L * l + TR_PROJ_DONE);
}

}  // namespace mk
