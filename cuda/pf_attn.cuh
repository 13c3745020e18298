// pf_attn.cuh -- the prefill of a gated attention layer, after the qkv GEMM (Y [N][5120] f32, by KV group g: 4 x (q
// 256 | gate 256) | k 256 | v 256).
//   attn_prep_kernel  per token: q and k RMSNorm (1 + w) and partial RoPE (mk_attn_math.cuh, as the decode does),
//                     q kept in f32; k and v appended to the bf16 KV cache the decode kernel reads
//   attn_kernel       causal attention on tensor cores with online softmax over the cache: a block holds 16
//                     positions x the 4 query heads of one KV group and streams the group's K/V in 64-position tiles
//                     through shared memory; out = softmax(q k / 16) v * sigmoid(gate), fp16 [N][2048] for o_proj
#pragma once
#include "mk_attn_math.cuh"
#include "mk_layout.cuh"
#include "pf_gemm.cuh"

namespace mk {
namespace pf {

__global__ void __launch_bounds__(384) attn_prep_kernel(const float* Y, const float* sp, float* Qa,
                                                        unsigned short* kc, unsigned short* vc, int max_seq, int pos) {
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
    if (warp < 10) rope_pair(hs[warp], lane, pos + t);  // the token's absolute position
    __syncwarp();
    if (warp < 8) {
#pragma unroll
        for (int e = 0; e < 8; ++e) Qa[(size_t)t * (NQH * HD) + warp * HD + d0 + e] = hs[warp][d0 + e];
    } else {
        unsigned short* cache = (warp < 10 ? kc : vc) + ((size_t)g * max_seq + pos + t) * HD + d0;
#pragma unroll
        for (int e = 0; e < 8; ++e) cache[e] = f2bf(hs[warp][d0 + e]);
    }
}

// attn_kernel, a block: one KV group, 16 query positions x its 4 query heads = 64 rows, 4 warps of 16 rows (warp w: positions
// q0 + 4w .. + 3, row r: position r / 4, head r % 4). Q (pre-scaled by log2(e) / 16), K and V are fp16 in shared
// memory (K and V converted from the bf16 cache; exact in fp16's normal range); S = Q K^T and O += P V on mma.sync
// m16n8k16 f16 -> f32, P in fp16 from the S registers; online softmax in base 2 per row; key tiles of 64 positions.
constexpr int TQ = 16;               // query positions per block
constexpr int TK = 64;               // key positions per tile
constexpr int T_LD = HD + 8;         // padded fp16 row (528 B: ldmatrix rows in distinct banks)
constexpr int ATT_TILES = (4 * TQ + 2 * TK) * T_LD * 2;  // Q rows, K tile, V tile (bytes)
// Staged (attn_kernel<true>): the next key tile's raw bf16 K and V land by cp.async in a dense staging area while this
// tile is multiplied (one block per SM; pp520's attention 0.66 -> 0.37 ms on the H200, NOTES.md v7). Where the GPU's
// shared memory per block holds only the tiles (sm_86, sm_89: 99 KB), attn_kernel<false> loads and converts each tile
// through registers when needed. mk_prefill.cu picks one per device (MK_PF_ATT_PLAIN=1: always the latter). The GDN
// prep and out kernels' 102 KB keep the prefill off sm_86/89 today, so the plain kernel runs only where forced
// (NOTES.md v7).
constexpr int ATT_SMEM_PLAIN = ATT_TILES;
constexpr int ATT_SMEM_STAGED = ATT_TILES + 2 * TK * HD * 2;

__device__ __forceinline__ unsigned pack_h2(float a, float b) {
    return (unsigned)__half_as_ushort(__float2half_rn(a)) | ((unsigned)__half_as_ushort(__float2half_rn(b)) << 16);
}
// 8 bf16 (uint4) -> 8 fp16 (uint4)
__device__ __forceinline__ uint4 bf8_to_h8(uint4 w) {
    float f[8];
    unpack8(w, f);
    return make_uint4(pack_h2(f[0], f[1]), pack_h2(f[2], f[3]), pack_h2(f[4], f[5]), pack_h2(f[6], f[7]));
}

// raw bf16 K and V rows p .. p + 63 (zeros past k_last) into the dense staging area, by cp.async (one commit group)
__device__ __forceinline__ void att_stage(unsigned short* Kst, unsigned short* Vst, const unsigned short* kg,
                                          const unsigned short* vg, int p, int k_last, int tid) {
    for (int i = tid; i < TK * (HD / 8); i += 128) {
        const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
        const bool ok = p + r <= k_last;
        const size_t row = (size_t)(ok ? p + r : 0) * HD + c;
        cp_async16(Kst + r * HD + c, kg + row, ok);
        cp_async16(Vst + r * HD + c, vg + row, ok);
    }
    cp_async_commit();
}

// Split keys (MK_PF_ATT_SPLIT=1): where the position blocks are fewer than the GPU's block slots (short prompts), a
// block's keys are cut into parts of `split` tiles, one block each, so that the longest chain of tiles is `split`
// instead of the last position block's all (pp520: 9 tiles one after another on 66 blocks). Each part leaves its
// unnormalised output and (max, sum) per row in AttSplit; the part that finishes last merges them (a counter per
// position block and group, reset by that part for the next launch).
constexpr int ATT_SPLIT_MAX_N = 1024;  // longer prompts have enough position blocks without splitting
constexpr int ATT_PARTS_MAX = 256;     // blocks of one split launch, at most (their partials' space in the workspace)
struct AttSplit {
    float* o;           // [ATT_PARTS_MAX][64 rows][HD]
    float* ml;          // [ATT_PARTS_MAX][64 rows][2]: running max (base 2; -inf where the part saw no key) and sum
    unsigned* counter;  // [position blocks][NKV]: parts finished
};

// The keys of position block b end at this position (the cached ones first, then the prompt's up to the block's last)
__host__ __device__ __forceinline__ int att_last_key(int b, int n, int pos) {
    return pos + (n - 1 < b * TQ + TQ - 1 ? n - 1 : b * TQ + TQ - 1);
}
// parts of a position block whose keys end at k_last, cut every `split` tiles
__host__ __device__ __forceinline__ int att_parts(int k_last, int split) { return (k_last / TK) / split + 1; }

template <bool STAGE>
__global__ void __launch_bounds__(128) attn_kernel(const float* __restrict__ Qa, const float* __restrict__ Y,
                                                      const unsigned short* __restrict__ kc,
                                                      const unsigned short* __restrict__ vc, unsigned short* out, int n,
                                                      int max_seq, int pos, int split, AttSplit sp) {
    extern __shared__ __align__(16) unsigned char att_smem[];
    unsigned short(*Qs)[T_LD] = reinterpret_cast<unsigned short(*)[T_LD]>(att_smem);
    unsigned short(*Ks)[T_LD] = Qs + 4 * TQ;
    unsigned short(*Vs)[T_LD] = Ks + TK;
    const int g = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    // this block: position block b, part `part` of `parts` (blocks enumerate the pairs in order when split > 0)
    int b = blockIdx.x, part = 0, parts = 1;
    if (split > 0) {
        for (int first = 0, k = 0;; ++k) {
            const int pk = att_parts(att_last_key(k, n, pos), split);
            if ((int)blockIdx.x < first + pk) {
                b = k;
                part = blockIdx.x - first;
                parts = pk;
                break;
            }
            first += pk;
        }
    }
    const int q0 = b * TQ;
    // keys 0 .. k_last: the cached positions before the prompt (pos of them) and the prompt's up to this block's last;
    // this part's p_first .. p_last (whole tiles; the last part ends at k_last)
    const int k_last = att_last_key(b, n, pos);
    const int p_first = part * split * TK, p_last = parts > 1 ? min(k_last, p_first + split * TK - 1) : k_last;
    const float qscale = 0.0625f * 1.4426950408889634f;  // 1/sqrt(256), and exp -> exp2
    for (int i = tid; i < 4 * TQ * (HD / 4); i += 128) {  // Q rows: 64 x 64 float4
        const int r = i / (HD / 4), d = (i % (HD / 4)) * 4, t = q0 + (r >> 2), j = g * QPG + (r & 3);
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (t < n) x = *(const float4*)(Qa + (size_t)t * (NQH * HD) + j * HD + d);
        *(uint2*)&Qs[r][d] = make_uint2(pack_h2(x.x * qscale, x.y * qscale), pack_h2(x.z * qscale, x.w * qscale));
    }
    const unsigned short* kg = kc + (size_t)g * max_seq * HD;
    const unsigned short* vg = vc + (size_t)g * max_seq * HD;
    const int gr = lane >> 2, tc = (lane & 3) * 2;
    // this thread's two rows (gr, gr + 8 of the warp's 16): their absolute query positions
    const int tq0 = pos + q0 + 4 * warp + (gr >> 2), tq1 = pos + q0 + 4 * warp + ((gr + 8) >> 2);
    float o[HD / 8][4];
#pragma unroll
    for (int ni = 0; ni < HD / 8; ++ni) o[ni][0] = o[ni][1] = o[ni][2] = o[ni][3] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // running max (base 2) and this thread's partial sums
    unsigned short* Kst = reinterpret_cast<unsigned short*>(att_smem + ATT_TILES);  // STAGE only: [TK][HD] each
    unsigned short* Vst = Kst + TK * HD;
    if constexpr (STAGE) att_stage(Kst, Vst, kg, vg, p_first, k_last, tid);
    for (int p0 = p_first; p0 <= p_last; p0 += TK) {
        if constexpr (STAGE) {
            cp_async_wait<0>();  // this thread's copies of tile p0; the barrier makes them everyone's
            __syncthreads();     // ... and the previous tile is consumed (and Q is written, the first time)
            for (int i = tid; i < TK * (HD / 8); i += 128) {  // bf16 -> fp16, shared to shared
                const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
                *(uint4*)&Ks[r][c] = bf8_to_h8(*(const uint4*)(Kst + r * HD + c));
                *(uint4*)&Vs[r][c] = bf8_to_h8(*(const uint4*)(Vst + r * HD + c));
            }
            __syncthreads();  // the staging area is free again
            if (p0 + TK <= p_last) att_stage(Kst, Vst, kg, vg, p0 + TK, k_last, tid);
        } else {
            __syncthreads();  // the previous tile is consumed (and Q is written, the first time)
            for (int i = tid; i < TK * (HD / 8); i += 128) {  // K and V tiles: 64 rows x 32 uint4, bf16 -> fp16
                const int r = i / (HD / 8), c = (i % (HD / 8)) * 8;
                const bool ok = p0 + r <= k_last;
                const uint4 zero = make_uint4(0, 0, 0, 0);
                *(uint4*)&Ks[r][c] = ok ? bf8_to_h8(*(const uint4*)(kg + (size_t)(p0 + r) * HD + c)) : zero;
                *(uint4*)&Vs[r][c] = ok ? bf8_to_h8(*(const uint4*)(vg + (size_t)(p0 + r) * HD + c)) : zero;
            }
            __syncthreads();
        }
        // S = Q K^T: 16 rows x 64 keys
        float s[TK / 8][4];
#pragma unroll
        for (int ni = 0; ni < TK / 8; ++ni) s[ni][0] = s[ni][1] = s[ni][2] = s[ni][3] = 0.f;
#pragma unroll 4
        for (int ks = 0; ks < HD; ks += 16) {
            unsigned a[4];
            ldmatrix_x4(a, &Qs[warp * 16 + (lane & 15)][ks + (lane >> 4) * 8]);
#pragma unroll
            for (int np = 0; np < TK / 16; ++np) {
                unsigned b[4];
                ldmatrix_x4(b, &Ks[np * 16 + (lane & 7) + (lane >> 4) * 8][ks + ((lane >> 3) & 1) * 8]);
                mma_f16(s[2 * np], a, b[0], b[1]);
                mma_f16(s[2 * np + 1], a, b[2], b[3]);
            }
        }
        // causal mask, online softmax (base 2)
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int ni = 0; ni < TK / 8; ++ni) {
            const int p = p0 + ni * 8 + tc;
            if (p > tq0) s[ni][0] = -INFINITY;
            if (p + 1 > tq0) s[ni][1] = -INFINITY;
            if (p > tq1) s[ni][2] = -INFINITY;
            if (p + 1 > tq1) s[ni][3] = -INFINITY;
            mx0 = fmaxf(mx0, fmaxf(s[ni][0], s[ni][1]));
            mx1 = fmaxf(mx1, fmaxf(s[ni][2], s[ni][3]));
        }
#pragma unroll
        for (int off = 1; off <= 2; off <<= 1) {  // the 4 threads of a row
            mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
            mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
        }
        // a row whose keys in this tile are all masked (one before a split part's first key): keep it finite; its sum
        // stays 0 and the merge skips it (rows past the prompt, with zero-filled keys, are never written)
        if (mx0 == -INFINITY) mx0 = 0.f;
        if (mx1 == -INFINITY) mx1 = 0.f;
        const float c0 = exp2f(m0 - mx0), c1 = exp2f(m1 - mx1);
        m0 = mx0;
        m1 = mx1;
        l0 *= c0;
        l1 *= c1;
#pragma unroll
        for (int ni = 0; ni < HD / 8; ++ni) {
            o[ni][0] *= c0;
            o[ni][1] *= c0;
            o[ni][2] *= c1;
            o[ni][3] *= c1;
        }
        unsigned pa[TK / 16][4];  // P as the A operand of P V: k16 step kk takes S n-tiles 2kk, 2kk + 1
#pragma unroll
        for (int ni = 0; ni < TK / 8; ++ni) {
            const float e0 = exp2f(s[ni][0] - m0), e1 = exp2f(s[ni][1] - m0);
            const float e2 = exp2f(s[ni][2] - m1), e3 = exp2f(s[ni][3] - m1);
            l0 += e0 + e1;
            l1 += e2 + e3;
            pa[ni >> 1][(ni & 1) * 2] = pack_h2(e0, e1);
            pa[ni >> 1][(ni & 1) * 2 + 1] = pack_h2(e2, e3);
        }
        // O += P V: 16 rows x 256 dims, k = the tile's 64 keys
#pragma unroll
        for (int kk = 0; kk < TK / 16; ++kk) {
#pragma unroll
            for (int np = 0; np < HD / 16; ++np) {
                unsigned b[4];
                ldmatrix_x4_trans(b, &Vs[kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8][np * 16 + (lane >> 4) * 8]);
                mma_f16(o[2 * np], pa[kk], b[0], b[1]);
                mma_f16(o[2 * np + 1], pa[kk], b[2], b[3]);
            }
        }
    }
#pragma unroll
    for (int off = 1; off <= 2; off <<= 1) {
        l0 += __shfl_xor_sync(0xffffffffu, l0, off);
        l1 += __shfl_xor_sync(0xffffffffu, l1, off);
    }
    if (parts > 1) {  // leave this part's rows; the part that finishes last merges every part's
        const int slot = (blockIdx.x + g * gridDim.x) * 4 * TQ;  // this part's first row in AttSplit
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp * 16 + gr + 8 * h;
            float* po = sp.o + (size_t)(slot + r) * HD;
#pragma unroll
            for (int ni = 0; ni < HD / 8; ++ni) *(float2*)(po + ni * 8 + tc) = make_float2(o[ni][2 * h], o[ni][2 * h + 1]);
            const float l = h ? l1 : l0;
            if (tc == 0) *(float2*)(sp.ml + (size_t)(slot + r) * 2) = make_float2(l > 0.f ? (h ? m1 : m0) : -INFINITY, l);
        }
        __threadfence();  // the partials, visible GPU-wide before the count says so
        __syncthreads();
        // the flag lives in the dynamic area (no static shared memory on top of a size at some GPUs' limit): the K
        // tile is free, every warp is past the loop
        volatile int* merge_here = reinterpret_cast<volatile int*>(&Ks[0][0]);
        if (tid == 0) *merge_here = atomicAdd(&sp.counter[b * NKV + g], 1u) == (unsigned)parts - 1;
        __syncthreads();
        if (!*merge_here) return;
        __threadfence();
        const int first = (blockIdx.x - part + g * gridDim.x) * 4 * TQ;  // part 0's first row
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int r = warp * 16 + gr + 8 * h;
            float mx = -INFINITY, l = 0.f;
            for (int q = 0; q < parts; ++q) mx = fmaxf(mx, __ldcg(sp.ml + (size_t)(first + q * 4 * TQ + r) * 2));
#pragma unroll
            for (int ni = 0; ni < HD / 8; ++ni) o[ni][2 * h] = o[ni][2 * h + 1] = 0.f;
            for (int q = 0; q < parts; ++q) {
                const size_t row = (size_t)first + q * 4 * TQ + r;
                const float2 ml = __ldcg((const float2*)(sp.ml + row * 2));
                if (!(ml.y > 0.f)) continue;  // a part whose keys all lie after this row's position
                const float c = exp2f(ml.x - mx);
                l += c * ml.y;
                const float* po = sp.o + row * HD;
#pragma unroll
                for (int ni = 0; ni < HD / 8; ++ni) {
                    const float2 v = __ldcg((const float2*)(po + ni * 8 + tc));
                    o[ni][2 * h] += c * v.x;
                    o[ni][2 * h + 1] += c * v.y;
                }
            }
            if (h) l1 = l;
            else l0 = l;
        }
        if (tid == 0) sp.counter[b * NKV + g] = 0;  // ready for the next launch
    }
