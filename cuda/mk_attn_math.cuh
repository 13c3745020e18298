// mk_attn_math.cuh -- per-head arithmetic of gated attention: the per-head RMSNorm and the partial RoPE as HF forms
// it (shared by the decode items, mk_attn.cuh, and the prefill, pf_attn.cuh).
#pragma once
#include "mk_math.cuh"

namespace mk {

// One warp: dst[d0 + e] <- RMSNorm(x) * wv (a q or k head; 8 values and their 8 weights per lane) when `scale`, else
// x (v).
__device__ __forceinline__ void head_norm8_w(float* dst, const float x[8], const float wv[8], int d0, bool scale) {
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) ss = fmaf(x[e], x[e], ss);
    const float r = rsqrtf(warp_sum(ss) * (1.0f / HD) + EPS);
#pragma unroll
    for (int e = 0; e < 8; ++e) dst[d0 + e] = scale ? x[e] * r * wv[e] : x[e];
}
// The same with the weights read from w[d0 + e].
__device__ __forceinline__ void head_norm8(float* dst, const float x[8], const float* w, int d0, bool scale) {
    float wv[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) wv[e] = scale ? w[d0 + e] : 0.f;
    head_norm8_w(dst, x, wv, d0, scale);
}

// Partial RoPE of one head (first 64 dims, rotate-half pairing) for the pair (i, i + 32), i < 32.
__device__ __forceinline__ void rope_pair(float* arr, int i, int pos) {
    const float inv = 1.0f / powf(10000000.0f, (float)(2 * i) / (float)ROT);
    // angle as HF forms it (f32 product), reduced to [-pi, pi] in double, then the fast sin/cos (abs err ~1e-6)
    const double ang = (double)((float)pos * inv);
    const float red = (float)(ang - 6.283185307179586 * rint(ang * 0.15915494309189535));
    float sn, cs;
    __sincosf(red, &sn, &cs);
    const float a = arr[i], b = arr[i + 32];
    arr[i] = a * cs - b * sn;
    arr[i + 32] = b * cs + a * sn;
}

}  // namespace mk
