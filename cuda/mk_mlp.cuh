// mk_mlp.cuh -- P4 of every layer: RMSNorm, then gate/up + SiLU for this block's slice of the 3584 hidden units, then
// the matching rows of down_proj^T (split-K: every block contributes a partial of all 1024 outputs).
// Waits for: the mixer's (or o_proj's) barrier: its residual buffer is complete; with MK_O_TAGS after an attention
// layer, o_proj's tagged rows of x (epoch ep) instead.
// Publishes: the block's down_proj partial (plus x on its owned rows), added with f32 reductions into its copy of the
// next residual buffer (complete after the barrier that follows).
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

// `wn`: the post-attention norm weights (norm_weights of ln2_w(P, l)), loaded before the barrier that precedes it.
__device__ __forceinline__ const float* ln2_w(const LuceMkParams& P, int l) { return P.sblob + (long long)l * SP + SP_LN2; }
__device__ __forceinline__ void mlp(Ctx& c, const LuceMkParams& P, int s, int l, const NormW& wn, unsigned ep) {
    MlpWork& w = smem().w.mlp;
    // MK_O_TAGS, an attention layer's MLP: x + o_proj from o_proj's tagged rows, one transition (mk_norm.cuh)
    const bool tagged = MK_O_TAGS && is_fa(l);
    if (!tagged) zero_owned(c, xbuf(P, xk(l) + 3));  // the next transition's target (mk_norm.cuh)
#if MK_O_TAGS
    if (tagged) load_x_norm(c, nullptr, nullptr, wn, scratch(P).xo, ep, tags_nowait(P));
#else
    (void)ep;
#endif
    if (!tagged) load_x_norm(c, xbuf(P, xk(l) + 1), nullptr, wn);
    trace_pt(c, P, s, TR_L * l + TR_MLP_X_READY);
    const int k0 = split_rows(FF, c.b, c.G);  // first hidden unit of this block
    {
        float a[32];
        load_act_regs(a, smem().acts, c.lane);
        consume(c, layer_phase(P.wblob, l, 2), [&](int r, const char* row) {
            const float gt = warp_sum(dot1024_part(row, a, c.lane));
            const float up = warp_sum(dot1024_part(row + 2048, a, c.lane));
            if (c.lane == 0) w.hs[r - k0] = silu(gt) * up;
        });
    }
    cbar();
    trace_pt(c, P, s, TR_L * l + TR_GATE_UP_DONE);
    float acc[3] = {0.f, 0.f, 0.f};
    consume_all(c, layer_phase(P.wblob, l, 3),
                [&](int r, int n, const char* base) { splitk_rows(base, n, w.hs + (r - k0), c.tid, acc); });
    w.part[c.tid] = acc[0];
    w.part[c.tid + NCT] = acc[1];
    if (c.tid + 2 * NCT < H) w.part[c.tid + 2 * NCT] = acc[2];
    cbar();
    if (!(P.debug_flags & LUCE_MK_DEBUG_NO_MLP_ADDS))
        add_partial(c, xbuf(P, xk(l) + (tagged ? 1 : 2)) + (c.b % XC) * H, w.part, smem().x);
    trace_done(c, P, s, TR_L * l + TR_DOWN_DONE);
}

}  // namespace mk