#pragma unroll
    for (int h = 0; h < 2; ++h) {  // rows gr (h = 0) and gr + 8
        const int r = warp * 16 + gr + 8 * h, t = q0 + (r >> 2), j = g * QPG + (r & 3);
        if (t >= n) continue;
        const float inv = 1.f / (h ? l1 : l0);
        const float* gate = Y + (size_t)t * FA_ROWS + FA_GROWS * g + 2 * HD * (r & 3) + HD;
        const size_t base = (size_t)t * (NQH * HD) + j * HD;
#pragma unroll
        for (int ni = 0; ni < HD / 8; ++ni) {
            const int d = ni * 8 + tc;
            out[base + d] = f2h(o[ni][2 * h] * inv * sigm(gate[d]));
            out[base + d + 1] = f2h(o[ni][2 * h + 1] * inv * sigm(gate[d + 1]));
        }
    }
}

// Blocks along x of a launch with `split` (the (position block, part) pairs; the position blocks when 0).
inline int att_blocks(int n, int pos, int split) {
    const int nqb = (n + TQ - 1) / TQ;
    if (!split) return nqb;
    int total = 0;
    for (int b = 0; b < nqb; ++b) total += att_parts(att_last_key(b, n, pos), split);
    return total;
}

// Key tiles per part for a prompt of n tokens at pos (0: no split), given the blocks the GPU runs at once: the
// smallest split whose parts fit in one wave; none where the position blocks fill the GPU already.
inline int att_split(int n, int pos, int slots) {
    const int nqb = (n + TQ - 1) / TQ, fit = slots < ATT_PARTS_MAX ? slots : ATT_PARTS_MAX;
    if (!MK_PF_ATT_SPLIT || n > ATT_SPLIT_MAX_N || nqb * NKV >= fit) return 0;
    for (int split = 1; split <= att_last_key(nqb - 1, n, pos) / TK; ++split)
        if (att_blocks(n, pos, split) * NKV <= fit) return split;
    return 0;
}

}  // namespace pf
}  // namespace mk
