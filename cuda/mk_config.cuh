// mk_config.cuh -- compile-time shapes of Qwen3.5-0.8B and the memory layouts shared by the kernel and luce_mk.h.
#pragma once
#include <cstdint>

// build options (defaults = the fastest measured; see NOTES.md)
#ifndef MK_XV4
#define MK_XV4 1                      // sm_90: residual buffers as float4 {3 values, count} (see mk_matvec.cuh)
#endif
#ifndef MK_POLL
#define MK_POLL 1                     // 1: one lane per warp spins on the data first, the others after it (32x fewer
                                      // L2 requests while waiting); 0: every thread spins on its own values
#endif
#ifndef MK_L2LEAD
#define MK_L2LEAD 65536               // bytes of the block's weight stream kept prefetched into L2 beyond the ring
#endif

namespace mk {

constexpr int H = 1024;          // hidden
constexpr int NL = 24;           // layers (18 GDN + 6 full attention: layer l is FA iff l % 4 == 3)
constexpr int FF = 3584;         // MLP intermediate
constexpr int V = 248320;        // vocab
constexpr int NQH = 8, NKV = 2, HD = 256, ROT = 64;    // gated attention
constexpr int DH = 16, DK = 128, DV = 128;             // GDN heads / key / value dims
constexpr int CONV = 6144;                             // GDN conv channels (q|k|v)
constexpr int NSL = 8, SLV = DV / NSL;                 // GDN value slices per head (work items = 16 * 8)
constexpr int GDN_ROWS = 8224;   // in_proj rows, head-major: 16 x [q 128 | k 128 | v 128 | z 128 | b | a]
constexpr int GDN_HROWS = 514;   // in_proj rows per GDN head
constexpr int GQ = 0, GK = 128, GV = 256, GZ = 384, GB = 512, GA = 513;  // offsets inside a head's rows
constexpr int FA_ROWS = 5120;    // qkv rows, by KV group: 2 x [4 x (q 256 | gate 256) | k 256 | v 256]
constexpr int FA_GROWS = 2560;   // qkv rows per KV group
constexpr int FK = 2048, FV = 2304;  // k, v offsets inside a group's rows (query head hh at 512 hh, its gate + 256)
constexpr float EPS = 1e-6f;

constexpr int NCW = 15;          // consumer warps
constexpr int NCT = NCW * 32;    // consumer threads (480)
constexpr int NT = NCT + 32;     // + one producer warp = 512 threads (a 17-warp block would cap registers at 96)
constexpr int SLOT_BYTES = 32768;
constexpr int MAX_SLOTS = 6;
constexpr int SYNCS_PER_STEP = 6 + 1;   // grid barriers: attention items -> merge (6 layers), LM head argmax
constexpr int ATT_CHUNK = 16;    // min positions per attention work item (one per warp)
constexpr int ATT_MAXCH = 32;    // max sequence chunks per KV head

__host__ __device__ constexpr bool is_fa(int l) { return (l & 3) == 3; }
__host__ __device__ constexpr int fa_index(int l) { return l >> 2; }
__host__ __device__ constexpr int gdn_index(int l) { return l - (l >> 2); }

// bf16 weight blob (elements)
constexpr int64_t W_OUT = int64_t(H) * 2048;
constexpr int64_t W_GU = int64_t(FF) * 2 * H;
constexpr int64_t W_DOWN = int64_t(H) * FF;     // stored transposed: [FF][H]
constexpr int64_t GDN_W = int64_t(GDN_ROWS) * H + W_OUT + W_GU + W_DOWN;
constexpr int64_t FA_W = int64_t(FA_ROWS) * H + W_OUT + W_GU + W_DOWN;
__host__ __device__ constexpr int64_t layer_woff(int l) { return int64_t(gdn_index(l)) * GDN_W + int64_t(l >> 2) * FA_W; }
constexpr int64_t WBLOB = 18 * GDN_W + 6 * FA_W;

// f32 small-parameter blob
constexpr int SP_LN1 = 0, SP_LN2 = 1024, SP_CONV = 2048, SP_NEGA = 26624, SP_DTB = 26640, SP_GNW = 26656;
constexpr int SP_QN = 2048, SP_KN = 2304;
constexpr int SP = 26784;
constexpr int64_t SBLOB = int64_t(NL) * SP + H;

// scratch (activations exchanged between blocks; offsets in floats, u64 regions 8-byte aligned). No flags or
// barriers guard the data: a reader polls the data itself (see mk_sync.cuh):
//   tagged u64 = (epoch << 32) | f32 bits, one writer per value (in_proj/qkv outputs, GDN sums of squares);
//   counted u64 = fixed-point sum with an add count in the top byte (residual stream, split-K reductions).
constexpr int S_RAW = 0;                      // tagged [8224] in_proj / qkv outputs
constexpr int S_SS = 16448;                   // tagged [16 heads][8 slices] GDN partial sums of squares
constexpr int S_X = 16704;                    // counted residual stream, 3 rotating buffers (stride 2048 floats)
constexpr int XSTRIDE = 2048;
constexpr int S_APART = S_X + 3 * XSTRIDE;    // f32 attention partials [2][ATT_MAXCH][4][256]
constexpr int S_AML = S_APART + 2 * ATT_MAXCH * 4 * 256;   // [2][ATT_MAXCH][4][2] (max, sum)
constexpr int SCRATCH = S_AML + 2 * ATT_MAXCH * 4 * 2;

constexpr int64_t STATE_L = int64_t(DH) * DK * DV;   // f32 per GDN layer
constexpr int64_t KV_L = int64_t(NKV) * HD;          // elements per position per FA layer

// shared memory (bytes)
constexpr int SM_BARS = 128;                          // 2 * MAX_SLOTS mbarriers
constexpr int SM_X = SM_BARS;                         // x (1024 f32)
constexpr int SM_ACT = SM_X + 4 * H;                  // activations / attention merge work (4096 f32)
constexpr int SM_MISC = SM_ACT + 4 * 4096;            // 2048 f32 scratch
constexpr int SM_RING = SM_MISC + 4 * 2048;           // ring of SLOT_BYTES slots (128-aligned)
constexpr int SM_FIXED = SM_RING;

}  // namespace mk
