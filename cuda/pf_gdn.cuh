// pf_gdn.cuh -- the prefill of a Gated DeltaNet layer, chunked (luce_bench/kernels/chunked.py is the same algorithm in
// Python, tested against the token-by-token recurrence): four kernels after the in_proj GEMM.
//   gdn_conv_kernel   causal depthwise conv (4 taps) + SiLU of the q/k/v channels; leaves the last 3 raw inputs in
//                     conv_hist where the decode kernel reads them (slot = position % 4)
//   gdn_chunk_kernel  per (head, chunk of 64 tokens), all in parallel: L2 norms, beta, log decay g and its cumulative
//                     sum G; A = strictly lower beta_i (k_i . k_j) exp(G_i - G_j); (I + A) [U | W] = [beta v | beta
//                     exp(G) k] by forward substitution; M = lower (q_i . k_j) exp(G_i - G_j)
//   gdn_scan_kernel   per (head, 16-column value slice), sequential over chunks with the f32 state slice: E = U - W S,
//                     O = exp(G) (Q S) + M E, S <- exp(G_C) S + K^T (exp(G_C - G) E); leaves S in the decode layout
//   gdn_gate_kernel   the gated RMSNorm of each head's output times silu(z), as fp16 for the out_proj GEMM
// Waits for: the in_proj GEMM's f32 output Y [N][8224] (head-major rows: q 128 | k 128 | v 128 | z 128 | b | a).
#pragma once
#include "mk_layout.cuh"
#include "mk_math.cuh"
#include "pf_gemm.cuh"

