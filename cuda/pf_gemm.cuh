// pf_gemm.cuh -- the prefill's tensor-core GEMM: C[M x N] = A[M x K] B, A fp16 row-major (activations, one row per
// token), B the weights in fp16 (an fp16 copy of the bf16 blob, same layout; bf16 values convert exactly
// down to 6e-5, below that with an absolute error under 3e-8) as the blob
// stores them: "NT" ([N][K] rows, nn.Linear's [out][in]) or "NN" ([K][N], the transposed GDN out_proj and down_proj).
// f32 accumulation with mma.sync m16n8k16 (sm_80+), operands through ldmatrix from padded shared-memory tiles that
// cp.async fills MK_PF_GSTAGES stages deep.
// Why fp16 and not bf16: the activations are rounded once per GEMM input, and fp16 keeps 3 more mantissa bits. On
// random weights bf16 inputs put the logits 3-7 % off the f32 reference, fp16 inputs 0.5 % (cuda/NOTES.md, Prefill v2).
// Activations are clamped to the fp16 range (+-65504) instead of becoming inf.
// Epilogues: store f32; add into f32 (the residual stream; atomically when the K range is split over blocks); SwiGLU
// (adjacent output columns are the gate and up of one hidden unit: store fp16(silu(gate) * up)).
// Tile GBM (64 or 128, MK_PF_GBM) x 128 x GBK, 4 warps of (GBM / 2) x 64. M and N are guarded (out-of-range rows load
// as zeros); K % GBK == 0.
#pragma once
#include <cuda_fp16.h>
#include <cstdint>
#include "mk_math.cuh"

