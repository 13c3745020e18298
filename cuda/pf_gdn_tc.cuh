// pf_gdn_tc.cuh -- the chunked gated delta rule of a GDN layer's prefill on tensor cores (mma.sync m16n8k8 tf32 ->
// f32): three kernels between gdn_conv_kernel and the out_proj GEMM, replacing gdn_chunk_kernel, gdn_scan_kernel and
// gdn_gate_kernel (pf_gdn.cuh) when MK_PF_GDN_TC=1. Same algorithm (luce_bench/kernels/chunked.py), split so that only
// the state update is sequential over chunks:
//   gdn_prep_kernel   per (head, chunk of 64 tokens): L2 norms, beta, G = cumsum(g); A = strictly lower beta_i (k_i .
//                     k_j) exp(G_i - G_j) and M = lower (q_i . k_j) exp(G_i - G_j) on tensor cores; T = (I + A)^-1 by
//                     forward substitution (f32, a column per thread: pf_tril.cuh); U = T diag(beta) V and W =
//                     T diag(beta exp(G)) K on tensor cores. Leaves Q, Kd = K exp(G_C - G), U, W, M and G.
//   gdn_state_kernel  per (head, 16-column value slice), sequential over chunks, the next chunk's tiles loading
//                     (cp.async) while this one computes: stores the start state S_c, E = U - W S_c, then
//                     S <- exp(G_C) S + Kd^T E; leaves every chunk's S_c and E, and the final S in the decode layout.
//   gdn_out_kernel    per (head, chunk): O = exp(G) (Q S_c) + M E, then the gated RMSNorm times silu(z), as fp16 for
//                     the out_proj GEMM.
// Precision: the products' inputs are rounded to tf32 (10-bit mantissa, as the fp16 GEMM inputs), sums in f32; the
// substitution, norms, gates and the state between chunks stay f32. With MK_PF_WK_HALF=1, W and Kd travel from prep
// to state in fp16 (the same 10-bit mantissa, half the bytes).
// Shared-memory rows are padded so that fragment loads hit distinct banks: a row stride = 4 (mod 32) for an operand
// read along its rows (A row-major, B as [n][k]), 8 (mod 32) for one read along its columns (A transposed, B as [k][n]).
#pragma once
#include "pf_gdn.cuh"
#include "pf_tril.cuh"

