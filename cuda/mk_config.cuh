// mk_config.cuh -- the build options (the only -D switches the kernel has) and the model's compile-time shapes.
//
// Every option below is read by luce_bench/kernels/build.py (names are parsed from the `#ifndef MK_*` lines), so an
// unknown name fails the build there and a bad value fails it here with one #error line. Each one stays because a
// later tuning step has a reason to switch it (cuda/NOTES.md has the measurements behind the defaults):
//   MK_SLOT_KB        ring slot (one bulk copy) size; the ring is 192 KB whatever the slot size (a layout, so a
//                     build option). The tuning that needs no rebuild (copies in flight, pauses, polling sleep) is
//                     LuceMkParams.tune (luce_mk.h), chosen per GPU at run time (luce_bench/kernels/tune.py)
//   MK_LM_TAIL_ROWS   the LM head's last rows per block that stream at the layers' copies in flight (tune.inflight)
//                     instead of tune.inflight_lm, so the next step's first copies do not queue behind a deep LM
//                     queue: 192 since v10 (2 KB rows then, 1,040-byte screened rows since v17); to screen against the
//                     LM head's depth on the H200 (NOTES.md, session 45)
//   MK_O_TAGS         1: an attention layer's o_proj stores its rows of x as tagged values that every block's MLP
//                     polls, so no grid barrier follows o_proj (43 per step, not 49), and the attention layer makes
//                     one residual transition instead of two (mk_norm.cuh, xk); a candidate while screened (NOTES.md
//                     v35b)
//   MK_PF_GSTAGES     prefill GEMM: cp.async stages (2-4) and k depth per stage (MK_PF_GBK 32 or 64): the pipeline
//   MK_PF_GBK         depth that hides L2 latency; 3 x 64 won on the H200 (NOTES.md, prefill v3), another GPU may differ
//   MK_PF_GBM         prefill GEMM: rows per tile, 64 or 128 (warp tiles 32 x 64 or 64 x 64: more products per
//                     shared-memory load against more padding rows at M = 520); to be measured (NOTES.md v5)
//   MK_PF_ATT_PLAIN   prefill attention: 0 stages the key tiles by cp.async where the device's shared memory per block
//                     holds them, else loads them through registers (chosen at run time); 1 always the latter: to
//                     time and test it on a GPU that holds both (NOTES.md v7)
//   MK_PF_ATT_SPLIT   prefill attention: 1 cuts a short prompt's key range into parts run by separate blocks and merged
//                     (pf_attn.cuh), 0 one block per position block: to time the split against the whole (NOTES.md v9)
//   MK_PF_GDN_TC      prefill GDN: 1 runs the chunked delta rule on tensor cores (pf_gdn_tc.cuh, tf32; pp520 7.06 ms
//                     against 9.10, NOTES.md v4), 0 the f32 CUDA-core kernels (pf_gdn.cuh); 0 stays only until the
//                     per-length GPU test has passed with 1, then it goes
//   MK_PF_CUBLAS      prefill GEMMs: 1 runs them through cuBLAS once Python has loaded it (pf_cublas.cuh; pp520 4.79
//                     ms against 6.39, NOTES.md v6), the own kernels (pf_gemm.cuh) where it is not found; 0 always
//                     the own kernels: the build for a machine without cuBLAS, and the tuning of the own GEMMs
//   MK_PF_WK_HALF     prefill GDN: 1 hands W and Kd from the prep to the state kernel in fp16 (the tf32 products'
//                     mantissa, half the bytes that each of a head's 8 state blocks reads per chunk), 0 in f32: a
//                     candidate until measured (NOTES.md, prefill v11)
//   MK_SPIN_LIMIT_NS  watchdog: a spin loop that waits longer traps (the launch fails instead of hanging); raise it
//                     under compute-sanitizer or a debugger
#pragma once

#ifndef MK_SLOT_KB
#define MK_SLOT_KB 32
#endif
#ifndef MK_LM_TAIL_ROWS
#define MK_LM_TAIL_ROWS 192
#endif
#ifndef MK_O_TAGS
#define MK_O_TAGS 0
#endif
#ifndef MK_PF_GSTAGES
#define MK_PF_GSTAGES 3
#endif
#ifndef MK_PF_GBK
#define MK_PF_GBK 64
#endif
#ifndef MK_PF_GBM
#define MK_PF_GBM 64
#endif
#ifndef MK_PF_ATT_PLAIN
#define MK_PF_ATT_PLAIN 0
#endif
#ifndef MK_PF_ATT_SPLIT
#define MK_PF_ATT_SPLIT 1
#endif
#ifndef MK_PF_CUBLAS
#define MK_PF_CUBLAS 1
#endif
#ifndef MK_PF_GDN_TC
#define MK_PF_GDN_TC 1
#endif
#ifndef MK_PF_WK_HALF
#define MK_PF_WK_HALF 0
#endif
#ifndef MK_SPIN_LIMIT_NS
#define MK_SPIN_LIMIT_NS 20000000000ull
#endif

