// mk_gdn.cuh -- P2 of a Gated DeltaNet layer: 128 work items per layer, one per (head h, 16-column value slice j),
// spread over the blocks. An item: causal conv + SiLU of its q/k/v channels, L2 norms, beta and decay, the delta-rule
// update of its 128 x 16 f32 state slice and its 16 outputs, the gated RMSNorm (the head's 8 items exchange their
// partial sums of squares), then out_proj split-K: its 16 rows of out_proj^T times the 16 normalised outputs, added
// into the mixer's output residual buffer.
// Waits for: the head's in_proj outputs (tagged, epoch ep); the 7 sibling items' sums of squares (tagged).
// Publishes: its sum of squares (tagged); the out_proj partial (f32 reductions; complete after the mixer barrier).
#pragma once
#include "mk_norm.cuh"
#include "mk_trace.cuh"

namespace mk {

constexpr float QSCALE = 0.08838834764831845f;  // 1/sqrt(128), q's scale after its l2norm

__device__ __forceinline__ float sel4(float4 v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// The item's inputs, every load in flight at once: its state slice into registers (threads < 256: key group t >> 4,
// value t & 15, 8 keys); one in_proj output per thread (< 272: a q, k or v channel, 272: b, 273: a, 274..289: the
// slice's z; 290, 291: dt_bias and -exp(A_log) of the head, 292..307: the slice's gated-norm weights), the q/k/v
// channels through the causal conv (4 taps, history ring in conv_hist) and SiLU.
__device__ __forceinline__ void gdn_inputs(Ctx& c, const LuceMkParams& P, int l, int item, int pos, unsigned ep,
                                           float4& sa, float4& sb) {
    GdnWork& w = smem().w.gdn;
    const int h = item >> 3, j = item & 7, t = c.tid;
    const bool nowait = tags_nowait(P);
    const u64* raw = scratch(P).raw + h * GDN_HROWS;
    const float* S = P.gdn_state + (long long)gdn_index(l) * STATE_L + (long long)item * (DK * SLV) + (t & 255) * 8;
    sa = sb = make_float4(0.f, 0.f, 0.f, 0.f);
    if (t < 256) {
        sa = __ldcg((const float4*)S);
        sb = __ldcg((const float4*)S + 1);
    }
    const int rix = t < 256 ? t : t < 272 ? GV + j * 16 + (t - 256) : t == 272 ? GB : t == 273 ? GA : GZ + j * SLV + (t - 274);
    // The conv channel of threads < 272, its taps and history, loaded before the wait for the in_proj outputs (as are
    // the gate parameters and the gated-norm weights, by threads that wait for nothing): after it, each would be a
    // round trip more on the chain (NOTES.md v19)
    const float* sp = P.sblob + (long long)l * SP;
    float* hist = P.conv_hist + (long long)gdn_index(l) * CONV * 4;
    const int ch = t < 128 ? h * 128 + t : t < 256 ? 2048 + h * 128 + (t - 128) : 4096 + h * 128 + j * 16 + (t - 256);
    float4 hv = make_float4(0.f, 0.f, 0.f, 0.f), wc = hv;
    if (t < 272) {
        hv = __ldcg((const float4*)(hist + ch * 4));
        wc = *(const float4*)(sp + SP_CONV + ch * 4);
    }
    // (kept in a register until after warp 9's wait: a store right after the load would hold the warp's lane 0, which
    // polls, a round trip)
    const float pv = t == 290 ? sp[SP_DTB + h] : t == 291 ? sp[SP_NEGA + h]
                   : (t >= 292 && t < 292 + SLV) ? sp[SP_GNW + j * SLV + (t - 292)] : 0.f;
    float cur = 0.f;
    if (c.warp < 10) lead_wait_tag(raw + rix, ep, nowait, t < 290);
    if (t < 290) cur = poll_tag(raw + rix, ep, nowait);
    if (t == 272) w.sc[4] = cur;
    else if (t == 273) w.sc[5] = cur;
    else if (t >= 274 && t < 290) w.z[t - 274] = cur;
    else if (t == 290) w.sc[6] = pv;
    else if (t == 291) w.sc[7] = pv;
    else if (t >= 292 && t < 292 + SLV) w.gnw[t - 292] = pv;
    if (t < 272) {
        float acc = wc.w * cur;
        acc = fmaf(wc.z, sel4(hv, (pos - 1) & 3), acc);
        acc = fmaf(wc.y, sel4(hv, (pos - 2) & 3), acc);
        acc = fmaf(wc.x, sel4(hv, (pos - 3) & 3), acc);
        const float o = silu(acc);
        if (t < 128) w.q[t] = o; else if (t < 256) w.k[t - 128] = o; else w.v[t - 256] = o;
        // one writer per channel (readers use the other slots): the slice's own v channels, and of the head's 256
        // q/k channels 32 per slice (the 8 items share the stores)
        if (t >= 256 || (t >> 5) == j) hist[ch * 4 + (pos & 3)] = cur;
    }
    cbar();
}

// Warp 8 (no state slice: warps 0-7 run the recurrence's dot products meanwhile): beta = sigmoid(b), decay =
// exp(-exp(A_log) * softplus(a + dt_bias)), 1/|q|, 1/|k| into w.sc[0..3]. The recurrence normalises q and k through
// its dot products' scales, so no block barrier waits for these (NOTES.md v20).
__device__ __forceinline__ void gdn_gates(Ctx& c) {
    GdnWork& w = smem().w.gdn;
    if (c.warp == 8) {
        float qq = 0.f, kk = 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float q = w.q[c.lane * 4 + e], k = w.k[c.lane * 4 + e];
            qq = fmaf(q, q, qq);
            kk = fmaf(k, k, kk);
        }
        qq = warp_sum(qq);
        kk = warp_sum(kk);
        if (c.lane == 0) {
            const float x = w.sc[5] + w.sc[6];
            const float softplus = x > 20.f ? x : log1pf(expf(x));
            w.sc[0] = sigm(w.sc[4]);
            w.sc[1] = expf(w.sc[7] * softplus);
            w.sc[2] = rsqrtf(qq + EPS);
            w.sc[3] = rsqrtf(kk + EPS);
        }
    }
}

// The delta rule on the slice: e = beta (v - decay S^T k), o = decay S^T q + (k.q) e, S <- decay S + k e^T, with q
// and k normalised (q also scaled by 1/sqrt(128)) through the scales rq, rk of the raw dot products.
// Publishes the slice's sum of squares of o (tagged) for the gated norm.
__device__ __forceinline__ void gdn_recurrence(Ctx& c, const LuceMkParams& P, int l, int item, unsigned ep,
                                               float4 sa, float4 sb) {
    GdnWork& w = smem().w.gdn;
    const int t = c.tid, v = t & 15, kg = (t >> 4) & 15;
    const float4 ka = *(const float4*)(w.k + kg * 8), kb = *(const float4*)(w.k + kg * 8 + 4);
    const float4 qa = *(const float4*)(w.q + kg * 8), qb = *(const float4*)(w.q + kg * 8 + 4);
    float sk = sa.x * ka.x + sa.y * ka.y + sa.z * ka.z + sa.w * ka.w + sb.x * kb.x + sb.y * kb.y + sb.z * kb.z + sb.w * kb.w;
    float sq = sa.x * qa.x + sa.y * qa.y + sa.z * qa.z + sa.w * qa.w + sb.x * qb.x + sb.y * qb.y + sb.z * qb.z + sb.w * qb.w;
    float kq = ka.x * qa.x + ka.y * qa.y + ka.z * qa.z + ka.w * qa.w + kb.x * qb.x + kb.y * qb.y + kb.z * qb.z + kb.w * qb.w;
    sk += __shfl_xor_sync(0xffffffffu, sk, 16);
    sq += __shfl_xor_sync(0xffffffffu, sq, 16);
    kq += __shfl_xor_sync(0xffffffffu, kq, 16);
    if (t < 256 && c.lane < 16) {  // 8 warps x 2 key groups each
        w.red[c.warp][v][0] = sk;
        w.red[c.warp][v][1] = sq;
        w.red[c.warp][v][2] = kq;
    }
    cbar();
    const float beta = w.sc[0], decay = w.sc[1];
    const float rq = w.sc[2] * QSCALE, rk = w.sc[3];
    if (c.warp == 0) {
        float o2 = 0.f;
        if (c.lane < 16) {
            float SK = 0.f, SQ = 0.f, KQ = 0.f;
#pragma unroll
            for (int r = 0; r < 8; ++r) {
                SK += w.red[r][c.lane][0];
                SQ += w.red[r][c.lane][1];
                KQ += w.red[r][c.lane][2];
            }
            const float e = beta * (w.v[c.lane] - decay * (SK * rk));
            const float o = decay * (SQ * rq) + (KQ * (rq * rk)) * e;
            w.e[c.lane] = e;
            w.o[c.lane] = o;
            o2 = o * o;
        }
        o2 = warp_sum(o2);
        if (c.lane == 0) st_tag(&scratch(P).ss[item >> 3][item & 7], ep, o2);
    }
    cbar();
    if (t < 256) {
        float* S = P.gdn_state + (long long)gdn_index(l) * STATE_L + (long long)item * (DK * SLV) + t * 8;
        const float e = w.e[v] * rk;  // (k e^T with k normalised)
        float4 na, nb;
        na.x = fmaf(decay, sa.x, ka.x * e); na.y = fmaf(decay, sa.y, ka.y * e);
        na.z = fmaf(decay, sa.z, ka.z * e); na.w = fmaf(decay, sa.w, ka.w * e);
        nb.x = fmaf(decay, sb.x, kb.x * e); nb.y = fmaf(decay, sb.y, kb.y * e);
        nb.z = fmaf(decay, sb.z, kb.z * e); nb.w = fmaf(decay, sb.w, kb.w * e);
        __stcg((float4*)S, na);
        __stcg((float4*)S + 1, nb);
    }
}

// Gated RMSNorm of the slice: u = w * (o / rms(head's 128 outputs)) * silu(z), once the 8 sums of squares arrived.
__device__ __forceinline__ void gdn_gated_norm(Ctx& c, const LuceMkParams& P, int item, unsigned ep) {
    GdnWork& w = smem().w.gdn;
    const bool nowait = tags_nowait(P);
    if (c.warp == 0) {  // (w.o and w.z were written by this warp / before a block barrier)
        float ss = c.lane < NSL ? poll_tag(&scratch(P).ss[item >> 3][c.lane], ep, nowait) : 0.f;
        ss = warp_sum(ss);
        if (c.lane < SLV) {
            const float r = rsqrtf(ss * (1.0f / DV) + EPS);
            const float n = w.gnw[c.lane] * (w.o[c.lane] * r);
            w.u[c.lane] = n * silu(w.z[c.lane]);
        }
    }
    cbar();
}

// out_proj split-K: the item's 16 rows of out_proj^T (segment `seg` of this block's phase-1 stream) times w.u;
// the block's 1024 partial outputs are added to its copy of residual buffer xn.
__device__ __forceinline__ void gdn_out_proj(Ctx& c, const LuceMkParams& P, int l, int seg, float* xn) {
    const float* u = smem().w.gdn.u;
    float acc[3] = {0.f, 0.f, 0.f};
    const Seg g = phase_seg(c, P, l, 1, seg);
    consume_all_seg(c, g, [&](int r, int n, const char* base) { splitk_rows(base, n, u + (r - g.r0), c.tid, acc); });
    float* part = smem().acts;
    part[c.tid] = acc[0];
    part[c.tid + NCT] = acc[1];
    if (c.tid + 2 * NCT < H) part[c.tid + 2 * NCT] = acc[2];
    cbar();
    add_partial(c, xn + (c.b % XC) * H, part, nullptr);
}

// One work item; `seg` is its index among this block's items (its out_proj^T segment).
__device__ __forceinline__ void gdn_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, int seg, float* xn,
                                         unsigned ep) {
    const int s = pos - P.pos;
    pause_set(PAUSE_GDN_ITEM, true);
    float4 sa, sb;
    gdn_inputs(c, P, l, item, pos, ep, sa, sb);
    trace_pt(c, P, s, TR_L * l + TR_ITEM_IN);
    gdn_gates(c);
    gdn_recurrence(c, P, l, item, ep, sa, sb);
    gdn_gated_norm(c, P, item, ep);
    trace_pt(c, P, s, TR_L * l + TR_ITEM_SS);
    pause_set(PAUSE_GDN_ITEM, false);
    gdn_out_proj(c, P, l, seg, xn);
}

// P2 of GDN layer l: the block's items (b, b + G, ...), then the owned rows of x added to the output buffer xn
// (zeroed before the previous barrier). LUCE_MK_DEBUG_NO_MIXING still consumes the out_proj chunks.
__device__ __forceinline__ void gdn_mix(Ctx& c, const LuceMkParams& P, int l, int pos, unsigned ep, float* xn) {
    for (int seg = 0, item = c.b; item < GDN_ITEMS; ++seg, item += c.G) {
        if (!(P.debug_flags & LUCE_MK_DEBUG_NO_MIXING)) gdn_item(c, P, l, item, pos, seg, xn, ep);
        else consume_all_seg(c, phase_seg(c, P, l, 1, seg), [](int, int, const char*) {});
    }
    const int r0 = own_r0(c);
    if (c.tid < own_r1(c) - r0) atomicAdd(xn + r0 + c.tid, smem().x[r0 + c.tid]);
}

}  // namespace mk
