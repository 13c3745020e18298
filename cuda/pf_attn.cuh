// pf_attn.cuh -- the prefill of a gated attention layer, after the qkv GEMM (Y [N][5120] f32, by KV group g: 4 x (q
// 256 | gate 256) | k 256 | v 256).
//   attn_prep_kernel  per token: q and k RMSNorm (1 + w) and partial RoPE (mk_attn_math.cuh, as the decode does),
//                     q kept in f32; k and v appended to the bf16 KV cache the decode kernel reads
//   attn_kernel       causal attention with online softmax over the cache: a block holds 4 queries x the 4 query
//                     heads of one KV group (a warp each) and streams the group's K/V in 32-position tiles through
//                     shared memory; out = softmax(q k / 16) v * sigmoid(gate), fp16 [N][2048] for the o_proj GEMM
// CUDA cores only (v1): tensor-core attention is the next step for long prompts.
#pragma once
#include "mk_attn_math.cuh"
#include "mk_layout.cuh"
#include "pf_gemm.cuh"

namespace mk {
namespace pf {

constexpr int AQ = 4;      // queries per attention block
constexpr int AKT = 32;    // key positions per shared-memory tile
constexpr int AKU = 4;     // key positions per inner step (AKT % AKU == 0)

__global__ void __launch_bounds__(384) attn_prep_kernel(const float* Y, const float* sp, float* Qa,
                                                        unsigned short* kc, unsigned short* vc, int max_seq) {
    __shared__ __align__(16) float hs[12][HD];
    const int t = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d0 = lane * 8;
    // warps 0-7: query head j (group j / 4); 8, 9: the groups' keys; 10, 11: their values
    const int g = warp < 8 ? warp >> 2 : (warp - 8) & 1;
    const int off = warp < 8 ? 2 * HD * (warp & 3) : warp < 10 ? FK : FV;
    const float* src = Y + (size_t)t * FA_ROWS + FA_GROWS * g + off + d0;
    float x[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = src[e];
    head_norm8(hs[warp], x, sp + (warp < 8 ? SP_QN : SP_KN), d0, warp < 10);
    __syncwarp();
    if (warp < 10) rope_pair(hs[warp], lane, t);
    __syncwarp();
    if (warp < 8) {
#pragma unroll
        for (int e = 0; e < 8; ++e) Qa[(size_t)t * (NQH * HD) + warp * HD + d0 + e] = hs[warp][d0 + e];
    } else {
        unsigned short* cache = (warp < 10 ? kc : vc) + ((size_t)g * max_seq + t) * HD + d0;
#pragma unroll
        for (int e = 0; e < 8; ++e) cache[e] = f2bf(hs[warp][d0 + e]);
    }
}

__global__ void __launch_bounds__(512) attn_kernel(const float* Qa, const float* Y, const unsigned short* kc,
                                                   const unsigned short* vc, unsigned short* out, int n, int max_seq) {
    __shared__ __align__(16) unsigned short ks[AKT][HD], vs[AKT][HD];
    const int g = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, d0 = lane * 8;
    const int t = blockIdx.x * AQ + (warp >> 2), hh = warp & 3, j = g * QPG + hh;
    const int t_last = min(n - 1, blockIdx.x * AQ + AQ - 1);
    const bool active = t < n;
    float q[8], acc[8], m = -INFINITY, ls = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        q[e] = active ? Qa[(size_t)t * (NQH * HD) + j * HD + d0 + e] * 0.0625f : 0.f;  // 1/sqrt(256)
        acc[e] = 0.f;
    }
    const unsigned short* kg = kc + (size_t)g * max_seq * HD;
    const unsigned short* vg = vc + (size_t)g * max_seq * HD;
    for (int p0 = 0; p0 <= t_last; p0 += AKT) {
        for (int i = threadIdx.x; i < AKT * HD / 8; i += 512) {  // 16-byte pieces of the K and V tiles
            const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
            const bool ok = p0 + r <= t_last;
            *(uint4*)&ks[r][c] = ok ? *(const uint4*)(kg + (size_t)(p0 + r) * HD + c) : make_uint4(0, 0, 0, 0);
            *(uint4*)&vs[r][c] = ok ? *(const uint4*)(vg + (size_t)(p0 + r) * HD + c) : make_uint4(0, 0, 0, 0);
        }
        __syncthreads();
        const int pend = active ? min(AKT, t - p0 + 1) : 0;  // causal: positions <= t
        for (int r = 0; r < pend; r += AKU) {  // AKU positions at once: their reductions overlap
            float s[AKU];
#pragma unroll
            for (int u = 0; u < AKU; ++u) {
                float kf[8];
                unpack8(*(const uint4*)&ks[r + u][d0], kf);  // rows past pend are in the tile (r + u < AKT)
                s[u] = 0.f;
#pragma unroll
                for (int e = 0; e < 8; ++e) s[u] = fmaf(q[e], kf[e], s[u]);
            }
#pragma unroll
            for (int u = 0; u < AKU; ++u) s[u] = r + u < pend ? warp_sum(s[u]) : -INFINITY;
            float mn = m;
#pragma unroll
            for (int u = 0; u < AKU; ++u) mn = fmaxf(mn, s[u]);
            const float corr = expf(m - mn);  // 0 while m is -inf (s[0] is a real score: r < pend)
            ls *= corr;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[e] *= corr;
#pragma unroll
            for (int u = 0; u < AKU; ++u) {
                const float pr = expf(s[u] - mn);  // 0 for positions past pend
                float vf[8];
                unpack8(*(const uint4*)&vs[r + u][d0], vf);
                ls += pr;
#pragma unroll
                for (int e = 0; e < 8; ++e) acc[e] = fmaf(pr, vf[e], acc[e]);
            }
            m = mn;
        }
        __syncthreads();
    }
    if (!active) return;
    const float* gate = Y + (size_t)t * FA_ROWS + FA_GROWS * g + 2 * HD * hh + HD + d0;
    unsigned short* o = out + (size_t)t * (NQH * HD) + j * HD + d0;
#pragma unroll
    for (int e = 0; e < 8; ++e) o[e] = f2h((acc[e] / ls) * sigm(gate[e]));
}

}  // namespace pf
}  // namespace mk
