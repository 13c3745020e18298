// mk_o_proj.cuh -- P3 of a gated attention layer: o_proj over the merged, gated attention output (2048 values, the
// same for every block), the block's rows [r0, r1) of the 1024 outputs plus the residual.
// Waits for: scratch().aout (tagged, epoch ep: the heads' chunk-0 items publish it).
// Publishes: x_{2l+1} of the owned rows (tagged): o_proj rows are whole, nothing to reduce.
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

__device__ __forceinline__ void o_proj(Ctx& c, const LuceMkParams& P, int s, int l, unsigned ep) {
    float* acts = smem().acts;
    const u64* aout = scratch(P).aout;
    const bool nowait = no_waits(P) || (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING);  // (no items: no aout)
    constexpr int PER = (NQH * HD + NCT - 1) / NCT;
    // the 8 heads' aout published: 8 per attention layer since the scratch was zeroed
    hint_wait(scratch(P).acnt, (unsigned)NQH * ((P.step_base + (unsigned)s) * (NL / 4) + fa_index(l) + 1), nowait);
    u64 w[PER];
#pragma unroll
    for (int k = 0; k < PER; ++k)
        if (c.tid + k * NCT < NQH * HD) w[k] = ld_gpu(aout + c.tid + k * NCT);
#pragma unroll
    for (int k = 0; k < PER; ++k)
        if (c.tid + k * NCT < NQH * HD) acts[c.tid + k * NCT] = poll_tag_w(aout + c.tid + k * NCT, w[k], ep, nowait);
    cbar();
    trace_pt(c, P, s, TR_L * l + TR_O_READY);
    u64* xn = xbuf(P, 2 * l + 1);
    const unsigned ep_x = sub_epoch(P, s, 2 * l + 1);
    consume(c, layer_phase(P.wblob, l, 1), [&](int r, const char* row) {
        const float d = warp_sum(dot_smem_part<2048>(row, acts, c.lane));
        if (c.lane == 0) st_tag(xn + r, ep_x, smem().x[r] + d);
    });
    publish_rows_done(c, P);
    trace_done(c, P, s, TR_L * l + TR_O_DONE);
}

}  // namespace mk
