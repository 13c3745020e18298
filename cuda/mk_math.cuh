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
