// mk_matvec.cuh -- warp dot products of one bf16 weight row in shared memory with f32 activations (registers for
// K=1024, shared memory for K=2048/3584), and the block-level RMSNorm that prepares a matvec's input.
#pragma once
#include "mk_ring.cuh"

namespace mk {

// Lane's 32 activations of a K=1024 input: elements it*256 + lane*8 + e.
__device__ __forceinline__ void load_act_regs(float a[32], const float* acts, int lane) {
#pragma unroll
    for (int it = 0; it < 4; ++it) {
        const float4* p = (const float4*)(acts + it * 256 + lane * 8);
        const float4 u = p[0], v = p[1];
        a[it * 8 + 0] = u.x; a[it * 8 + 1] = u.y; a[it * 8 + 2] = u.z; a[it * 8 + 3] = u.w;
        a[it * 8 + 4] = v.x; a[it * 8 + 5] = v.y; a[it * 8 + 6] = v.z; a[it * 8 + 7] = v.w;
    }
}

// Partial (not yet warp-reduced) dot of a 1024-wide bf16 row with register activations.
__device__ __forceinline__ float dot1024_part(const char* row, const float a[32], int lane) {
    const uint4* w = (const uint4*)row;
    uint4 v[4];
#pragma unroll
    for (int it = 0; it < 4; ++it) v[it] = w[it * 32 + lane];
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int it = 0; it < 4; ++it) {
        float f[8];
        unpack8(v[it], f);
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
            s0 = fmaf(f[e], a[it * 8 + e], s0);
            s1 = fmaf(f[e + 1], a[it * 8 + e + 1], s1);
        }
    }
    return s0 + s1;
}

template <int K>
__device__ __forceinline__ float dot_smem_part(const char* row, const float* acts, int lane) {
    const uint4* w = (const uint4*)row;
    float s0 = 0.f, s1 = 0.f;
#pragma unroll 7
    for (int it = 0; it < K / 256; ++it) {
        const uint4 v = w[it * 32 + lane];
        const float4* ap = (const float4*)(acts + it * 256 + lane * 8);
        const float4 x0 = ap[0], x1 = ap[1];
        float f[8];
        unpack8(v, f);
        s0 = fmaf(f[0], x0.x, s0); s1 = fmaf(f[1], x0.y, s1);
        s0 = fmaf(f[2], x0.z, s0); s1 = fmaf(f[3], x0.w, s1);
        s0 = fmaf(f[4], x1.x, s0); s1 = fmaf(f[5], x1.y, s1);
        s0 = fmaf(f[6], x1.z, s0); s1 = fmaf(f[7], x1.w, s1);
    }
    return s0 + s1;
}

// Sum over the consumer threads (red: 16 floats of shared scratch). Ends with a barrier so `red` can be reused.
__device__ __forceinline__ float block_sum(const Ctx& c, float v, float* red) {
    v = warp_sum(v);
    if (c.lane == 0) red[c.warp] = v;
    cbar();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < NCW; ++i) t += red[i];
    cbar();
    return t;
}

// acts <- bf16(RMSNorm(x) * w1p) for this thread's values v[k] = x[tid + k * NCT] (ss: their partial sum of squares).
__device__ __forceinline__ void norm_to_acts(Ctx& c, const float v[3], float ss, const float* w1p) {
    ss = block_sum(c, ss, c.misc() + 2000);
    pause_set(4, 0u);  // (every x load has returned)
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const int i = c.tid + k * NCT;
        if (i < H) c.acts()[i] = bfr(v[k] * r * w1p[i]);
    }
    cbar();
}

// xs <- x (from the residual buffer, or an embedding row when `emb` is set); acts <- bf16(RMSNorm(x) * w1p).
__device__ __forceinline__ void load_x_norm(Ctx& c, const float* xg, const unsigned short* emb, const float* w1p) {
    float v[3], ss = 0.f;
    pause_set(4, 1u);
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const int i = c.tid + k * NCT;
        v[k] = 0.f;
        if (i < H) {
            if (emb) {
                v[k] = __uint_as_float((unsigned)emb[i] << 16);
            } else {
                v[k] = __ldcg(xg + i);
#pragma unroll
                for (int q = 1; q < XC; ++q) v[k] += __ldcg(xg + q * H + i);
            }
        }
        ss = fmaf(v[k], v[k], ss);
    }
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (c.tid + k * NCT < H) c.xs()[c.tid + k * NCT] = v[k];
    norm_to_acts(c, v, ss, w1p);
}

}  // namespace mk
