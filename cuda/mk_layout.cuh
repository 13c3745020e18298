// mk_layout.cuh -- every memory layout of the kernel in one place: the bf16 weight blob (streaming order), the f32
// small-parameter blob (offsets from luce_mk.h, which Python parses too), the global scratch that blocks exchange
// activations through, and a block's shared memory. Sizes and alignments are checked by static_assert.
#pragma once
#include <cstdint>
#include "luce_mk.h"
#include "mk_config.cuh"

namespace mk {

typedef unsigned long long u64;

// ---- weight blob (bf16 elements); per layer: [in_proj | qkv rows] [out_proj^T | o_proj] [gate|up] [down^T] ----
constexpr int GDN_ROWS = 8224;   // in_proj rows, head-major: 16 x [q 128 | k 128 | v 128 | z 128 | b | a]
constexpr int GDN_HROWS = 514;   // in_proj rows per GDN head
constexpr int GQ = 0, GK = 128, GV = 256, GZ = 384, GB = 512, GA = 513;  // offsets inside a head's rows
constexpr int FA_ROWS = 5120;    // qkv rows, by KV group: 2 x [4 x (q 256 | gate 256) | k 256 | v 256]
constexpr int FA_GROWS = 2560;   // qkv rows per KV group
constexpr int FK = 2048, FV = 2304;  // k, v offsets inside a group's rows (query head hh at 512 hh, its gate + 256)
static_assert(GDN_ROWS == DH * GDN_HROWS && GA + 1 == GDN_HROWS, "GDN in_proj rows");
static_assert(FA_ROWS == NKV * FA_GROWS && FV + HD == FA_GROWS && FK == QPG * 2 * HD, "attention qkv rows");

constexpr int64_t W_OUT = int64_t(H) * 2048;    // GDN out_proj (stored transposed [2048][H]) or attention o_proj
constexpr int64_t W_GU = int64_t(FF) * 2 * H;   // gate|up pairs [FF][2H]
constexpr int64_t W_DOWN = int64_t(H) * FF;     // down_proj, stored transposed: [FF][H]
constexpr int64_t GDN_W = int64_t(GDN_ROWS) * H + W_OUT + W_GU + W_DOWN;
constexpr int64_t FA_W = int64_t(FA_ROWS) * H + W_OUT + W_GU + W_DOWN;
__host__ __device__ constexpr int64_t layer_woff(int l) { return int64_t(gdn_index(l)) * GDN_W + int64_t(l >> 2) * FA_W; }
constexpr int64_t WBLOB = 18 * GDN_W + 6 * FA_W;
static_assert(layer_woff(NL - 1) + FA_W == WBLOB, "layer offsets");

// ---- small-parameter blob (f32) ----
constexpr int SP_LN1 = LUCE_MK_SP_LN1, SP_LN2 = LUCE_MK_SP_LN2;
constexpr int SP_CONV = LUCE_MK_SP_CONV, SP_NEGA = LUCE_MK_SP_NEGA, SP_DTB = LUCE_MK_SP_DTB, SP_GNW = LUCE_MK_SP_GNW;
constexpr int SP_QN = LUCE_MK_SP_QN, SP_KN = LUCE_MK_SP_KN;
constexpr int SP = LUCE_MK_SP_STRIDE;
static_assert(SP_LN2 == SP_LN1 + H && SP_CONV == SP_LN2 + H, "norm weights");
static_assert(SP_NEGA == SP_CONV + CONV * 4 && SP_DTB == SP_NEGA + DH && SP_GNW == SP_DTB + DH && SP == SP_GNW + DV,
              "GDN small parameters");
static_assert(SP_QN == SP_LN2 + H && SP_KN == SP_QN + HD && SP_KN + HD <= SP, "attention small parameters");
constexpr int64_t SBLOB = int64_t(NL) * SP + H;   // + the final norm

constexpr int64_t STATE_L = int64_t(DH) * DK * DV;   // f32 GDN state per layer
constexpr int64_t KV_L = int64_t(NKV) * HD;          // K (or V) cache elements per position per attention layer

// ---- global scratch (f32 buffer of layout.scratch_floats): what blocks exchange within a step ----
// Tagged values (u64 = epoch << 32 | f32 bits, mk_sync.cuh) are polled by their readers, so they need no flag.
// The residual stream is three rotating buffers (mk_norm.cuh), each XC copies that the split-K adds spread over.
constexpr int XC = 4;            // 4 copies: 132 same-address f32 reductions serialise (~17 ns each); 8 cost more loads
struct Scratch {
    u64 raw[GDN_ROWS];                     // P1 outputs (in_proj, or qkv in the first FA_ROWS), tagged
    u64 ss[DH][NSL];                       // GDN gated-norm partial sums of squares per (head, value slice), tagged
    alignas(16) float x[3][XC][H];         // residual stream buffers
    u64 aout[NQH * HD];                    // attention: merged, gated output (o_proj input), tagged
    u64 atag[NKV][QPG][ATT_MAXCH][HD];     // attention: per-chunk unnormalised outputs, tagged (a head's contiguous)
    u64 amltag[NKV][QPG][ATT_MAXCH][2];    // attention: per-chunk (max, sum), tagged
#if MK_O_TAGS
    u64 xo[H];                             // an attention layer's x + o_proj (the MLP's input), tagged; last, so no
                                           // other field moves (NOTES.md v35: the residual buffers' place matters)
#endif
};
static_assert(sizeof(Scratch) % 16 == 0, "scratch is a whole number of float4");
constexpr int64_t SCRATCH_FLOATS = sizeof(Scratch) / 4;

// ---- shared memory of a block: this struct, then the weight ring at SM_RING ----
struct AttnWork {                 // attention item
    alignas(16) float q[HD], k[HD], v[HD];
    float wm[16], wl[16];         // per-warp (max, sum) of the merge
    float cm[ATT_MAXCH], cl[ATT_MAXCH];  // per-chunk (max, sum) of the head merge
};
struct GdnWork {                  // GDN item
    alignas(16) float q[DK], k[DK];
    float v[SLV], e[SLV], o[SLV], u[SLV], z[SLV];
    float gnw[SLV];               // the slice's gated-norm weights
    float red[8][SLV][3];         // per-warp partial dots (S k, S q, k q)
    float sc[8];                  // beta, decay, 1/|q|, 1/|k|, raw b, raw a, dt_bias, -exp(A_log)
};
constexpr int HS_MAX = 1024;      // MLP hidden units per block (FF / grid): grids of >= 4 blocks (MIN_GRID below)
// The fewest blocks a launch may have: FF / HS_MAX MLP hidden units per block, and one block never holds two GDN items
// of one head (an item waits for its head's other value slices, mk_gdn.cuh: with fewer than NSL blocks a block's
// second item of a head would wait for itself)
constexpr int MIN_GRID = NSL > (FF + HS_MAX - 1) / HS_MAX ? NSL : (FF + HS_MAX - 1) / HS_MAX;
static_assert(MIN_GRID == 8, "8 blocks at least");
struct MlpWork {
    alignas(16) float part[H];    // the block's split-K down_proj partial
    float hs[HS_MAX];             // silu(gate) * up of the block's hidden units
};
struct Smem {
    uint64_t full[MAX_SLOTS];     // mbarrier: ring slot landed
    uint64_t empty[MAX_SLOTS];    // mbarrier: ring slot released by the consumer warps
    unsigned pause;               // producer pause reasons (mk_sync.cuh)
    unsigned sleep_ns;            // tune.spin_sleep_ns (mk_sync.cuh, spin_pause)
    alignas(16) float x[H];       // the sub-layer's input x
    alignas(16) float acts[4096]; // matvec input; the split-K / warp-merge partials of the items; the screened LM
                                  // head's per-row bounds
    float red[16];                // block_sum; the screened LM head's per-warp largest lower bounds
    u64 best[16];                 // per-warp argmax of the LM head
    unsigned rescored;            // the screened LM head's rows recomputed in this step
    union {
        AttnWork attn;
        GdnWork gdn;
        MlpWork mlp;
    } w;
};
static_assert(NCW * HD <= 4096, "acts holds the 15 warps' attention partials");

// ---- the LM head's screening copy (luce_mk.h, lm8): a block keeps one f32 bound per row of its LM-head rows in acts,
// so a screened LM head needs ceil(V / grid) <= 4096 (grids of 61 blocks and more; smaller ones read the bf16 head)
constexpr int LM8_ROW_BYTES = LUCE_MK_LM8_ROW_BYTES;
constexpr int LM8_MAX_ROWS = LUCE_MK_LM8_MAX_ROWS;
static_assert(LM8_MAX_ROWS <= 4096, "the bounds live in Smem::acts");
static_assert(LM8_ROW_BYTES == H + 16 && LM8_ROW_BYTES % 16 == 0, "codes, then s, c and padding (16-byte rows)");
constexpr int SM_RING = (int)((sizeof(Smem) + 127) / 128 * 128);   // ring slots are 128-byte aligned

}  // namespace mk
