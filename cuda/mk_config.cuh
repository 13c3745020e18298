// mk_config.cuh -- compile-time shapes of Qwen3.5-0.8B and the memory layouts shared by the kernel and luce_mk.h.
#pragma once
#include <cstdint>

// build options (defaults = the fastest measured; see NOTES.md)
#ifndef MK_PROLOGUE2
#define MK_PROLOGUE2 1                // P3 prologues (gated norm, attention merge) issue all their loads up front
#endif
#ifndef MK_HEADCNT
#define MK_HEADCNT 1                  // P1 -> P2 by per-head (GDN) / per-KV-group (attention) row counters, no barrier
#endif
#ifndef MK_BAR2
#define MK_BAR2 1                     // grid barrier arrival without the extra __threadfence (red.release suffices)
#endif
#ifndef MK_GDNFUSE
#define MK_GDNFUSE 1                  // GDN out_proj split-K by (head, value slice) inside the recurrence item: no
                                      // barrier between the recurrence and out_proj (out_proj stored transposed)
#endif
#ifndef MK_TAGRAW
#define MK_TAGRAW 1                   // 1: P1 outputs as tagged u64 (epoch << 32 | f32) that P2 polls, no row
                                      // counters (+5.6 % on the H100 once the copy queue is shallow; v8 with deep
                                      // queues measured no gain). 0: per-head / per-group row counters (MK_HEADCNT)
#endif
#ifndef MK_HEADBUF
#define MK_HEADBUF 0                  // 1: GDN items add out_proj partials without the head's rstd into per-head
                                      // buffers, the MLP prologue applies the 16 rstd: no wait for the 8 sibling
                                      // items (measured: no gain)
#endif
#ifndef MK_NOINLINE
#define MK_NOINLINE 0                 // 1: GDN / attention items as real calls: no spills with every option, but
                                      // Ctx then lives in local memory: -75..-90 us/token (measured)
#endif
#if MK_NOINLINE
#define MK_ITEM_FN __device__ __noinline__
#else
#define MK_ITEM_FN __device__
#endif
#ifndef MK_SLOT_KB
#define MK_SLOT_KB 32                 // ring slot size (KB): 16, 24, 32, 48 or 64 (192 KB of ring)
#endif
#ifndef MK_INFLIGHT
#define MK_INFLIGHT 1                 // > 0: the producer keeps at most this many copies in flight per SM (queue depth;
                                      // 1: +12 % tok/s on the H100: every dependent L2 round trip waits behind them)
#endif
#ifndef MK_INFLIGHT_LM
#define MK_INFLIGHT_LM 2              // the same cap while streaming the LM head (pure streaming, no dependent loads)
#endif
#ifndef MK_PAUSE
#define MK_PAUSE 12                   // bit mask: the producer issues no new copy while the consumers wait on a grid
                                      // barrier (1), a row / sibling counter (2), load x for a norm (4), run a GDN
                                      // recurrence item up to its out_proj (8) or an attention item (16): queued
                                      // copies slow those round trips
#endif
#ifndef MK_ATTHEAD
#define MK_ATTHEAD 1                  // 1: attention items per (KV group, query head, chunk): one pass over the chunk
                                      // instead of one per query head (<= 16 chunks, <= 128 items)
#endif
#ifndef MK_ATTMERGE
#define MK_ATTMERGE 1                 // 1 (needs MK_ATTHEAD): the last chunk item of each query head merges the head's
                                      // chunks and applies the output gate; o_proj's prologue then reads 2048 values
                                      // instead of every chunk's partials (132 blocks reading the same lines)
#endif
#if MK_ATTMERGE && !MK_ATTHEAD
#error "MK_ATTMERGE needs MK_ATTHEAD"
#endif
// per-phase caps inside a layer (0: in_proj / qkv, 1: out_proj / o_proj, 2: gate/up, 3: down), default MK_INFLIGHT
#ifndef MK_CAP_K0
#define MK_CAP_K0 MK_INFLIGHT
#endif
#ifndef MK_CAP_K1
#define MK_CAP_K1 MK_INFLIGHT
#endif
#ifndef MK_CAP_K2
#define MK_CAP_K2 MK_INFLIGHT
#endif
#ifndef MK_CAP_K3
#define MK_CAP_K3 MK_INFLIGHT
#endif
#ifndef MK_LMTAIL_ROWS
#define MK_LMTAIL_ROWS 192            // the last rows of a block's LM head stream use the MK_INFLIGHT cap again
#endif
#ifndef MK_IDLEPF
#define MK_IDLEPF 0                   // > 0: while the ring is full the producer prefetches up to this many bytes of
                                      // the following chunks into L2 (sm_90), one chunk per MK_IDLEPF_NS
