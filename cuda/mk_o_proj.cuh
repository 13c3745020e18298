// mk_o_proj.cuh -- P3 of a gated attention layer: o_proj over the merged, gated attention output (2048 values, the
// same for every block), the block's rows [r0, r1) of the 1024 outputs plus the residual.
// Waits for: the tagged head outputs in scratch().aout (epoch ep): no grid barrier follows the attention mixer.
// Publishes: the owned rows of the mixer's output residual buffer (copy 0 = x + o_proj, the other copies 0; complete
// after the barrier that follows); with MK_O_TAGS the rows x + o_proj as tagged values in scratch().xo (epoch ep),
// which the MLP polls: no barrier follows.
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

__device__ __forceinline__ void o_proj(Ctx& c, const LuceMkParams& P, int s, int l, float* xn, unsigned ep) {
    float* acts = smem().acts;
    constexpr int N = (NQH * HD + NCT - 1) / NCT;  // every load in flight at once (NOTES.md v20)
    float v[N];
    // the head outputs as their mergers store them (tagged, epoch ep; NOTES.md v25). Not waited for in
    // the debug modes that skip the math, the barriers or the mixer (nothing would store them)
    const bool nowait = tags_nowait(P) || (P.debug_flags & LUCE_MK_DEBUG_NO_MIXING) != 0;
    // lanes 0-7 of warp 0 wait for one value of each head (its last dimension) while the other threads wait at the
    // block barrier: 8 pollers per block, not 480, keep the L2 free for the items still running (NOTES.md v13: every
    // thread polling cost 25 %); then every value is loaded, a straggler polled on its own
    if (c.warp == 0 && c.lane < NQH && !nowait) {
        const u64* h = scratch(P).aout + c.lane * HD + HD - 1;
        const unsigned long long t0 = global_ns();
        for (unsigned n = 1; !tag_ok(ld_gpu(h), ep); ++n) {
            if ((n & 0xfffffu) == 0) spin_check(t0);
            spin_pause();
        }
    }
    __syncwarp();
    cbar();  // (it also ends the reads of acts, wm/wl and cm/cl that this block's attention items left running)
    const u64* src = scratch(P).aout + c.tid;
    u64 w[N];
#pragma unroll
    for (int k = 0; k < N; ++k) w[k] = c.tid + k * NCT < NQH * HD ? ld_gpu(src + k * NCT) : 0ull;
#pragma unroll
    for (int k = 0; k < N; ++k) v[k] = c.tid + k * NCT < NQH * HD ? poll_tag_w(src + k * NCT, w[k], ep, nowait) : 0.f;
#pragma unroll
    for (int k = 0; k < N; ++k)
        if (c.tid + k * NCT < NQH * HD) acts[c.tid + k * NCT] = v[k];
    cbar();
    trace_pt(c, P, s, TR_L * l + TR_O_READY);
    consume(c, layer_phase(P.wblob, l, 1), [&](int r, const char* row) {
        const float d = warp_sum(dot_smem_part<2048>(row, acts, c.lane));
        if (c.lane == 0) {
#if MK_O_TAGS
            st_tag(scratch(P).xo + r, ep, smem().x[r] + d);
#else
            xn[r] = smem().x[r] + d;
#pragma unroll 1
            for (int q = 1; q < XC; ++q) xn[q * H + r] = 0.f;
#endif
        }
    });
    trace_done(c, P, s, TR_L * l + TR_O_DONE);
}

}  // namespace mk
