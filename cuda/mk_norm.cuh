// mk_norm.cuh -- the residual stream and the RMSNorm prologue of every matvec phase.
//
// Residual stream: three rotating f32 buffers in scratch, each XC copies. Sub-layer j (= 2 * layer + {0: mixer,
// 1: MLP}; 48 per step, and 48 % 3 == 0) reads buffer j % 3 and writes buffer (j + 1) % 3: every block adds its
// split-K partial with f32 reductions into copy (block % XC), the blocks owning a row also add x itself. It zeroes
// its owned rows of buffer (j + 2) % 3, the target of sub-layer j + 1, last read in sub-layer j - 1 before the
// barrier that ended it. Readers sum the XC copies in a fixed order.
// With MK_O_TAGS an attention layer is one transition (j = xk(l): P1 reads buffer j, o_proj's rows are tagged values
// that the MLP polls, the MLP writes buffer j + 1): its P1 zeroes j + 2 (the next transition's target, last read by the
// GDN MLP before it, whose barrier ended that) and its MLP zeroes nothing; its own target j + 1 was zeroed by that GDN
// MLP (as every MLP zeroes the next transition's), last read in the GDN layer's P1, ended by its mixer barrier. 42
// transitions per step, 42 % 3 == 0. (v35 rotated four buffers instead: the residual buffers' places changed and the
// GDN layers lost more than the barrier gave, NOTES.md.)
// The prologue: load x (a residual buffer, or the embedding row in layer 0), keep it in smem().x, and write
// RMSNorm(x) * (1 + w) into smem().acts for the phase's matvec.
#pragma once
#include "mk_ring.cuh"

namespace mk {

__device__ __forceinline__ Scratch& scratch(const LuceMkParams& P) { return *reinterpret_cast<Scratch*>(P.scratch); }
__device__ __forceinline__ float* xbuf(const LuceMkParams& P, int j) { return &scratch(P).x[j % 3][0][0]; }
// The residual transitions before layer l: two per layer (mixer, MLP), one per attention layer with MK_O_TAGS (its
// mixer's output is o_proj's tagged rows, not a buffer): layer l reads buffer xk(l)
__host__ __device__ constexpr int xk(int l) { return MK_O_TAGS ? 2 * l - l / 4 : 2 * l; }
static_assert(xk(NL) % 3 == 0, "a step ends where it starts: 48 (42 with MK_O_TAGS) transitions");

// Rows [r0, r1) of the hidden state this block owns (adds x to, zeroes).
__device__ __forceinline__ int own_r0(const Ctx& c) { return split_rows(H, c.b, c.G); }
__device__ __forceinline__ int own_r1(const Ctx& c) { return split_rows(H, c.b + 1, c.G); }

// Zeroes this block's owned rows of the XC copies of the residual buffer at x.
__device__ __forceinline__ void zero_owned(const Ctx& c, float* x) {
    const int r0 = own_r0(c), n = own_r1(c) - r0;
    for (int i = c.tid; i < n * XC; i += NCT) __stcg(x + (i / n) * H + r0 + i % n, 0.f);
}

// x += part, plus own[i] for the owned rows when `own` is set: the block's split-K partial into its copy of a
// residual buffer (vector f32 reductions in L2 on sm_90, element atomics before).
__device__ __forceinline__ void add_partial(const Ctx& c, float* x, const float* part, const float* own) {
    const int r0 = own_r0(c), r1 = own_r1(c);
#if __CUDA_ARCH__ >= 900
    if (c.tid < H / 4) {
        const int i = c.tid * 4;
        float4 v = *(const float4*)(part + i);
        if (own) {
            if (i >= r0 && i < r1) v.x += own[i];
            if (i + 1 >= r0 && i + 1 < r1) v.y += own[i + 1];
            if (i + 2 >= r0 && i + 2 < r1) v.z += own[i + 2];
            if (i + 3 >= r0 && i + 3 < r1) v.w += own[i + 3];
        }
        asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};" ::"l"(x + i), "f"(v.x), "f"(v.y), "f"(v.z),
                     "f"(v.w) : "memory");
    }
#else
#pragma unroll 1
    for (int i = c.tid; i < H; i += NCT) atomicAdd(x + i, part[i] + ((own && i >= r0 && i < r1) ? own[i] : 0.f));
#endif
}

// Sum over the consumer threads. Ends with a barrier, so smem().red can be reused at once.
__device__ __forceinline__ float block_sum(const Ctx& c, float v) {
    float* red = smem().red;
    v = warp_sum(v);
    if (c.lane == 0) red[c.warp] = v;
    cbar();
    float t = 0.f;
#pragma unroll
    for (int i = 0; i < NCW; ++i) t += red[i];
    cbar();
    return t;
}

// This thread's RMSNorm weights w1p[tid + k * NCT], for the next load_x_norm: the caller issues these loads before
// the grid barrier that precedes the prologue, so they are not on the chain after it (NOTES.md v19, v21).
struct NormW {
    float v[3];
};
__device__ __forceinline__ NormW norm_weights(const Ctx& c, const float* w1p) {
    NormW w;
#pragma unroll
    for (int k = 0; k < 3; ++k) w.v[k] = c.tid + k * NCT < H ? w1p[c.tid + k * NCT] : 0.f;
    return w;
}

// smem().x <- x (the XC copies of residual buffer xg summed, or the bf16 embedding row `emb` when set, or the tagged
// values xt of epoch ep when set: MK_O_TAGS); smem().acts <- RMSNorm(x) * w (norm_weights).
__device__ __forceinline__ void load_x_norm(Ctx& c, const float* xg, const unsigned short* emb, const NormW& w,
                                            const u64* xt = nullptr, unsigned ep = 0u, bool nowait = false) {
    float v[3], ss = 0.f;
    pause_set(PAUSE_X_LOAD, true);
    if (xt) {  // lane 0 of each warp waits for the warp's first value, then every thread loads and polls its own
        lead_wait_tag(xt + c.tid, ep, nowait, true);
        u64 t[3];
#pragma unroll
        for (int k = 0; k < 3; ++k) t[k] = c.tid + k * NCT < H ? ld_gpu(xt + c.tid + k * NCT) : 0ull;
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            v[k] = c.tid + k * NCT < H ? poll_tag_w(xt + c.tid + k * NCT, t[k], ep, nowait) : 0.f;
            ss = fmaf(v[k], v[k], ss);
        }
    } else {
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const int i = c.tid + k * NCT;
            v[k] = 0.f;
            if (i < H) {
                if (emb) {
                    v[k] = bf2f(emb[i]);
                } else {
                    v[k] = __ldcg(xg + i);
#pragma unroll
                    for (int q = 1; q < XC; ++q) v[k] += __ldcg(xg + q * H + i);
                }
            }
            ss = fmaf(v[k], v[k], ss);
        }
    }
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (c.tid + k * NCT < H) smem().x[c.tid + k * NCT] = v[k];
    ss = block_sum(c, ss);
    pause_set(PAUSE_X_LOAD, false);  // (every x load has returned)
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
#pragma unroll
    for (int k = 0; k < 3; ++k)
        if (c.tid + k * NCT < H) smem().acts[c.tid + k * NCT] = v[k] * r * w.v[k];
    cbar();
}

}  // namespace mk
