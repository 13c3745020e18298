// pf_misc.cuh -- the prefill's row-wise kernels: the embedding lookup into the f32 residual stream X [N][1024], the
// RMSNorm (1 + w) that turns X into the fp16 input of the next GEMM, and the end: the final norm of the last position,
// the tied LM head over all 248,320 rows (optional logits) and the argmax, which becomes the decode kernel's first
// input (last_token).
#pragma once
#include "mk_math.cuh"
#include "pf_gemm.cuh"

namespace mk {
namespace pf {

__global__ void __launch_bounds__(256) embed_kernel(const int* tokens, const unsigned short* embed, float* X) {
    const int t = blockIdx.x;
    const unsigned short* row = embed + (size_t)tokens[t] * H;
    for (int i = threadIdx.x; i < H; i += 256) X[(size_t)t * H + i] = bf2f(row[i]);
}

// Block (256 threads) sum; every thread gets the total.
__device__ __forceinline__ float block_sum256(float v, float* red) {
    v = warp_sum(v);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
    __syncthreads();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < 8; ++i) t += red[i];
    __syncthreads();
    return t;
}

// Xn[t] = fp16(RMSNorm(X[t]) * w1p), one block per token.
__global__ void __launch_bounds__(256) rmsnorm_kernel(const float* X, const float* w1p, unsigned short* Xn) {
    __shared__ float red[8];
    const int t = blockIdx.x;
    const float4 x = *(const float4*)(X + (size_t)t * H + threadIdx.x * 4);
    const float ss = block_sum256(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w, red);
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
    const float* w = w1p + threadIdx.x * 4;
    unsigned short* o = Xn + (size_t)t * H + threadIdx.x * 4;
    o[0] = f2h(x.x * r * w[0]);
    o[1] = f2h(x.y * r * w[1]);
    o[2] = f2h(x.z * r * w[2]);
    o[3] = f2h(x.w * r * w[3]);
}

// Order-preserving key: larger logit first, then the smaller token id (as the decode kernel's argmax).
__device__ __forceinline__ unsigned long long pf_pack_best(float v, int idx) {
    unsigned u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned)idx);
}

// LM head of the last position: every block normalises X[n - 1] itself (f32, as the decode's LM head), then its warps
// take rows r = global warp, + total warps, ...; logits (optional) and the packed argmax (atomicMax into *best).
__global__ void __launch_bounds__(256) lm_head_kernel(const float* xlast, const float* w1p, const unsigned short* embed,
                                                      float* logits, unsigned long long* best) {
    __shared__ __align__(16) float acts[H];
    __shared__ float red[8];
    __shared__ unsigned long long wbest[8];
    const float4 x = *(const float4*)(xlast + threadIdx.x * 4);
    const float ss = block_sum256(x.x * x.x + x.y * x.y + x.z * x.z + x.w * x.w, red);
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
    const float* w = w1p + threadIdx.x * 4;
    acts[threadIdx.x * 4 + 0] = x.x * r * w[0];
    acts[threadIdx.x * 4 + 1] = x.y * r * w[1];
    acts[threadIdx.x * 4 + 2] = x.z * r * w[2];
    acts[threadIdx.x * 4 + 3] = x.w * r * w[3];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float a[32];
    load_act_regs(a, acts, lane);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    for (int row = blockIdx.x * 8 + warp; row < V; row += gridDim.x * 8) {
        const float d = warp_sum(dot1024_part((const char*)(embed + (size_t)row * H), a, lane));
        if (logits && lane == 0) logits[row] = d;
        if (d > bv) {
            bv = d;
            bi = row;
        }
    }
    if (lane == 0) wbest[warp] = bi == 0x7fffffff ? 0ull : pf_pack_best(bv, bi);
    __syncthreads();
    if (threadIdx.x == 0) {
        unsigned long long k = 0;
        for (int i = 0; i < 8; ++i) k = wbest[i] > k ? wbest[i] : k;
        atomicMax(best, k);
    }
}

__global__ void finish_kernel(const unsigned long long* best, int* last_token) {
    const int tok = (int)(0xffffffffu - (unsigned)(*best & 0xffffffffull));
    *last_token = (tok >= 0 && tok < V) ? tok : 0;
}

}  // namespace pf
}  // namespace mk