namespace mk {
namespace pf {

constexpr int GC = 64;            // chunk length (tokens)
constexpr int GLD = DK + 1;       // padded f32 row of a 128-wide tile in shared memory
constexpr int GRHS = DK + DV;     // the right-hand side [beta v | beta exp(G) k]

// Per-head arrays the chunk kernel leaves for the scan: [16 heads][Np tokens][128] (Q, K, U, W), G [16][Np],
// M [16][Np / 64][64][64].
struct GdnWork {
    float *q, *k, *u, *w, *g, *m;
    int np;  // tokens padded to a multiple of GC
};

// hist0: a copy of hist from before this prefill (the inputs of positions pos - 3 .. pos - 1, where pos > 0), or null
__global__ void __launch_bounds__(128) gdn_conv_kernel(const float* __restrict__ Y, const float* __restrict__ wconv,
                                                       float* __restrict__ hist, const float* __restrict__ hist0,
                                                       float* __restrict__ C, int n, int pos) {
    const int ch = blockIdx.x * 128 + threadIdx.x;               // conv channel: [q 16 x 128 | k | v]
    const int ycol = ((ch & 2047) >> 7) * GDN_HROWS + (ch >> 11) * 128 + (ch & 127);
    const int t0 = blockIdx.y * GC, t1 = min(n, t0 + GC);
    const float4 w = *(const float4*)(wconv + ch * 4);
    auto raw = [&](int t) {  // the conv input at prompt index t (t < 0: before the prompt, from the history)
        if (t >= 0) return Y[(size_t)t * GDN_ROWS + ycol];
        return hist0 != nullptr && pos + t >= 0 ? hist0[ch * 4 + ((pos + t) & 3)] : 0.f;
    };
    float r3 = raw(t0 - 3), r2 = raw(t0 - 2), r1 = raw(t0 - 1);  // inputs at t - 3, t - 2, t - 1
    if (t0 == 0 && pos == 0)
        for (int t = n - 3; t < 0; ++t) hist[ch * 4 + (t & 3)] = 0.f;  // a prompt shorter than 3: zeros before it
    for (int tb = t0; tb < t1; tb += 8) {  // 8 loads in flight, then 8 outputs
        float in[8];
#pragma unroll
        for (int e = 0; e < 8; ++e) in[e] = tb + e < t1 ? Y[(size_t)(tb + e) * GDN_ROWS + ycol] : 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
            const int t = tb + e;
            if (t >= t1) break;
            const float cur = in[e];
            float acc = w.w * cur;
            acc = fmaf(w.z, r1, acc);
            acc = fmaf(w.y, r2, acc);
            acc = fmaf(w.x, r3, acc);
            C[(size_t)t * CONV + ch] = silu(acc);
            if (t >= n - 3) hist[ch * 4 + ((pos + t) & 3)] = cur;  // what the next decode step reads
            r3 = r2;
            r2 = r1;
            r1 = cur;
        }
    }
}

// A [64][128] f32 tile from global memory (row r at src + r ld; rows >= valid read as zeros) into padded shared rows,
// 8 float4 loads in flight per thread (256 threads).
__device__ __forceinline__ void load_tile64x128(float (*dst)[GLD], const float* __restrict__ src, size_t ld, int valid,
                                                int tid) {
    float4 r4[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {  // 64 rows x 32 float4: row i / 32, columns 4 (i % 32)
        const int i = tid + e * 256, r = i >> 5;
        r4[e] = r < valid ? *(const float4*)(src + r * ld + (i & 31) * 4) : make_float4(0.f, 0.f, 0.f, 0.f);
    }
#pragma unroll
    for (int e = 0; e < 8; ++e) {
        const int i = tid + e * 256, r = i >> 5, d = (i & 31) * 4;
        dst[r][d] = r4[e].x;
        dst[r][d + 1] = r4[e].y;
        dst[r][d + 2] = r4[e].z;
        dst[r][d + 3] = r4[e].w;
    }
}

// Token t's gates in head h, from its in_proj rows b and a: beta = sigmoid(b) and the log decay
// g = -exp(A_log) softplus(a + dt_bias) <= 0 (sp[SP_NEGA] holds -exp(A_log)); both 0 for a row past the prompt (!ok).
__device__ __forceinline__ void gdn_gates(const float* Y, const float* sp, int h, int t, bool ok, float& beta,
                                          float& g) {
    const float b = ok ? Y[(size_t)t * GDN_ROWS + h * GDN_HROWS + GB] : 0.f;
    const float a = ok ? Y[(size_t)t * GDN_ROWS + h * GDN_HROWS + GA] : 0.f;
    const float x = a + sp[SP_DTB + h];
    const float softplus = x > 20.f ? x : log1pf(expf(x));
    beta = ok ? sigm(b) : 0.f;
    g = ok ? sp[SP_NEGA + h] * softplus : 0.f;
}

// Shared memory of gdn_chunk_kernel (floats).
struct ChunkSmem {
    float q[GC][GLD], k[GC][GLD], v[GC][GLD];
    float a[GC][GC + 1];
    float x[GC][GRHS];  // the right-hand side, solved in place into [U | W]
    float beta[GC], g[GC], G[GC], eg[GC];
};

__global__ void __launch_bounds__(256, 1) gdn_chunk_kernel(const float* C, const float* Y, const float* sp, GdnWork gw,
                                                        int n) {
    extern __shared__ __align__(16) unsigned char pf_smem[];
    ChunkSmem& s = *reinterpret_cast<ChunkSmem*>(pf_smem);
    const int h = blockIdx.x, c = blockIdx.y, t0 = c * GC, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int valid = min(GC, n - t0);
    {  // conv outputs of this head (zeros past the prompt): q, k, v
        const float* c0 = C + (size_t)t0 * CONV + h * 128;
        load_tile64x128(s.q, c0, CONV, valid, tid);
        load_tile64x128(s.k, c0 + 2048, CONV, valid, tid);
        load_tile64x128(s.v, c0 + 4096, CONV, valid, tid);
    }
    if (tid < GC) gdn_gates(Y, sp, h, t0 + tid, tid < valid, s.beta[tid], s.g[tid]);
    __syncthreads();
    for (int r = warp; r < GC; r += 8) {  // L2 norms (q also scaled by 1/sqrt(128)), one warp per row
        float qq = 0.f, kk = 0.f;
        for (int d = lane; d < DK; d += 32) {
            qq = fmaf(s.q[r][d], s.q[r][d], qq);
            kk = fmaf(s.k[r][d], s.k[r][d], kk);
        }
        const float rq = rsqrtf(warp_sum(qq) + EPS), rk = rsqrtf(warp_sum(kk) + EPS);
        for (int d = lane; d < DK; d += 32) {
            s.q[r][d] = s.q[r][d] * rq * 0.08838834764831845f;
            s.k[r][d] = s.k[r][d] * rk;
        }
    }
    if (tid == 0) {
        float acc = 0.f;
        for (int r = 0; r < GC; ++r) s.G[r] = acc += s.g[r];
    }
    __syncthreads();
    if (tid < GC) s.eg[tid] = expf(s.G[tid]);
    __syncthreads();
    // A (strictly lower) and M (lower with the diagonal): thread -> row i = tid / 4, columns j = 16 (tid % 4) + 0..15
    {
        const int i = tid >> 2, j0 = (tid & 3) * 16;
        float kk[16], qk[16];
#pragma unroll
        for (int jj = 0; jj < 16; ++jj) kk[jj] = qk[jj] = 0.f;
        for (int d = 0; d < DK; ++d) {
            const float ki = s.k[i][d], qi = s.q[i][d];
#pragma unroll
            for (int jj = 0; jj < 16; ++jj) {
                const float kj = s.k[j0 + jj][d];
                kk[jj] = fmaf(ki, kj, kk[jj]);
                qk[jj] = fmaf(qi, kj, qk[jj]);
            }
        }
        float* m = gw.m + (((size_t)h * (gw.np / GC) + c) * GC + i) * GC;
#pragma unroll
        for (int jj = 0; jj < 16; ++jj) {
            const int j = j0 + jj;
            const float dec = j <= i ? expf(s.G[i] - s.G[j]) : 0.f;
            s.a[i][j] = j < i ? s.beta[i] * kk[jj] * dec : 0.f;
            m[j] = qk[jj] * dec;
        }
    }
    for (int i = tid; i < GC * GRHS; i += 256) {
        const int r = i / GRHS, col = i % GRHS;
        s.x[r][col] = col < DV ? s.beta[r] * s.v[r][col] : s.beta[r] * s.eg[r] * s.k[r][col - DV];
    }
    __syncthreads();
    // forward substitution, one column per thread: x_i -= sum_{j < i} A[i][j] x_j
    for (int i = 1; i < GC; ++i) {
        float acc[4] = {s.x[i][tid], 0.f, 0.f, 0.f};  // four chains: the sum is latency-bound
        int j = 0;
        for (; j + 4 <= i; j += 4)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[e] = fmaf(-s.a[i][j + e], s.x[j + e][tid], acc[e]);
        for (; j < i; ++j) acc[0] = fmaf(-s.a[i][j], s.x[j][tid], acc[0]);
        s.x[i][tid] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
    __syncthreads();
    const size_t base = ((size_t)h * gw.np + t0) * DK;
    for (int i = tid; i < GC * DK / 4; i += 256) {  // float4 stores
        const int r = i >> 5, d = (i & 31) * 4;
        *(float4*)(gw.q + base + 4 * i) = make_float4(s.q[r][d], s.q[r][d + 1], s.q[r][d + 2], s.q[r][d + 3]);
        *(float4*)(gw.k + base + 4 * i) = make_float4(s.k[r][d], s.k[r][d + 1], s.k[r][d + 2], s.k[r][d + 3]);
        *(float4*)(gw.u + base + 4 * i) = make_float4(s.x[r][d], s.x[r][d + 1], s.x[r][d + 2], s.x[r][d + 3]);
        *(float4*)(gw.w + base + 4 * i) =
            make_float4(s.x[r][DV + d], s.x[r][DV + d + 1], s.x[r][DV + d + 2], s.x[r][DV + d + 3]);
    }
    if (tid < GC) gw.g[(size_t)h * gw.np + t0 + tid] = s.G[tid];
}

// A state slice [128 keys][16 values] into shared rows of stride ld: from the decode layout ([k / 8][v][k % 8], the
// state the cached positions left) when `cont`, else zeros (a prompt at position 0)
__device__ __forceinline__ void load_state_slice(float* dst, int ld, const float* src, bool cont, int tid, int threads) {
    for (int i = tid; i < DK * SLV; i += threads) {
        const int kk = i >> 4, v = i & 15;
        dst[kk * ld + v] = cont ? src[((kk >> 3) * SLV + v) * 8 + (kk & 7)] : 0.f;
    }
}

// Shared memory of gdn_scan_kernel (floats).
struct ScanSmem {
    float w[GC][GLD], q[GC][GLD], k[GC][GLD];
    float m[GC][GC + 1];
    float u[GC][SLV], e[GC][SLV];
    float s[DK][SLV];
    float G[GC], eg[GC];
};

__global__ void __launch_bounds__(256, 1) gdn_scan_kernel(GdnWork gw, float* O, float* state, int n, int pos) {
    extern __shared__ __align__(16) unsigned char pf_smem[];
    ScanSmem& s = *reinterpret_cast<ScanSmem*>(pf_smem);
    const int h = blockIdx.x >> 3, j = blockIdx.x & 7, tid = threadIdx.x;
    load_state_slice(&s.s[0][0], SLV, state + (size_t)(h * NSL + j) * DK * SLV, pos > 0, tid, 256);
    const int nch = gw.np / GC;
    for (int c = 0; c < nch; ++c) {
        const int t0 = c * GC;
        const size_t base = ((size_t)h * gw.np + t0) * DK;
        {  // M [64][64] (4 float4 per thread), this slice of U [64][16] (one float4) and G, all in flight together
            const float* m = gw.m + ((size_t)h * nch + c) * GC * GC;
            float4 m4[4];
#pragma unroll
            for (int e = 0; e < 4; ++e) m4[e] = *(const float4*)(m + 4 * (tid + e * 256));
            const float4 u4 = *(const float4*)(gw.u + base + (tid >> 2) * DK + j * SLV + (tid & 3) * 4);
            const float g = tid < GC ? gw.g[(size_t)h * gw.np + t0 + tid] : 0.f;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i = tid + e * 256, r = i >> 4, c4 = (i & 15) * 4;
                s.m[r][c4] = m4[e].x;
                s.m[r][c4 + 1] = m4[e].y;
                s.m[r][c4 + 2] = m4[e].z;
                s.m[r][c4 + 3] = m4[e].w;
            }
            *(float4*)&s.u[tid >> 2][(tid & 3) * 4] = u4;
            if (tid < GC) s.G[tid] = g;
        }
        load_tile64x128(s.w, gw.w + base, DK, GC, tid);
        load_tile64x128(s.q, gw.q + base, DK, GC, tid);
        load_tile64x128(s.k, gw.k + base, DK, GC, tid);
        __syncthreads();
        const float glast = s.G[GC - 1];
        if (tid < GC) s.eg[tid] = expf(glast - s.G[tid]);
        // E = U - W S: thread -> row r = tid / 4, columns v0 .. v0 + 3
        const int r = tid >> 2, v0 = (tid & 3) * 4;
        float e4[4] = {s.u[r][v0], s.u[r][v0 + 1], s.u[r][v0 + 2], s.u[r][v0 + 3]};
        for (int d = 0; d < DK; ++d) {
            const float wv = s.w[r][d];
#pragma unroll
            for (int x = 0; x < 4; ++x) e4[x] = fmaf(-wv, s.s[d][v0 + x], e4[x]);
        }
#pragma unroll
        for (int x = 0; x < 4; ++x) s.e[r][v0 + x] = e4[x];
        __syncthreads();
        // O = exp(G) (Q S) + M E, with the chunk's start state
        float o4[4] = {0.f, 0.f, 0.f, 0.f};
        for (int d = 0; d < DK; ++d) {
            const float qv = s.q[r][d];
#pragma unroll
            for (int x = 0; x < 4; ++x) o4[x] = fmaf(qv, s.s[d][v0 + x], o4[x]);
        }
        const float egr = expf(s.G[r]);
#pragma unroll
        for (int x = 0; x < 4; ++x) o4[x] *= egr;
        for (int t = 0; t <= r; ++t) {
            const float mv = s.m[r][t];
#pragma unroll
            for (int x = 0; x < 4; ++x) o4[x] = fmaf(mv, s.e[t][v0 + x], o4[x]);
        }
        if (t0 + r < n)
#pragma unroll
            for (int x = 0; x < 4; ++x) O[(size_t)(t0 + r) * (DH * DV) + h * DV + j * SLV + v0 + x] = o4[x];
        __syncthreads();
        // S <- exp(G_C) S + K^T (exp(G_C - G) E): thread -> key row kr = tid / 2, columns 8 (tid % 2) + 0..7
        const int kr = tid >> 1, w0 = (tid & 1) * 8;
        const float dec = expf(glast);
        float s8[8];
#pragma unroll
        for (int x = 0; x < 8; ++x) s8[x] = dec * s.s[kr][w0 + x];
        for (int t = 0; t < GC; ++t) {
            const float kv = s.k[t][kr] * s.eg[t];
#pragma unroll
            for (int x = 0; x < 8; ++x) s8[x] = fmaf(kv, s.e[t][w0 + x], s8[x]);
        }
        __syncthreads();
#pragma unroll
        for (int x = 0; x < 8; ++x) s.s[kr][w0 + x] = s8[x];
        __syncthreads();
    }
    // the decode layout: [head][value slice][k / 8][v][k % 8]
    float* dst = state + (size_t)(h * NSL + j) * DK * SLV;
    for (int i = tid; i < DK * SLV; i += 256) {
        const int kk = i >> 4, v = i & 15;
        dst[((kk >> 3) * SLV + v) * 8 + (kk & 7)] = s.s[kk][v];
    }
}

// Gated RMSNorm per (token, head): u = w * (o / rms(o)) * silu(z), fp16 [N][2048] for the out_proj GEMM.
__global__ void __launch_bounds__(512) gdn_gate_kernel(const float* O, const float* Y, const float* gnw,
                                                       unsigned short* U, int n) {
    const int t = blockIdx.x, h = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float4 o = *(const float4*)(O + (size_t)t * (DH * DV) + h * DV + lane * 4);
    float ss = o.x * o.x + o.y * o.y + o.z * o.z + o.w * o.w;
    const float r = rsqrtf(warp_sum(ss) * (1.0f / DV) + EPS);
    const float* z = Y + (size_t)t * GDN_ROWS + h * GDN_HROWS + GZ + lane * 4;
    const float ov[4] = {o.x, o.y, o.z, o.w};
    unsigned short* out = U + (size_t)t * (DH * DV) + h * DV + lane * 4;
#pragma unroll
    for (int e = 0; e < 4; ++e) out[e] = f2h(gnw[lane * 4 + e] * (ov[e] * r) * silu(z[e]));
}

}  // namespace pf
}  // namespace mk
