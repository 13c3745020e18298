// mk_math.cuh -- arithmetic building blocks: bf16 unpacking and rounding, warp sums, activations, and the warp dot
// products of one bf16 weight row in shared memory with f32 activations.
#pragma once
#include "mk_config.cuh"

namespace mk {

// Round-to-nearest-even to bf16 and back (inf / nan unchanged); f2bf: the bf16 bits.
__device__ __forceinline__ float bf16_round(float x) {
    unsigned u = __float_as_uint(x);
    if ((u & 0x7f800000u) == 0x7f800000u) return x;
    u += 0x7fffu + ((u >> 16) & 1u);
    return __uint_as_float(u & 0xffff0000u);
}
__device__ __forceinline__ unsigned short f2bf(float x) { return (unsigned short)(__float_as_uint(bf16_round(x)) >> 16); }
__device__ __forceinline__ float bf2f(unsigned short b) { return __uint_as_float((unsigned)b << 16); }
__device__ __forceinline__ float bf_lo(unsigned w) { return __uint_as_float(w << 16); }
__device__ __forceinline__ float bf_hi(unsigned w) { return __uint_as_float(w & 0xffff0000u); }
// 8 bf16 (one uint4) -> 8 f32
__device__ __forceinline__ void unpack8(const uint4 w, float f[8]) {
    f[0] = bf_lo(w.x); f[1] = bf_hi(w.x); f[2] = bf_lo(w.y); f[3] = bf_hi(w.y);
    f[4] = bf_lo(w.z); f[5] = bf_hi(w.z); f[6] = bf_lo(w.w); f[7] = bf_hi(w.w);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
__device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

// A lane's 32 activations of a K = 1024 input: elements it * 256 + lane * 8 + e.
__device__ __forceinline__ void load_act_regs(float a[32], const float* acts, int lane) {
#pragma unroll
    for (int it = 0; it < 4; ++it) {
        const float4* p = (const float4*)(acts + it * 256 + lane * 8);
        const float4 u = p[0], v = p[1];
        a[it * 8 + 0] = u.x; a[it * 8 + 1] = u.y; a[it * 8 + 2] = u.z; a[it * 8 + 3] = u.w;
        a[it * 8 + 4] = v.x; a[it * 8 + 5] = v.y; a[it * 8 + 6] = v.z; a[it * 8 + 7] = v.w;
    }
}

// Partial (not yet warp-reduced) dot of a lane's 32 bf16 weights (four uint4, elements as load_act_regs) with its
// register activations.
__device__ __forceinline__ float dot1024_regs(const uint4 v[4], const float a[32]) {
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
// Partial dot of a 1024-wide bf16 row in shared memory with register activations.
__device__ __forceinline__ float dot1024_part(const char* row, const float a[32], int lane) {
    const uint4* w = (const uint4*)row;
    uint4 v[4];
#pragma unroll
    for (int it = 0; it < 4; ++it) v[it] = w[it * 32 + lane];
    return dot1024_regs(v, a);
}
// The same for a row in global memory that no thread writes during the launch (read-only path).
__device__ __forceinline__ float dot1024_global_part(const void* row, const float a[32], int lane) {
    const uint4* w = (const uint4*)row;
    uint4 v[4];
#pragma unroll
    for (int it = 0; it < 4; ++it) v[it] = __ldg(w + it * 32 + lane);
    return dot1024_regs(v, a);
}

// Partial dot of a 1024-wide row of the LM head's screening copy (bytes q + 128, luce_mk.h lm8) with register
// activations: sum of a[i] * q[i], exact codes (2^23 + byte, less 2^23 + 128, is exact in f32), f32 products.
__device__ __forceinline__ float dot1024_u8_part(const char* row, const float a[32], int lane) {
    const uint2* w = (const uint2*)row;
    uint2 v[4];
#pragma unroll
    for (int it = 0; it < 4; ++it) v[it] = w[it * 32 + lane];  // elements it * 256 + lane * 8 + e, as load_act_regs
    float s0 = 0.f, s1 = 0.f;
#pragma unroll
    for (int it = 0; it < 4; ++it) {
#pragma unroll
        for (int e = 0; e < 8; e += 2) {
            const unsigned word = e < 4 ? v[it].x : v[it].y;
            const float q0 = __uint_as_float(__byte_perm(word, 0x4b00u, 0x5440u | (e & 3))) - 8388736.0f;
            const float q1 = __uint_as_float(__byte_perm(word, 0x4b00u, 0x5440u | ((e + 1) & 3))) - 8388736.0f;
            s0 = fmaf(q0, a[it * 8 + e], s0);
            s1 = fmaf(q1, a[it * 8 + e + 1], s1);
        }
    }
    return s0 + s1;
}

#if MK_LM_INT_SCORES
// ---- the screened LM head's integer scores (sm_90, NOTES.md v33) ----
// The activations a are written as t (d1 + d2 / 128 + d3 / 128^2 + r / 128^2), t the smallest power of two >=
// max|a| / 127, digits d1 in -127..127, d2 and d3 in -64..64, |r| <= 1/2. Every step is exact in f32 (a scaling by a
// power of two; a number less its nearest integer), so h . q = t (D1 + D2 / 128 + D3 / 128^2) + t e with |e| <=
// 127 * 1024 * (1/2) / 128^2 < 4, where Dk = sum q_i dk_i are exact integer dot products (dp4a).
struct LmDigits {
    int d[3][8];  // the lane's digits, four signed bytes a word, in the order of the row's codes (as dot1024_u8_part)
};
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
// The smallest power of two >= v (v finite and >= 0); 1 for v = 0.
__device__ __forceinline__ float pow2_at_least(float v) {
    return v > 0.f ? __uint_as_float((__float_as_uint(v) + 0x007fffffu) & 0x7f800000u) : 1.f;
}
// The lane's digits of the activations in shared memory (acts, elements as load_act_regs).
__device__ __forceinline__ void lm_digits(const float* acts, int lane, float inv_t, LmDigits& g) {
#pragma unroll
    for (int w = 0; w < 8; ++w) {
        const float4 a = *(const float4*)(acts + (w >> 1) * 256 + lane * 8 + (w & 1) * 4);
        const float av[4] = {a.x, a.y, a.z, a.w};
        unsigned p[3] = {0u, 0u, 0u};
#pragma unroll
        for (int b = 0; b < 4; ++b) {
            const float x = av[b] * inv_t;  // exact
            const float d1 = rintf(x), y = (x - d1) * 128.f;
            const float d2 = rintf(y), z = (y - d2) * 128.f;
            const int k[3] = {(int)d1, (int)d2, (int)rintf(z)};
#pragma unroll
            for (int j = 0; j < 3; ++j) p[j] |= ((unsigned)k[j] & 0xffu) << (8 * b);
        }
#pragma unroll
        for (int j = 0; j < 3; ++j) g.d[j][w] = (int)p[j];
    }
}
// The lane's part of (h . q) / t for one screening row: D1 + D2 / 128 + D3 / 128^2 over its 32 codes, two f32
// roundings (each |Dk| < 2^24 is exact in f32). A code byte q + 128 with its top bit flipped is q as a signed byte.
__device__ __forceinline__ float dot1024_u8_dp4a_part(const char* row, const LmDigits& g, int lane) {
    const uint2* w = (const uint2*)row;
    uint2 v[4];
#pragma unroll
    for (int it = 0; it < 4; ++it) v[it] = w[it * 32 + lane];
#pragma unroll
    for (int it = 0; it < 4; ++it) {
        v[it].x ^= 0x80808080u;
        v[it].y ^= 0x80808080u;
    }
    int D[3] = {0, 0, 0};
#pragma unroll
    for (int j = 0; j < 3; ++j) {
#pragma unroll
        for (int it = 0; it < 4; ++it) {
            D[j] = __dp4a((int)v[it].x, g.d[j][2 * it], D[j]);
            D[j] = __dp4a((int)v[it].y, g.d[j][2 * it + 1], D[j]);
        }
    }
    return fmaf((float)D[2], 1.f / 16384.f, fmaf((float)D[1], 1.f / 128.f, (float)D[0]));
}
#endif

// Partial dot of a K-wide bf16 row with activations in shared memory (K = 2048: o_proj).
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

// Split-K of a transposed matrix (rows = input columns k, H outputs per row) over the rows of one ring chunk:
// acc[j] += hv[i] * W[i][tid + j * NCT] for the chunk's n rows. Thread t owns outputs t, t + 480, t + 960, so the
// block's partial needs no atomics (shared-memory f32 atomics were a CAS loop with 8-way bank conflicts).
__device__ __forceinline__ void splitk_rows(const char* base, int n, const float* hv, int tid, float acc[3]) {
    const unsigned short* w = (const unsigned short*)base + tid;
    const bool has2 = tid + 2 * NCT < H;
#pragma unroll 4
    for (int i = 0; i < n; ++i) {
        const float h = hv[i];
        acc[0] = fmaf(h, bf2f(w[i * H]), acc[0]);
        acc[1] = fmaf(h, bf2f(w[i * H + NCT]), acc[1]);
        if (has2) acc[2] = fmaf(h, bf2f(w[i * H + 2 * NCT]), acc[2]);
    }
}

}  // namespace mk