namespace mk {
namespace pf {

constexpr int LD4 = DK + 4;  // 132: rows read along the row
constexpr int LD8 = DK + 8;  // 136: rows read along the column
constexpr int LDT = GC + 4;  // 68: the 64 x 64 A, T and M
constexpr int LDS = SLV + 8; // 24: a 16-column slice read along its columns

// W and Kd as the prep kernel leaves them for the state kernel: f32, or fp16 with MK_PF_WK_HALF (the same 10-bit
// mantissa as the tf32 products round them to, down to 6e-5; below, an absolute error under 3e-8). |Kd| <= 1; W =
// T diag(beta exp(G)) K is clamped to +-65504 by f2h should T grow that large. The state kernel's shared rows are
// padded for its fragment loads in 32-bit words as LD4 / LD8 are.
#if MK_PF_WK_HALF
using WkT = unsigned short;
constexpr int LDW = DK + 8;   // 136 halves = 68 words: read along the row (4 mod 32)
constexpr int LDK = DK + 16;  // 144 halves = 72 words: read along the column (8 mod 32)
#else
using WkT = float;
constexpr int LDW = LD4;
constexpr int LDK = LD8;
#endif

// Per-chunk arrays the state and out kernels read besides GdnWork's: S_c [16 heads][chunks][128][128] and E [16][Np][128].
struct GdnTcWork {
    float *s, *e;
};

__device__ __forceinline__ unsigned tf32(float x) {
    unsigned r;
    asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
    return r;
}
// an fp16 value as a tf32 operand: exact (11 significant bits at most)
__device__ __forceinline__ unsigned tf32(unsigned short h) { return __float_as_uint(__half2float(__ushort_as_half(h))); }
// two or four f32 values into f32 or fp16 memory
__device__ __forceinline__ void store2(float* p, float a, float b) { *(float2*)p = make_float2(a, b); }
__device__ __forceinline__ void store2(unsigned short* p, float a, float b) {
    *(unsigned*)p = (unsigned)f2h(a) | ((unsigned)f2h(b) << 16);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *(float4*)p = v; }
__device__ __forceinline__ void store4(unsigned short* p, float4 v) {
    *(uint2*)p = make_uint2((unsigned)f2h(v.x) | ((unsigned)f2h(v.y) << 16),
                            (unsigned)f2h(v.z) | ((unsigned)f2h(v.w) << 16));
}
// d += a (16 x 8, row) * b (8 x 8, col), tf32 in, f32 accumulate
__device__ __forceinline__ void mma_tf32(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// Fragments from f32 shared memory (g = lane / 4, t = lane % 4). A rows r0.., k k0..: element (r, k) at p[r ld + k]
// (row-major) or p[k ld + r] (transposed); sc, if given, scales A's column k (a diagonal matrix on the right).
__device__ __forceinline__ void frag_a(unsigned a[4], const float* p, int ld, int r0, int k0, int lane,
                                       const float* sc = nullptr) {
    const int g = lane >> 2, t = lane & 3;
    const float* q = p + (r0 + g) * ld + k0 + t;
    const float s0 = sc ? sc[k0 + t] : 1.f, s1 = sc ? sc[k0 + t + 4] : 1.f;
    a[0] = tf32(q[0] * s0);
    a[1] = tf32(q[8 * ld] * s0);
    a[2] = tf32(q[4] * s1);
    a[3] = tf32(q[8 * ld + 4] * s1);
}
__device__ __forceinline__ void frag_a(unsigned a[4], const unsigned short* p, int ld, int r0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const unsigned short* q = p + (r0 + g) * ld + k0 + t;
    a[0] = tf32(q[0]);
    a[1] = tf32(q[8 * ld]);
    a[2] = tf32(q[4]);
    a[3] = tf32(q[8 * ld + 4]);
}
template <typename T>
__device__ __forceinline__ void frag_a_tr(unsigned a[4], const T* p, int ld, int r0, int k0, int lane) {
    const int g = lane >> 2, t = lane & 3;
    const T* q = p + (k0 + t) * ld + r0 + g;
    a[0] = tf32(q[0]);
    a[1] = tf32(q[8]);
    a[2] = tf32(q[4 * ld]);
    a[3] = tf32(q[4 * ld + 8]);
}
// B k k0.., n n0..: element (k, n) at p[k ld + n] ("kn") or p[n ld + k] ("nk")
__device__ __forceinline__ void frag_b_kn(unsigned& b0, unsigned& b1, const float* p, int ld, int k0, int n0, int lane) {
    const float* q = p + (k0 + (lane & 3)) * ld + n0 + (lane >> 2);
    b0 = tf32(q[0]);
    b1 = tf32(q[4 * ld]);
}
__device__ __forceinline__ void frag_b_nk(unsigned& b0, unsigned& b1, const float* p, int ld, int k0, int n0, int lane) {
    const float* q = p + (n0 + (lane >> 2)) * ld + k0 + (lane & 3);
    b0 = tf32(q[0]);
    b1 = tf32(q[4]);
}

// acc[nt] (NT n-tiles of 8 columns) += the warp's 16 rows r0 .. of A [rows][K] (row-major, stride lda; its column k
// scaled by sc[k] when sc is given) times B [K][8 NT] (stride ldb, read along its columns)
template <int K, int NT>
__device__ __forceinline__ void rows16_xn(float acc[NT][4], const float* A, int lda, const float* B, int ldb, int r0,
                                          int lane, const float* sc = nullptr) {
    for (int k0 = 0; k0 < K; k0 += 8) {
        unsigned a[4];
        frag_a(a, A, lda, r0, k0, lane, sc);
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) {
            unsigned b0, b1;
            frag_b_kn(b0, b1, B, ldb, k0, nt * 8, lane);
            mma_tf32(acc[nt], a, b0, b1);
        }
    }
}

// rows x 128 f32 from global (row r at src + r ld; rows >= valid as zeros) into shared rows of stride LD by cp.async
// (16 bytes each, all in flight at once; THREADS threads). The caller commits, waits and syncs.
template <int ROWS, int LD, int THREADS>
__device__ __forceinline__ void cp_rows128(float* dst, const float* __restrict__ src, size_t ld, int valid, int tid) {
#pragma unroll 8
    for (int i = tid; i < ROWS * 32; i += THREADS) {
        const int r = i >> 5, d = (i & 31) * 4;
        cp_async16(dst + r * LD + d, src + (size_t)(r < valid ? r : 0) * ld + d, r < valid);
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// gdn_prep_kernel: grid (16 heads, chunks), PREP_THREADS = 256 threads: warp w computes rows 16 (w % 4) .. + 15 of
// every 64-row product, over the columns of its half (ch = w / 4).
constexpr int PREP_THREADS = 256;
struct PrepSmem {
    float qv[GC][LD8];  // q, then v (once Q and M are out)
    float k[GC][LD4];
    float a[GC][LDT];   // A (strictly lower)
    float t[GC][LDT];   // T = (I + A)^-1 (unit lower)
    float beta[GC], G[GC], sv[GC], sw[GC];  // sv = beta, sw = beta exp(G): T's column scales for U and W
};

__global__ void __launch_bounds__(PREP_THREADS) gdn_prep_kernel(const float* C, const float* Y, const float* sp,
                                                                GdnWork gw, int n) {
    extern __shared__ __align__(16) unsigned char pf_smem[];
    PrepSmem& s = *reinterpret_cast<PrepSmem*>(pf_smem);
    const int h = blockIdx.x, c = blockIdx.y, t0 = c * GC, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int valid = min(GC, n - t0);
    const float* c0 = C + (size_t)t0 * CONV + h * 128;
    cp_rows128<GC, LD8, PREP_THREADS>(&s.qv[0][0], c0, CONV, valid, tid);
    cp_rows128<GC, LD4, PREP_THREADS>(&s.k[0][0], c0 + 2048, CONV, valid, tid);
    cp_async_commit();
    float g = 0.f;  // log decay, <= 0
    if (tid < GC) gdn_gates(Y, sp, h, t0 + tid, tid < valid, s.beta[tid], g);
    if (warp < 2) {  // G = inclusive cumulative sum of g: a scan per warp, then the first half's total to the second
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float u = __shfl_up_sync(0xffffffffu, g, o);
            if (lane >= o) g += u;
        }
        s.G[tid] = g;
    }
    cp_async_wait<0>();
    __syncthreads();
    if (tid >= 32 && tid < GC) s.G[tid] += s.G[31];
    // L2 norms (q also scaled by 1/sqrt(128)), one warp per row, a float4 per lane
    for (int r = warp; r < GC; r += PREP_THREADS / 32) {
        float4 q4 = *(float4*)&s.qv[r][lane * 4], k4 = *(float4*)&s.k[r][lane * 4];
        const float rq = rsqrtf(warp_sum(q4.x * q4.x + q4.y * q4.y + q4.z * q4.z + q4.w * q4.w) + EPS) *
                         0.08838834764831845f;
        const float rk = rsqrtf(warp_sum(k4.x * k4.x + k4.y * k4.y + k4.z * k4.z + k4.w * k4.w) + EPS);
        *(float4*)&s.qv[r][lane * 4] = make_float4(q4.x * rq, q4.y * rq, q4.z * rq, q4.w * rq);
        *(float4*)&s.k[r][lane * 4] = make_float4(k4.x * rk, k4.y * rk, k4.z * rk, k4.w * rk);
    }
    __syncthreads();
    if (tid < GC) {
        s.sv[tid] = s.beta[tid];
        s.sw[tid] = s.beta[tid] * expf(s.G[tid]);
    }
    const int r0 = (warp & 3) * 16, ch = warp >> 2, g8 = lane >> 2, t4 = lane & 3;
    {  // K K^T and Q K^T: warp rows r0.., columns 32 ch .. + 31 (4 n-tiles; ch = w / 4), k = 128
        float kk[4][4] = {}, qk[4][4] = {};
        for (int k0 = 0; k0 < DK; k0 += 8) {
            unsigned ak[4], aq[4];
            frag_a(ak, &s.k[0][0], LD4, r0, k0, lane);
            frag_a(aq, &s.qv[0][0], LD8, r0, k0, lane);
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                unsigned b0, b1;
                frag_b_nk(b0, b1, &s.k[0][0], LD4, k0, (ch * 4 + nt) * 8, lane);
                mma_tf32(kk[nt], ak, b0, b1);
                mma_tf32(qk[nt], aq, b0, b1);
            }
        }
        float* m = gw.m + ((size_t)h * (gw.np / GC) + c) * GC * GC;
#pragma unroll
        for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {  // rows r0 + g8 (c0, c1) and r0 + g8 + 8 (c2, c3)
                const int i = r0 + g8 + hf * 8, j = (ch * 4 + nt) * 8 + 2 * t4;
                const float d0 = j <= i ? expf(s.G[i] - s.G[j]) : 0.f, d1 = j + 1 <= i ? expf(s.G[i] - s.G[j + 1]) : 0.f;
                s.a[i][j] = j < i ? s.beta[i] * kk[nt][2 * hf] * d0 : 0.f;
                s.a[i][j + 1] = j + 1 < i ? s.beta[i] * kk[nt][2 * hf + 1] * d1 : 0.f;
                *(float2*)(m + i * GC + j) = make_float2(qk[nt][2 * hf] * d0, qk[nt][2 * hf + 1] * d1);
            }
    }
    __syncthreads();
    const size_t base = ((size_t)h * gw.np + t0) * DK;
    {  // Q and Kd = K exp(G_C - G) out; then v into q's place
        const float gl = s.G[GC - 1];
        for (int i = tid; i < GC * 32; i += PREP_THREADS) {
            const int r = i >> 5, d = (i & 31) * 4;
            const float dec = expf(gl - s.G[r]);
            const float4 k4 = *(float4*)&s.k[r][d];
            *(float4*)(gw.q + base + 4 * i) = *(float4*)&s.qv[r][d];
            store4((WkT*)gw.k + base + 4 * i, make_float4(k4.x * dec, k4.y * dec, k4.z * dec, k4.w * dec));
        }
        if (tid < GC) gw.g[(size_t)h * gw.np + t0 + tid] = s.G[tid];
    }
    __syncthreads();
    cp_rows128<GC, LD8, PREP_THREADS>(&s.qv[0][0], c0 + 4096, CONV, valid, tid);  // v arrives while T is solved
    cp_async_commit();
    // T = (I + A)^-1: warps 0 and 1, a column per thread (pf_tril.cuh); the others wait at the barrier below
    if (tid < GC) tril_inverse_column<GC>(&s.a[0][0], LDT, tid, &s.t[0][tid], LDT);
    cp_async_wait<0>();
    __syncthreads();
    // U = T diag(beta) V and W = T diag(beta exp(G)) K: warp rows r0.., columns 64 ch .. + 63 (8 n-tiles), k = 64
#pragma unroll 1
    for (int which = 0; which < 2; ++which) {
        const float* B = which == 0 ? &s.qv[0][0] : &s.k[0][0];
        const int ldb = which == 0 ? LD8 : LD4;
        const float* sc = which == 0 ? s.sv : s.sw;
        float acc[8][4] = {};
        rows16_xn<GC, 8>(acc, &s.t[0][0], LDT, B + ch * 64, ldb, r0, lane, sc);
        auto put = [&](auto* out) {  // the warp's rows r0 + g8 (and + 8), into U (f32) or W (WkT)
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const int row = r0 + g8, col = ch * 64 + nt * 8 + 2 * t4;
                store2(out + row * DK + col, acc[nt][0], acc[nt][1]);
                store2(out + (row + 8) * DK + col, acc[nt][2], acc[nt][3]);
            }
        };
        if (which == 0) put(gw.u + base);
        else put((WkT*)gw.w + base);
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// gdn_state_kernel: grid 16 heads x 8 value slices (of SLV = 16 columns), STATE_THREADS = 256 threads (warp w: rows
// or keys of its quarter (w % 4), the slice's n-tile w / 4); sequential over chunks.
constexpr int STATE_THREADS = 256;
struct StateSmem {
    WkT w[2][GC][LDW];   // W of chunks c, c + 1 (cp.async double buffer)
    WkT kd[2][GC][LDK];  // Kd likewise
    float u[2][GC][SLV];   // this slice of U (read an element at a time: unpadded)
    float s[DK][LDS];      // the state slice S [128 keys][16 values]
    float e[GC][LDS];      // this slice of E
};
static_assert(sizeof(StateSmem) <= 163 * 1024, "the state kernel must fit sm_80's shared memory per block");

__device__ __forceinline__ void state_loads(StateSmem& s, const GdnWork& gw, int buf, size_t base, int j, int tid) {
    constexpr int PER16 = 16 / sizeof(WkT), ROW16 = DK / PER16;  // elements per 16 bytes, 16-byte pieces per row
    for (int i = tid; i < GC * ROW16; i += STATE_THREADS) {      // W, Kd: 64 rows
        const int r = i / ROW16, d = (i % ROW16) * PER16;
        cp_async16(&s.w[buf][r][d], (const WkT*)gw.w + base + r * DK + d, true);
        cp_async16(&s.kd[buf][r][d], (const WkT*)gw.k + base + r * DK + d, true);
    }
    for (int i = tid; i < GC * 4; i += STATE_THREADS) {  // U slice: 64 rows x 4 float4
        const int r = i >> 2, d = (i & 3) * 4;
        cp_async16(&s.u[buf][r][d], gw.u + base + r * DK + j * SLV + d, true);
    }
    cp_async_commit();
}

__global__ void __launch_bounds__(STATE_THREADS, 1) gdn_state_kernel(GdnWork gw, GdnTcWork tw, float* state, int pos) {
    extern __shared__ __align__(16) unsigned char pf_smem[];
    StateSmem& s = *reinterpret_cast<StateSmem*>(pf_smem);
    const int h = blockIdx.x >> 3, j = blockIdx.x & 7, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g8 = lane >> 2, t4 = lane & 3, nch = gw.np / GC, quarter = warp & 3, nt = warp >> 2;
    // the state the cached positions left (a prompt at position pos > 0), else zeros; the padding columns stay unread
    load_state_slice(&s.s[0][0], LDS, state + (size_t)(h * NSL + j) * DK * SLV, pos > 0, tid, STATE_THREADS);
    state_loads(s, gw, 0, (size_t)h * gw.np * DK, j, tid);
    for (int c = 0; c < nch; ++c) {
        const int buf = c & 1;
        const size_t base = ((size_t)h * gw.np + (size_t)c * GC) * DK;
        cp_async_wait<0>();
        __syncthreads();  // chunk c's tiles and the state are in; every warp is done with chunk c - 1
        if (c + 1 < nch) state_loads(s, gw, buf ^ 1, base + GC * DK, j, tid);
        {  // S_c out: [head][chunk][key][value], this slice's 16 columns
            float* dst = tw.s + ((size_t)h * nch + c) * DK * DV + j * SLV;
            for (int i = tid; i < DK * 4; i += STATE_THREADS) {
                const int r = i >> 2, d = (i & 3) * 4;
                *(float4*)(dst + r * DV + d) = *(float4*)&s.s[r][d];
            }
        }
        {  // E = U - W S: warp rows 16 quarter .., n-tile nt, k = 128
            const int r0 = quarter * 16;
            float acc[4] = {};
            for (int k0 = 0; k0 < DK; k0 += 8) {
                unsigned a[4], b0, b1;
                frag_a(a, &s.w[buf][0][0], LDW, r0, k0, lane);
                frag_b_kn(b0, b1, &s.s[0][0], LDS, k0, nt * 8, lane);
                mma_tf32(acc, a, b0, b1);
            }
            float* eg = tw.e + base + j * SLV;
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                const int r = r0 + g8 + hf * 8, col = nt * 8 + 2 * t4;
                const float2 e2 = make_float2(s.u[buf][r][col] - acc[2 * hf], s.u[buf][r][col + 1] - acc[2 * hf + 1]);
                *(float2*)&s.e[r][col] = e2;
                *(float2*)(eg + r * DK + col) = e2;
            }
        }
        __syncthreads();
        {  // S <- exp(G_C) S + Kd^T E: warp keys 32 quarter .. (2 m-tiles), n-tile nt, k = 64 tokens
            const float dec = expf(gw.g[(size_t)h * gw.np + (size_t)c * GC + GC - 1]);
            const int k0w = quarter * 32;
            float acc[2][4];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
#pragma unroll
                for (int x = 0; x < 4; ++x)
                    acc[mt][x] = dec * s.s[k0w + mt * 16 + g8 + (x >> 1) * 8][nt * 8 + 2 * t4 + (x & 1)];
            for (int k0 = 0; k0 < GC; k0 += 8) {
                unsigned a[2][4], b0, b1;
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) frag_a_tr(a[mt], &s.kd[buf][0][0], LDK, k0w + mt * 16, k0, lane);
                frag_b_kn(b0, b1, &s.e[0][0], LDS, k0, nt * 8, lane);
#pragma unroll
                for (int mt = 0; mt < 2; ++mt) mma_tf32(acc[mt], a[mt], b0, b1);
            }
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)  // each warp rewrites only the elements it read
#pragma unroll
                for (int x = 0; x < 4; ++x)
                    s.s[k0w + mt * 16 + g8 + (x >> 1) * 8][nt * 8 + 2 * t4 + (x & 1)] = acc[mt][x];
        }
    }
    __syncthreads();
    // the decode layout: [head][value slice][k / 8][v][k % 8]
    float* dst = state + (size_t)(h * NSL + j) * DK * SLV;
    for (int i = tid; i < DK * SLV; i += STATE_THREADS) {
        const int kk = i >> 4, v = i & 15;
        dst[((kk >> 3) * SLV + v) * 8 + (kk & 7)] = s.s[kk][v];
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// gdn_out_kernel: grid (16 heads, chunks), OUT_THREADS = 256 threads: warp w computes rows 16 (w % 4) .. + 15 and
// value columns 64 (w / 4) .. + 63. Q S_c first (Q and S_c in shared memory), then M E into the same space, so that
// two blocks fit on an SM; a row's gated RMSNorm adds the two column halves' sums of squares in shared memory.
constexpr int OUT_THREADS = 256;
struct OutSmem {
    union {
        struct {
            float q[GC][LD4];
            float s[DK][LD8];
        } p1;
        struct {
            float m[GC][LDT];
            float e[GC][LD8];
        } p2;
    };
    float G[GC];
    float ssq[2][GC];  // per column half (ch), each row's sum of squares
};

__global__ void __launch_bounds__(OUT_THREADS) gdn_out_kernel(GdnWork gw, GdnTcWork tw, const float* Y,
                                                              const float* gnw, unsigned short* U, int n) {
    extern __shared__ __align__(16) unsigned char pf_smem[];
    OutSmem& s = *reinterpret_cast<OutSmem*>(pf_smem);
    const int h = blockIdx.x, c = blockIdx.y, t0 = c * GC, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g8 = lane >> 2, t4 = lane & 3, r0 = (warp & 3) * 16, ch = warp >> 2, c0 = ch * 64;
    const int nch = gw.np / GC;
    const size_t base = ((size_t)h * gw.np + t0) * DK;
    cp_rows128<GC, LD4, OUT_THREADS>(&s.p1.q[0][0], gw.q + base, DK, GC, tid);
    cp_rows128<DK, LD8, OUT_THREADS>(&s.p1.s[0][0], tw.s + ((size_t)h * nch + c) * DK * DV, DV, DK, tid);
    cp_async_commit();
    if (tid < GC) s.G[tid] = gw.g[(size_t)h * gw.np + t0 + tid];
    cp_async_wait<0>();
    __syncthreads();
    float acc[8][4] = {};
    rows16_xn<DK, 8>(acc, &s.p1.q[0][0], LD4, &s.p1.s[0][c0], LD8, r0, lane);  // Q S_c, this warp's 64 columns
    const float e_lo = expf(s.G[r0 + g8]), e_hi = expf(s.G[r0 + g8 + 8]);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
        acc[nt][0] *= e_lo;
        acc[nt][1] *= e_lo;
        acc[nt][2] *= e_hi;
        acc[nt][3] *= e_hi;
    }
    __syncthreads();
    {  // M [64][64] and E [64][128] into the space of Q and S_c
        const float* m = gw.m + ((size_t)h * nch + c) * GC * GC;
#pragma unroll 4
        for (int i = tid; i < GC * GC / 4; i += OUT_THREADS) cp_async16(&s.p2.m[i >> 4][(i & 15) * 4], m + 4 * i, true);
        cp_rows128<GC, LD8, OUT_THREADS>(&s.p2.e[0][0], tw.e + base, DK, GC, tid);
        cp_async_commit();
    }
    cp_async_wait<0>();
    __syncthreads();
    rows16_xn<GC, 8>(acc, &s.p2.m[0][0], LDT, &s.p2.e[0][c0], LD8, r0, lane);  // + M E
    // gated RMSNorm per token: this warp holds 64 of a row's 128 values in the quad of lanes g8 (16 each: columns
    // c0 + 8 nt + 2 t4, + 1); the quad's sum, then the other half's from shared memory
    float ss[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        float x = 0.f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
            x += acc[nt][2 * hf] * acc[nt][2 * hf] + acc[nt][2 * hf + 1] * acc[nt][2 * hf + 1];
        x += __shfl_xor_sync(0xffffffffu, x, 1);
        x += __shfl_xor_sync(0xffffffffu, x, 2);
        ss[hf] = x;
    }
    if (t4 == 0) {
        s.ssq[ch][r0 + g8] = ss[0];
        s.ssq[ch][r0 + g8 + 8] = ss[1];
    }
    __syncthreads();
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int row = r0 + g8 + hf * 8, t = t0 + row;
        const float r = rsqrtf((s.ssq[0][row] + s.ssq[1][row]) * (1.0f / DV) + EPS);
        if (t < n) {
            const float* z = Y + (size_t)t * GDN_ROWS + h * GDN_HROWS + GZ;
            unsigned short* out = U + (size_t)t * (DH * DV) + h * DV;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
                const int col = c0 + nt * 8 + 2 * t4;
                const float2 z2 = *(const float2*)(z + col);
                const unsigned lo = f2h(gnw[col] * (acc[nt][2 * hf] * r) * silu(z2.x));
                const unsigned hi = f2h(gnw[col + 1] * (acc[nt][2 * hf + 1] * r) * silu(z2.y));
                *(unsigned*)(out + col) = lo | (hi << 16);
            }
        }
    }
}

}  // namespace pf
}  // namespace mk
