// mk_o_proj.cuh -- P3 of a gated attention layer: o_proj over the merged, gated attention output (2048 values, the
// same for every block), the block's rows [r0, r1) of the 1024 outputs plus the residual.
// Waits for: the mixer barrier (scratch().aout complete).
// Publishes: the owned rows of the mixer's output residual buffer (copy 0 = x + o_proj, the other copies 0; complete
// after the barrier that follows).
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

__device__ __forceinline__ void o_proj(Ctx& c, const LuceMkParams& P, int s, int l, float* xn) {
    float* acts = smem().acts;
    constexpr int N = (NQH * HD + NCT - 1) / NCT;  // every load in flight at once (NOTES.md v20)
    float v[N];
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = c.tid + k * NCT < NQH * HD ? __ldcg(&scratch(P).aout[c.tid + k * NCT]) : 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k)
        if (c.tid + k * NCT < NQH * HD) acts[c.tid + k * NCT] = v[k];
    cbar();
    trace_pt(c, P, s, TR_L * l + TR_O_READY);
    consume(c, layer_phase(P.wblob, l, 1), [&](int r, const char* row) {
        const float d = warp_sum(dot_smem_part<2048>(row, acts, c.lane));
        if (c.lane == 0) {
            xn[r] = smem().x[r] + d;
#pragma unroll 1
            for (int q = 1; q < XC; ++q) xn[q * H + r] = 0.f;
        }
    });
    trace_done(c, P, s, TR_L * l + TR_O_DONE);
}

}  // namespace mk