namespace mk {
namespace pf {

enum GemmOut : int { OUT_STORE = 0, OUT_ADD = 1, OUT_SWIGLU = 2 };

// An activation as a GEMM input: fp16 bits, clamped to the finite range.
__device__ __forceinline__ unsigned short f2h(float x) {
    return __half_as_ushort(__float2half_rn(fminf(fmaxf(x, -65504.f), 65504.f)));
}

constexpr int GBM = MK_PF_GBM, GBN = 128, GBK = MK_PF_GBK, GTHREADS = 128, GSTAGES = MK_PF_GSTAGES;
constexpr int GMI = GBM / 32;  // m16 tiles per warp: the warps are 2 x 2, each (GBM / 2) x 64
constexpr int A_LD = GBK + 8;     // padded row (elements): 80 B, ldmatrix rows land in distinct banks
constexpr int BT_LD = GBK + 8;    // NT: B tile rows are n, k contiguous
constexpr int BN_LD = GBN + 8;    // NN: B tile rows are k, n contiguous (272 B)
constexpr int A_TILE = GBM * A_LD;
constexpr int B_TILE = (GBN * BT_LD > GBK * BN_LD) ? GBN * BT_LD : GBK * BN_LD;
constexpr int GEMM_SMEM = GSTAGES * (A_TILE + B_TILE) * 2;  // bytes (dynamic shared memory)

struct GemmArgs {
    const unsigned short* A;  // fp16 [M][lda]
    const unsigned short* B;  // fp16: NT [N][ldb] or NN [K][ldb]
    float* C;                 // f32 [M][ldc] (OUT_STORE, OUT_ADD)
    unsigned short* H;        // fp16 [M][ldc / 2] (OUT_SWIGLU)
    int M, N, K, lda, ldb, ldc;
    int k_per_split;          // K range of one blockIdx.z (a multiple of GBK)
};

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(d), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ void ldmatrix_x4(unsigned r[4], const void* smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned r[4], const void* smem) {
    const unsigned a = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
}
// d += a (16 x 16, row) * b (16 x 8, col), fp16 in, f32 accumulate
__device__ __forceinline__ void mma_f16(float d[4], const unsigned a[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
                 "{%0, %1, %2, %3};"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// One stage of tiles: A rows [m0, m0 + GBM) x K [k0, k0 + GBK), B likewise for columns [n0, n0 + 128).
template <bool NN>
__device__ __forceinline__ void load_tiles(const GemmArgs& g, unsigned short* As, unsigned short* Bs, int m0, int n0,
                                           int k0, int tid) {
    constexpr int KC = GBK / 8;  // 16-byte chunks per k row
#pragma unroll
    for (int i = 0; i < GBM * KC / GTHREADS; ++i) {  // A: GBM rows x KC chunks
        const int c = tid + i * GTHREADS, row = c / KC, kc = (c % KC) * 8;
        const bool ok = m0 + row < g.M;
        cp_async16(As + row * A_LD + kc, g.A + (size_t)(ok ? m0 + row : 0) * g.lda + k0 + kc, ok);
    }
#pragma unroll
    for (int i = 0; i < GBN * KC / GTHREADS; ++i) {
        const int c = tid + i * GTHREADS;
        if (NN) {  // GBK k rows x 16 chunks of 8 columns
            const int row = c >> 4, nc = (c & 15) * 8;
            const bool ok = n0 + nc < g.N;
            cp_async16(Bs + row * BN_LD + nc, g.B + (size_t)(k0 + row) * g.ldb + (ok ? n0 + nc : 0), ok);
        } else {   // 128 n rows x KC chunks of 8 k
            const int row = c / KC, kc = (c % KC) * 8;
            const bool ok = n0 + row < g.N;
            cp_async16(Bs + row * BT_LD + kc, g.B + (size_t)(ok ? n0 + row : 0) * g.ldb + k0 + kc, ok);
        }
    }
}

// The warp's (GBM / 2) x 64 block over one stage: GBK / 16 k16 steps x (GMI m16 x 8 n8) mma.
template <bool NN>
__device__ __forceinline__ void mma_stage(const unsigned short* As, const unsigned short* Bs, int wm, int wn, int lane,
                                          float acc[GMI][8][4]) {
#pragma unroll
    for (int ks = 0; ks < GBK; ks += 16) {
        unsigned a[GMI][4];
#pragma unroll
        for (int mi = 0; mi < GMI; ++mi)
            ldmatrix_x4(a[mi], As + (wm * (GBM / 2) + mi * 16 + (lane & 15)) * A_LD + ks + (lane >> 4) * 8);
#pragma unroll
        for (int np = 0; np < 4; ++np) {  // two n8 subtiles per ldmatrix.x4
            unsigned b[4];
            if (NN) {
                const int k = ks + (lane & 7) + ((lane >> 3) & 1) * 8, n = wn * 64 + np * 16 + (lane >> 4) * 8;
                ldmatrix_x4_trans(b, Bs + k * BN_LD + n);
            } else {
                const int n = wn * 64 + np * 16 + (lane & 7) + (lane >> 4) * 8, k = ks + ((lane >> 3) & 1) * 8;
                ldmatrix_x4(b, Bs + n * BT_LD + k);
            }
#pragma unroll
            for (int mi = 0; mi < GMI; ++mi) {
                mma_f16(acc[mi][2 * np], a[mi], b[0], b[1]);
                mma_f16(acc[mi][2 * np + 1], a[mi], b[2], b[3]);
            }
        }
    }
}

template <bool NN, int OUT>
__global__ void __launch_bounds__(GTHREADS) gemm_kernel(const GemmArgs g) {
    extern __shared__ __align__(16) unsigned char gemm_smem[];  // GSTAGES x (A tile, B tile)
    unsigned short(*As)[A_TILE] = reinterpret_cast<unsigned short(*)[A_TILE]>(gemm_smem);
    unsigned short(*Bs)[B_TILE] = reinterpret_cast<unsigned short(*)[B_TILE]>(gemm_smem + GSTAGES * A_TILE * 2);
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int m0 = blockIdx.y * GBM, n0 = blockIdx.x * GBN;
    const int kb = blockIdx.z * g.k_per_split, ke = min(g.K, kb + g.k_per_split);
    float acc[GMI][8][4];
#pragma unroll
    for (int mi = 0; mi < GMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;
    const int nk = (ke - kb) / GBK;
    // GSTAGES - 1 stages in flight ahead of the one being multiplied (one commit group per stage, empty ones too)
#pragma unroll
    for (int s = 0; s < GSTAGES - 1; ++s) {
        if (s < nk) load_tiles<NN>(g, As[s], Bs[s], m0, n0, kb + s * GBK, tid);
        cp_async_commit();
    }
    for (int kt = 0; kt < nk; ++kt) {
        cp_async_wait<GSTAGES - 2>();  // stage kt has landed (for this thread)
        __syncthreads();               // ... for all threads; and stage kt - 1's slot is free again
        const int pre = kt + GSTAGES - 1;
        if (pre < nk) load_tiles<NN>(g, As[pre % GSTAGES], Bs[pre % GSTAGES], m0, n0, kb + pre * GBK, tid);
        cp_async_commit();
        mma_stage<NN>(As[kt % GSTAGES], Bs[kt % GSTAGES], wm, wn, lane, acc);
    }
    // c0, c1: row g, columns 2t, 2t + 1; c2, c3: row g + 8
    const int gr = lane >> 2, tc = (lane & 3) * 2;
    const bool split = gridDim.z > 1;
#pragma unroll
    for (int mi = 0; mi < GMI; ++mi)
#pragma unroll
        for (int ni = 0; ni < 8; ++ni)
#pragma unroll
            for (int h = 0; h < 2; ++h) {
                const int r = m0 + wm * (GBM / 2) + mi * 16 + gr + h * 8, c = n0 + wn * 64 + ni * 8 + tc;
                if (r >= g.M || c >= g.N) continue;
                const float v0 = acc[mi][ni][2 * h], v1 = acc[mi][ni][2 * h + 1];
                if (OUT == OUT_SWIGLU) {
                    g.H[(size_t)r * (g.ldc / 2) + c / 2] = f2h(silu(v0) * v1);
                } else {
                    float* p = g.C + (size_t)r * g.ldc + c;
                    if (OUT == OUT_STORE) {
                        *(float2*)p = make_float2(v0, v1);
                    } else if (split) {
#if __CUDA_ARCH__ >= 900
                        atomicAdd((float2*)p, make_float2(v0, v1));  // one vector reduction (sm_90)
#else
                        atomicAdd(p, v0);
                        atomicAdd(p + 1, v1);
#endif
                    } else {
                        float2 o = *(float2*)p;
                        *(float2*)p = make_float2(o.x + v0, o.y + v1);
                    }
                }
            }
}

}  // namespace pf
}  // namespace mk
