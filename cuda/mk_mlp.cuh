// mk_mlp.cuh -- P4 of every layer: RMSNorm, then gate/up + SiLU for this block's slice of the 3584 hidden units, then
// the matching rows of down_proj^T (split-K: every block contributes a partial of all 1024 outputs).
// Waits for: x_{2l+1}, the mixer's output (tagged, polled value by value).
// Publishes: the block's down_proj partial (tagged, contributor = block), then, as the reducer of its owned rows,
// x_{2l+2} of those rows (mk_norm.cuh).
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

__device__ __forceinline__ void mlp(Ctx& c, const LuceMkParams& P, int s, int l) {
    MlpWork& w = smem().w.mlp;
    const int j = 2 * l + 1;
    load_x_norm(c, P, xbuf(P, j), sub_epoch(P, s, j), x_count(c, P, s, j), nullptr, P.sblob + (long long)l * SP + SP_LN2,
                no_waits(P));
    trace_pt(c, P, s, TR_L * l + TR_MLP_X_READY);
    // every block has read this step's input token once x_1 is complete: the next step's argmax slot is free
    if (l == 0 && c.b == 0 && c.tid == 0) P.best[(P.pos + s + 1) & 1] = 0ull;
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
    const bool no_adds = (P.debug_flags & LUCE_MK_DEBUG_NO_MLP_ADDS) != 0;
    if (!no_adds) publish_partial(c, P, c.b, acc, sub_epoch(P, s, j));
    trace_done(c, P, s, TR_L * l + TR_DOWN_DONE);
    reduce_rows(c, P, c.G, sub_epoch(P, s, j), xbuf(P, j + 1), sub_epoch(P, s, j + 1), no_adds || no_waits(P));
}

}  // namespace mk
