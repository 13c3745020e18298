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

// ---- residual stream buffers (counted: see mk_sync.cuh) ----
// Every block adds exactly one partial (all 1024 values; the owner rows carry x) per use, so a value is complete when
// its count reaches G. Two representations:
//   sm_90 (MK_XV4): 342 float4 {x[3v], x[3v+1], x[3v+2], count}, added with one red.global.add.v4.f32 each (a 16-byte
//       aligned vector reduction is one L2 operation, and the reader's 16-byte load sees it whole); 342 reductions per
//       block instead of 1024 u64 ones (measured: the u64 adds cost ~60 us/token in L2 atomic throughput).
//   otherwise: 1024 u64 fixed-point sums with the count in the top byte (exact, order-independent).
#if __CUDA_ARCH__ >= 900 && MK_XV4
#define MK_XVEC 1
constexpr int XW = (H + 2) / 3;   // words (float4) per buffer
#else
#define MK_XVEC 0
constexpr int XW = H;             // words (u64) per buffer
#endif
constexpr int XB_FLOATS = (MK_XVEC ? 4 : 2) * XW;

// Rows of x that block b owns (its partial carries x for them) and the words it clears before a buffer's reuse.
__device__ __forceinline__ int own0(const Ctx& c) { return split_rows(H, c.b, c.G); }
__device__ __forceinline__ int own1(const Ctx& c) { return split_rows(H, c.b + 1, c.G); }
// Clearing threads: lanes 1.. of the last consumer warp (they store no other data: lane 0 stores matvec outputs).
__device__ __forceinline__ int zero_index(const Ctx& c) { return c.tid - (NCT - 31); }
__device__ __forceinline__ bool zero_thread(const Ctx& c) {
    return (unsigned)zero_index(c) < (unsigned)(split_rows(XW, c.b + 1, c.G) - split_rows(XW, c.b, c.G));
}
__device__ __forceinline__ void zero_words(const Ctx& c, float* x) {
    if (!zero_thread(c)) return;
    const int wd = split_rows(XW, c.b, c.G) + zero_index(c);
#if MK_XVEC
    __stcg((float4*)x + wd, make_float4(0.f, 0.f, 0.f, 0.f));
#else
    __stcg((u64*)x + wd, 0ull);
#endif
}
// Called by all consumer threads before the block barrier that precedes the block's add: the clearing threads wait
// until their zeros are in L2 (long done by then: cheap), so every block that sees this block's add sees them first.
__device__ __forceinline__ void fence_zero(const Ctx& c) {
    if (zero_thread(c)) __threadfence();
}
// Adds the block's partial part[0..1024) (shared, complete: call after a block barrier) to buffer x.
__device__ __forceinline__ void add_partial(const Ctx& c, float* x, const float* part) {
#if MK_XVEC
    for (int wd = c.tid; wd < XW; wd += NCT) {
        const int i = 3 * wd;
        const float4 v = make_float4(part[i], i + 1 < H ? part[i + 1] : 0.f, i + 2 < H ? part[i + 2] : 0.f, 1.0f);
        red_add4(x + 4 * wd, v);
    }
#else
    for (int i = c.tid; i < H; i += NCT) fx_add((u64*)x + i, part[i]);
#endif
}

// xs <- x; acts <- bf16(RMSNorm(x) * w1p). x is an embedding row (emb) or the counted residual buffer xg, polled
// until every value has `count` addends. `zero`: the buffer whose words this block clears for its next use, once the
// whole of xg is complete (every block has then added to xg, so every block is done reading `zero`, the input of the
// sub-layer before). The clearing threads fence (fence_zero) before this block's next add, which other blocks must
// see before they add into `zero`.
__device__ __forceinline__ void load_x_norm(Ctx& c, const float* xg, unsigned count, const unsigned short* emb,
                                            const float* w1p, float* zero, bool nowait) {
    float ss = 0.f;
    if (emb) {
        for (int i = c.tid; i < H; i += NCT) {
            const float v = __uint_as_float((unsigned)emb[i] << 16);
            c.xs()[i] = v;
            ss = fmaf(v, v, ss);
        }
    } else {
#if MK_XVEC
        // thread t < 342 polls word t (x[3t..3t+2])
        if (c.tid < XW) {
            const float4* p = (const float4*)xg + c.tid;
            float4 w;
            asm volatile("ld.relaxed.gpu.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                         : "=f"(w.x), "=f"(w.y), "=f"(w.z), "=f"(w.w) : "l"(p) : "memory");
            if (w.w != (float)count && !nowait) {
                const unsigned long long t0 = global_ns();
                unsigned n = 0;
                do {
                    asm volatile("ld.relaxed.gpu.global.v4.f32 {%0, %1, %2, %3}, [%4];"
                                 : "=f"(w.x), "=f"(w.y), "=f"(w.z), "=f"(w.w) : "l"(p) : "memory");
                    if ((++n & 0xfffffu) == 0) spin_check(t0);
                } while (w.w != (float)count);
            }
            const int i = 3 * c.tid;
            c.xs()[i] = w.x;
            ss = w.x * w.x;
            if (i + 1 < H) { c.xs()[i + 1] = w.y; ss = fmaf(w.y, w.y, ss); }
            if (i + 2 < H) { c.xs()[i + 2] = w.z; ss = fmaf(w.z, w.z, ss); }
        }
#else
        const u64* xw = (const u64*)xg;
        u64 w[3];
#pragma unroll
        for (int k = 0; k < 3; ++k)
            if (c.tid + k * NCT < H) w[k] = ld_gpu(xw + c.tid + k * NCT);
#pragma unroll
        for (int k = 0; k < 3; ++k) {
            const int i = c.tid + k * NCT;
            if (i < H) {
                if (!fx_done(w[k], count) && !nowait) {
                    const unsigned long long t0 = global_ns();
                    unsigned n = 0;
                    do {
                        w[k] = ld_gpu(xw + i);
                        if ((++n & 0xfffffu) == 0) spin_check(t0);
                    } while (!fx_done(w[k], count));
                }
                const float v = fx_val(w[k], count);
                c.xs()[i] = v;
                ss = fmaf(v, v, ss);
            }
        }
#endif
    }
    ss = block_sum(c, ss, c.misc() + 2000);  // also orders the xs writes before the reads below
    if (zero) zero_words(c, zero);
    const float r = rsqrtf(ss * (1.0f / H) + EPS);
    for (int i = c.tid; i < H; i += NCT) c.acts()[i] = bfr(c.xs()[i] * r * w1p[i]);
    cbar();
}

}  // namespace mk