#endif
#ifndef MK_IDLEPF_NS
#define MK_IDLEPF_NS 1500
#endif
#ifndef MK_SSTAG
#define MK_SSTAG 1                    // 1: GDN items publish their partial sum of squares as tagged u64 (epoch | f32)
                                      // that the 7 sibling items poll: no counter release + poll + load
#endif
#if MK_HEADBUF && MK_XCOPIES != 1
#error "MK_HEADBUF needs MK_XCOPIES=1 (with 4 copies it measured wrong logits on the H100)"
#endif
#if MK_SSTAG && (!MK_GDNFUSE || MK_HEADBUF)
#error "MK_SSTAG needs MK_GDNFUSE and not MK_HEADBUF"
#endif
#ifndef MK_L2LEAD
#define MK_L2LEAD 0                   // bytes of the block's weight stream kept prefetched into L2 beyond the ring
                                      // (65536: +1 % tok/s, -3 % tok/J on the H100: off for an energy tool)
#endif
#ifndef MK_XCOPIES
#define MK_XCOPIES 4
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
constexpr int SLOT_BYTES = MK_SLOT_KB * 1024;   // ring slot (one TMA copy); 192 KB of ring in all
constexpr int MAX_SLOTS = 6 * 32 / MK_SLOT_KB;
constexpr int SYNCS_PER_STEP = 6 * (MK_HEADCNT ? 3 : 4) + 18 * ((MK_HEADCNT ? 3 : 4) - (MK_GDNFUSE ? 1 : 0)) + 1;
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

// f32 scratch (activations exchanged between blocks)
constexpr int S_RAW = 0;                      // in_proj / qkv outputs (8224; tagged u64 with MK_TAGRAW)
constexpr int RAW_FLOATS = MK_TAGRAW ? 16448 : 8448;
constexpr int S_OGDN = RAW_FLOATS;            // GDN recurrence outputs (2048)
constexpr int S_SS = S_OGDN + 2048;           // GDN partial sum of squares [16][8] (f32, or tagged u64: MK_SSTAG)
constexpr int XC = MK_XCOPIES;                // copies per residual buffer (block b adds its MLP partial to copy b % XC)
constexpr int S_X = S_SS + 256;               // residual stream, 3 rotating buffers x XC copies of 1024 (mk_decode.cu)
constexpr int S_APART = S_X + 3 * XC * H;     // attention partials [2][ATT_MAXCH][4][256]
constexpr int S_AML = S_APART + 2 * ATT_MAXCH * 4 * 256;   // [2][ATT_MAXCH][4][2] (max, sum)
constexpr int S_HB = S_AML + 2 * ATT_MAXCH * 4 * 2;      // MK_HEADBUF: [2 sets][16 heads][1024] out_proj partials
constexpr int S_AOUT = S_HB + (MK_HEADBUF ? 2 * DH * H : 0);  // MK_ATTMERGE: merged, gated attention output (2048)
constexpr int S_CNT = S_AOUT + (MK_ATTMERGE ? NQH * HD : 0);  // u32 counters, one per 128-byte line: [0,16) GDN head
                                                         // in_proj rows, [16,18) attention group qkv rows,
                                                         // [18,34) GDN head value slices done (MK_GDNFUSE),
                                                         // [34,42) attention chunk items done per query head
constexpr int CNT_STRIDE = 32;
constexpr int N_CNT = 42;
constexpr int SCRATCH = S_CNT + N_CNT * CNT_STRIDE;

constexpr int64_t STATE_L = int64_t(DH) * DK * DV;   // f32 per GDN layer
constexpr int64_t KV_L = int64_t(NKV) * HD;          // elements per position per FA layer

// shared memory (bytes)
constexpr int SM_BARS = MAX_SLOTS >= 8 ? 256 : 128;   // 2 * MAX_SLOTS mbarriers, then (last word) the pause flag
constexpr int SM_PAUSE = SM_BARS - 4;
constexpr int SM_X = SM_BARS;                         // x (1024 f32)
constexpr int SM_ACT = SM_X + 4 * H;                  // activations / attention merge work (4096 f32)
constexpr int SM_MISC = SM_ACT + 4 * 4096;            // 2048 f32 scratch
constexpr int SM_RING = SM_MISC + 4 * 2048;           // ring of SLOT_BYTES slots (128-aligned)
constexpr int SM_FIXED = SM_RING;

}  // namespace mk
