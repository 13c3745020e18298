// mk_gdn.cuh -- Gated DeltaNet decode step. gdn_item: one (head, 16-column value slice) work item (128 per layer):
// causal conv + SiLU of its q/k/v channels, L2 norms, beta/decay, the delta-rule update of its 128x16 f32 state slice
// and its 16 outputs (+ their partial sum of squares). gdn_out_act: every block's prologue of out_proj, the gated
// RMSNorm of all 16 heads (rstd from the 8 partial sums of each head) times silu(z).
#pragma once
#include "mk_matvec.cuh"

namespace mk {

// out_proj split-K for one item: u[16] (shared) times the item's 16 rows of out_proj^T, 1024 partial outputs added to
// xn[block % XC copy] by f32 vector reductions. Thread t owns outputs t, t + 480, t + 960 (no shared atomics).
__device__ __forceinline__ void gdn_out_split(Ctx& c, const LuceMkParams& P, int l, int seg, const float* us, float* xn) {
    float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f;
    const bool has2 = c.tid + 2 * NCT < H;
    const Seg g = phase_seg(c, P, l, 1, seg);
    consume_all_seg(c, g, [&](int r, int n, const char* base) {
        const unsigned short* w = (const unsigned short*)base + c.tid;
#pragma unroll 4
        for (int i = 0; i < n; ++i) {
            const float hv = us[r - g.r0 + i];
            acc0 = fmaf(hv, __uint_as_float((unsigned)w[i * H] << 16), acc0);
            acc1 = fmaf(hv, __uint_as_float((unsigned)w[i * H + NCT] << 16), acc1);
            if (has2) acc2 = fmaf(hv, __uint_as_float((unsigned)w[i * H + 2 * NCT] << 16), acc2);
        }
    });
    float* part = c.acts();
    part[c.tid] = acc0;
    part[c.tid + NCT] = acc1;
    if (has2) part[c.tid + 2 * NCT] = acc2;
    cbar();
    float* x = xn + (c.b % XC) * H;
#if __CUDA_ARCH__ >= 900
    if (c.tid < H / 4) red_add4(x + 4 * c.tid, *(const float4*)(part + 4 * c.tid));
#else
#pragma unroll 1
    for (int i = c.tid; i < H; i += NCT) atomicAdd(x + i, part[i]);
#endif
}

__device__ __forceinline__ float sel4(float4 v, int i) { return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w; }

// With MK_GDNFUSE (seg = the item's segment index in this block's out_proj stream, xn = the mixer's output residual
// buffer) the item then waits for the head's 8 sums of squares (a per-head counter, not a grid barrier), applies the
// gated RMSNorm to its 16 outputs and adds out_proj^T rows [16 item, 16 item + 16) times them (1024 partial outputs)
// into xn with f32 reductions.
// ep: epoch tag of this layer's in_proj outputs (MK_TAGRAW). With MK_HEADBUF the partial goes, without the head's
// rstd, into the per-head buffer hb[h] (the MLP prologue scales and sums the 16 heads) and the item never waits for
// its 7 sibling items.
MK_ITEM_FN void gdn_item(Ctx& c, const LuceMkParams& P, int l, int item, int pos, int seg, float* xn,
                                      unsigned ep, float* hb) {
    const int h = item >> 3, j = item & 7, t = c.tid;
    const bool nowait = (P.debug_flags & 5) != 0;
    const int gi = gdn_index(l);
    float* qs = c.misc();          // 128 conv outputs (q), then normalised
    float* ks = c.misc() + 128;    // 128 (k)
    float* vs = c.misc() + 256;    // 16 (v slice)
    float* red = c.misc() + 288;   // [8 warps][16 v][3]
    float* sc = c.misc() + 1056;   // scalars: beta, decay, rq, rk
    float* es = c.misc() + 1072;   // 16 deltas
    float* os_ = c.misc() + 1088;  // 16 outputs (MK_GDNFUSE)
    float* zs = c.misc() + 1120;   // 16 z values
    float* us = c.misc() + 1104;   // 16 out_proj inputs (MK_GDNFUSE)
#if MK_TAGRAW
    const u64* raw = (const u64*)(P.scratch + S_RAW) + h * GDN_HROWS;  // this head's in_proj outputs (tagged)
#else
    const float* raw = P.scratch + S_RAW + h * GDN_HROWS;  // this head's in_proj outputs
#endif
    pause_set(8, 1u);  // (lowered after the sibling wait)
    const float* sp = P.sblob + (long long)l * SP;
    float* hist = P.conv_hist + (long long)gi * CONV * 4;
    // issue the independent global loads first: state slice, b and a
    // state slice [16 key groups][16 v][8 keys]: thread t < 256 holds key group t >> 4, value t & 15, 8 keys
    float* S = P.gdn_state + (long long)gi * STATE_L + (long long)item * (DK * SLV) + (t & 255) * 8;
    float4 sa = make_float4(0.f, 0.f, 0.f, 0.f), sb = sa;
    if (t < 256) {
        sa = __ldcg((const float4*)S);
        sb = __ldcg((const float4*)S + 1);
    }
    // one input per thread, all loads in flight at once: threads < 272 a q, k or v (slice) channel, 272 b, 273 a,
    // 274..289 the slice's z
    const int rix = t < 256 ? t : t < 272 ? GV + j * 16 + (t - 256) : t == 272 ? GB : t == 273 ? GA : GZ + j * SLV + (t - 274);
    float cur = 0.f;
#if MK_TAGRAW
    if (c.warp < 10) lead_wait_tag(raw + rix, ep, nowait, t < 290);
    if (t < 290) cur = poll_tag(raw + rix, ep, nowait);
#else
    (void)ep;
    (void)nowait;
#if MK_HEADCNT
    if (!(P.debug_flags & 4)) wait_geq(row_counter(P, h), GDN_HEAD_ROWS);
    else cbar();
    if (MK_GDNFUSE) trace_pt(c, P, pos - P.pos, TR_L * l + 4);  // (P3 uses points 4, 5 without it)
#endif
    if (t < 290) cur = __ldcg(raw + rix);
#endif
    if (t == 272) sc[4] = cur;
    else if (t == 273) sc[5] = cur;
    else if (t >= 274 && t < 290) zs[t - 274] = cur;
    if (t < 272) {
        const int ch = t < 128 ? h * 128 + t : t < 256 ? 2048 + h * 128 + (t - 128) : 4096 + h * 128 + j * 16 + (t - 256);
        const float4 hv = __ldcg((const float4*)(hist + ch * 4));
        const float4 w = *(const float4*)(sp + SP_CONV + ch * 4);
        float acc = w.w * cur;
        acc = fmaf(w.z, sel4(hv, (pos - 1) & 3), acc);
        acc = fmaf(w.y, sel4(hv, (pos - 2) & 3), acc);
        acc = fmaf(w.x, sel4(hv, (pos - 3) & 3), acc);
        const float o = bfr(silu(bfr(acc)));
        if (t < 128) qs[t] = o; else if (t < 256) ks[t - 128] = o; else vs[t - 256] = o;
        if (t >= 256 || j == 0) hist[ch * 4 + (pos & 3)] = cur;  // one writer per channel; readers use other slots
    }
    cbar();
#if MK_TAGRAW
    trace_pt(c, P, pos - P.pos, TR_L * l + 4);  // (after the polls and the conv)
#endif
    if (c.warp == 0) {
        float qq = 0.f, kk = 0.f;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
            const float q = qs[c.lane * 4 + e], k = ks[c.lane * 4 + e];
            qq = fmaf(q, q, qq);
            kk = fmaf(k, k, kk);
        }
        qq = warp_sum(qq);
        kk = warp_sum(kk);
        if (c.lane == 0) {
            const float b = sc[4], x = sc[5] + sp[SP_DTB + h];
            const float sp_ = x > 20.f ? x : log1pf(expf(x));
            sc[0] = bfr(sigm(b));
            sc[1] = expf(sp[SP_NEGA + h] * sp_);
            sc[2] = rsqrtf(qq + EPS);
            sc[3] = rsqrtf(kk + EPS);
        }
    }
    cbar();
    if (t < 256) {
        if (t < 128) qs[t] = bfr(qs[t] * sc[2]) * 0.08838834764831845f;  // l2norm (bf16) * 1/sqrt(128)
        else ks[t - 128] = bfr(ks[t - 128] * sc[3]);
    }
    cbar();
    const int v = t & 15, kg = (t >> 4) & 15;
    const float4 ka = *(const float4*)(ks + kg * 8), kb = *(const float4*)(ks + kg * 8 + 4);
    const float4 qa = *(const float4*)(qs + kg * 8), qb = *(const float4*)(qs + kg * 8 + 4);
    float sk = sa.x * ka.x + sa.y * ka.y + sa.z * ka.z + sa.w * ka.w + sb.x * kb.x + sb.y * kb.y + sb.z * kb.z + sb.w * kb.w;
    float sq = sa.x * qa.x + sa.y * qa.y + sa.z * qa.z + sa.w * qa.w + sb.x * qb.x + sb.y * qb.y + sb.z * qb.z + sb.w * qb.w;
    float kq = ka.x * qa.x + ka.y * qa.y + ka.z * qa.z + ka.w * qa.w + kb.x * qb.x + kb.y * qb.y + kb.z * qb.z + kb.w * qb.w;
    sk += __shfl_xor_sync(0xffffffffu, sk, 16);
    sq += __shfl_xor_sync(0xffffffffu, sq, 16);
    kq += __shfl_xor_sync(0xffffffffu, kq, 16);
    if (t < 256 && c.lane < 16) {  // 8 warps x 2 key groups each
        red[(c.warp * 16 + v) * 3 + 0] = sk;
        red[(c.warp * 16 + v) * 3 + 1] = sq;
        red[(c.warp * 16 + v) * 3 + 2] = kq;
    }
    cbar();
    const float beta = sc[0], decay = sc[1];
    if (c.warp == 0) {
        float o2 = 0.f;
        if (c.lane < 16) {
            float SK = 0.f, SQ = 0.f, KQ = 0.f;
#pragma unroll
            for (int w = 0; w < 8; ++w) {
                SK += red[(w * 16 + c.lane) * 3 + 0];
                SQ += red[(w * 16 + c.lane) * 3 + 1];
                KQ += red[(w * 16 + c.lane) * 3 + 2];
            }
            const float e = beta * (vs[c.lane] - decay * SK);
            const float o = bfr(decay * SQ + KQ * e);
            es[c.lane] = e;
            if (MK_GDNFUSE) os_[c.lane] = o;
            else P.scratch[S_OGDN + h * 128 + j * 16 + c.lane] = o;
            o2 = o * o;
        }
        o2 = warp_sum(o2);
        if (c.lane == 0) {
#if MK_SSTAG
            st_tag((u64*)(P.scratch + S_SS) + h * NSL + j, ep, o2);
#else
            P.scratch[S_SS + h * NSL + j] = o2;
#if MK_GDNFUSE && !MK_HEADBUF
            if (!(P.debug_flags & 4)) red_release_add(row_counter(P, 18 + h), 1u);
#endif
#endif
        }
#if MK_HEADBUF
        // out_proj input without the head's rstd (applied by the MLP prologue)
        if (c.lane < SLV) us[c.lane] = bfr(sp[SP_GNW + j * SLV + c.lane] * os_[c.lane]) * silu(zs[c.lane]);
#endif
    }
    cbar();
    if (t < 256) {
        const float e = es[v];
        float4 na, nb;
        na.x = fmaf(decay, sa.x, ka.x * e); na.y = fmaf(decay, sa.y, ka.y * e);
        na.z = fmaf(decay, sa.z, ka.z * e); na.w = fmaf(decay, sa.w, ka.w * e);
        nb.x = fmaf(decay, sb.x, kb.x * e); nb.y = fmaf(decay, sb.y, kb.y * e);
        nb.z = fmaf(decay, sb.z, kb.z * e); nb.w = fmaf(decay, sb.w, kb.w * e);
        __stcg((float4*)S, na);
        __stcg((float4*)S + 1, nb);
    }
#if MK_GDNFUSE && MK_HEADBUF
    cbar();
    gdn_out_split(c, P, l, seg, us, hb + h * H);
#elif MK_GDNFUSE
#if MK_SSTAG
    if (c.warp == 0) {  // (os_ and zs were written by this warp / before a block barrier)
        float ss = c.lane < NSL ? poll_tag((const u64*)(P.scratch + S_SS) + h * NSL + c.lane, ep, nowait) : 0.f;
#else
    if (!(P.debug_flags & 4)) wait_geq(row_counter(P, 18 + h), NSL);  // ends with a block barrier
    else cbar();
    trace_pt(c, P, pos - P.pos, TR_L * l + 5);
    pause_set(8, 0u);
    if (c.warp == 0) {
        float ss = c.lane < NSL ? __ldcg(P.scratch + S_SS + h * NSL + c.lane) : 0.f;
#endif
        ss = warp_sum(ss);
        if (c.lane < SLV) {
            const float r = rsqrtf(ss * (1.0f / DV) + EPS);
            const float n = bfr(sp[SP_GNW + j * SLV + c.lane] * bfr(os_[c.lane] * r));
            us[c.lane] = bfr(n * silu(zs[c.lane]));
        }
    }
    cbar();
#if MK_SSTAG
    trace_pt(c, P, pos - P.pos, TR_L * l + 5);
    pause_set(8, 0u);
#endif
    gdn_out_split(c, P, l, seg, us, xn);
#else
    (void)seg;
#endif
    (void)xn;  // one of xn / hb is unused, depending on the build options
    (void)hb;
}

// rs[h] <- rstd of GDN head h from its 8 partial sums of squares (threads < 128; the caller block-syncs before use).
__device__ __forceinline__ void head_rstd(const Ctx& c, const LuceMkParams& P, float* rs) {
    if (c.tid < DH * NSL) {
        float ss = __ldcg(P.scratch + S_SS + c.tid);
        ss += __shfl_xor_sync(0xffffffffu, ss, 1);
        ss += __shfl_xor_sync(0xffffffffu, ss, 2);
        ss += __shfl_xor_sync(0xffffffffu, ss, 4);
        if ((c.tid & 7) == 0) rs[c.tid >> 3] = rsqrtf(ss * (1.0f / DV) + EPS);
    }
}

// acts[0..2048) <- bf16(bf16(w * bf16(o * rstd_head)) * silu(z)) for the out_proj matvec.
__device__ __forceinline__ void gdn_out_act(Ctx& c, const LuceMkParams& P, int l) {
    const float* sp = P.sblob + (long long)l * SP;
#if MK_PROLOGUE2
    // every global load issued up front (one L2 round trip instead of one per loop iteration)
    constexpr int IT = (DH * DV + NCT - 1) / NCT;
    float* rs = c.misc() + 1984;  // 16 head rstd (block_sum uses misc + 2000)
    float o[IT], z[IT];
#pragma unroll
    for (int k = 0; k < IT; ++k) {
        const int i = c.tid + k * NCT;
        o[k] = z[k] = 0.f;
        if (i < DH * DV) {
            o[k] = __ldcg(P.scratch + S_OGDN + i);
            z[k] = __ldcg(P.scratch + S_RAW + (i >> 7) * GDN_HROWS + GZ + (i & 127));
        }
    }
    head_rstd(c, P, rs);
    cbar();
#pragma unroll
    for (int k = 0; k < IT; ++k) {
        const int i = c.tid + k * NCT;
        if (i < DH * DV) {
            const float n = bfr(sp[SP_GNW + (i & 127)] * bfr(o[k] * rs[i >> 7]));
            c.acts()[i] = bfr(n * silu(z[k]));
        }
    }
#else
#pragma unroll 1
    for (int i = c.tid; i < DH * DV; i += NCT) {
        const int h = i >> 7;
        float ss = 0.f;
#pragma unroll
        for (int s = 0; s < NSL; ++s) ss += __ldcg(P.scratch + S_SS + h * NSL + s);
        const float r = rsqrtf(ss * (1.0f / DV) + EPS);
        const float o = __ldcg(P.scratch + S_OGDN + i);
        const float z = __ldcg(P.scratch + S_RAW + h * GDN_HROWS + GZ + (i & 127));
        const float n = bfr(sp[SP_GNW + (i & 127)] * bfr(o * r));
        c.acts()[i] = bfr(n * silu(z));
    }
#endif
    cbar();
}

}  // namespace mk