#if MK_SLOT_KB != 16 && MK_SLOT_KB != 24 && MK_SLOT_KB != 32 && MK_SLOT_KB != 48 && MK_SLOT_KB != 64
#error "MK_SLOT_KB must be 16, 24, 32, 48 or 64"
#endif
#if MK_LM_TAIL_ROWS < 0 || MK_LM_TAIL_ROWS > 4096
#error "MK_LM_TAIL_ROWS must be 0 to 4096 (rows of a block's LM head)"
#endif
// The screened LM head scores its int8 rows with integer dot products (dp4a) against the activations written as three
// signed 7-bit digits over a power-of-two scale on sm_90 (NOTES.md v33: +0.7 % at 64, +0.8 % at 4000 on the H200,
// where the f32 products kept its stream at 84 % of the copy rate); sm_80/86/89 keep the f32 products (the integer
// scores spill there)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define MK_LM_INT_SCORES 1
#else
#define MK_LM_INT_SCORES 0
#endif
#if MK_O_TAGS != 0 && MK_O_TAGS != 1
#error "MK_O_TAGS must be 0 or 1"
#endif
#if MK_PF_GSTAGES < 2 || MK_PF_GSTAGES > 4 || (MK_PF_GBK != 32 && MK_PF_GBK != 64)
#error "MK_PF_GSTAGES must be 2, 3 or 4 and MK_PF_GBK 32 or 64"
#endif
#if MK_PF_GBM != 64 && MK_PF_GBM != 128
#error "MK_PF_GBM must be 64 or 128"
#endif
#if MK_PF_ATT_PLAIN != 0 && MK_PF_ATT_PLAIN != 1
#error "MK_PF_ATT_PLAIN must be 0 or 1"
#endif
#if MK_PF_ATT_SPLIT != 0 && MK_PF_ATT_SPLIT != 1
#error "MK_PF_ATT_SPLIT must be 0 or 1"
#endif
#if MK_PF_CUBLAS != 0 && MK_PF_CUBLAS != 1
#error "MK_PF_CUBLAS must be 0 or 1"
#endif
#if MK_PF_GDN_TC != 0 && MK_PF_GDN_TC != 1
#error "MK_PF_GDN_TC must be 0 or 1"
#endif
#if (MK_PF_WK_HALF != 0 && MK_PF_WK_HALF != 1) || (MK_PF_WK_HALF && !MK_PF_GDN_TC)
#error "MK_PF_WK_HALF must be 0 or 1, and 1 only with MK_PF_GDN_TC=1"
#endif
#if MK_SPIN_LIMIT_NS < 1000000
#error "MK_SPIN_LIMIT_NS must be at least 1000000 (1 ms)"
#endif

namespace mk {

constexpr int H = 1024;          // hidden
constexpr int NL = 24;           // layers (18 GDN + 6 full attention: layer l is FA iff l % 4 == 3)
constexpr int FF = 3584;         // MLP intermediate
constexpr int V = 248320;        // vocab
constexpr int NQH = 8, NKV = 2, HD = 256, ROT = 64;    // gated attention: query heads, KV heads, head dim, RoPE dims
constexpr int QPG = NQH / NKV;                         // query heads per KV group
constexpr int DH = 16, DK = 128, DV = 128;             // GDN heads / key / value dims
constexpr int CONV = 6144;                             // GDN conv channels (q|k|v)
constexpr int NSL = 8, SLV = DV / NSL;                 // GDN value slices per head (work items = 16 * 8)
constexpr int GDN_ITEMS = DH * NSL;                    // GDN work items per layer
constexpr float EPS = 1e-6f;

constexpr int NCW = 15;          // consumer warps
constexpr int NCT = NCW * 32;    // consumer threads (480)
constexpr int NT = NCT + 32;     // + one producer warp = 512 threads (a 17-warp block would cap registers at 96)

constexpr int SLOT_BYTES = MK_SLOT_KB * 1024;   // ring slot (one bulk copy)
constexpr int MAX_SLOTS = 6 * 32 / MK_SLOT_KB;  // 192 KB of ring at most
constexpr int LM_TAIL_ROWS = MK_LM_TAIL_ROWS;   // the LM head's last rows per block stream at the layers' cap

// positions per warp whose K/V rows an attention item loads at once: 3 on sm_90 (128 registers, 0 spills; NOTES.md
// v23: +1.3-1.8 % at position 4000), 2 on sm_80/86/89, where 3 spills (v12; 4 spills on sm_90 too). The host's
// layouts do not depend on it
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr int ATT_BATCH = 2;
#else
constexpr int ATT_BATCH = 3;
#endif
constexpr int ATT_CHUNK = NCW * ATT_BATCH;  // min positions per attention work item: one K/V batch per warp (NOTES.md
                                            // v22: 16, one position per warp, made more chunks to merge; v34: two or
                                            // three batches per warp, fewer chunks, lost)
constexpr int ATT_MAXCH = 16;    // max sequence chunks per query head (items per layer <= 2 x 4 x 16 = 128)

// Grid barriers per step: after each GDN layer's mixer (18), after each attention layer's o_proj (6, none with
// MK_O_TAGS: the MLP polls o_proj's tagged rows), after each MLP (24), after the LM head (1). An attention layer's
// mixer has none: o_proj polls the tagged head outputs (NOTES.md v25).
constexpr int SYNCS_PER_STEP = 2 * (NL - NL / 4) + (MK_O_TAGS ? 1 : 2) * (NL / 4) + 1;
static_assert(SYNCS_PER_STEP == (MK_O_TAGS ? 43 : 49), "18 x 2 + 6 x (2 or 1) + 1");

__host__ __device__ constexpr bool is_fa(int l) { return (l & 3) == 3; }
__host__ __device__ constexpr int fa_index(int l) { return l >> 2; }
__host__ __device__ constexpr int gdn_index(int l) { return l - (l >> 2); }

}  // namespace mk
