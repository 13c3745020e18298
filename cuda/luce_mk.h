/* luce_mk.h -- the C ABI of the Qwen3.5-0.8B decode megakernel (ctypes-callable; raw pointers + a CUDA stream).
 *
 * One call of luce_mk_decode runs n_steps decode steps in ONE persistent cooperative kernel launch: for each step the
 * embedding lookup, all 24 layers, the final norm, the tied LM head and the argmax; the argmax is fed back on the
 * device as the next step's input (unless a forced input token is given). No host work happens between layers/steps.
 *
 * Layouts (all device memory, owned by the caller; luce_mk_get_layout gives the sizes):
 *   wblob   bf16, the 24 layers' matrices in streaming order (layer l at layout.layer_woff[l] elements):
 *           GDN layer: in_proj [8224 x 1024], head-major: for head h = 0..15 the 514 rows [q_h 128 | k_h 128 |
 *                      v_h 128 | z_h 128 | b_h | a_h] (rows of in_proj_qkv / _z / _b / _a); out_proj TRANSPOSED
 *                      [2048 x 1024]; gate/up [3584 x 2048] (row i = gate_i | up_i); down_proj TRANSPOSED [3584 x 1024]
 *           FA layer:  qkv [5120 x 1024], by KV group g = 0, 1: [q_proj rows 2048g..2048g+2047 (4 query heads, q/gate
 *                      interleaved per head as in HF) | k_proj rows 256g.. (256) | v_proj rows 256g.. (256)];
 *                      o_proj [1024 x 2048]; gate/up; down (as above)
 *   sblob   f32 small parameters, layer l at l * LUCE_MK_SP_STRIDE, offsets LUCE_MK_SP_* below; the final norm
 *           (1 + w) at 24 * LUCE_MK_SP_STRIDE. Python reads these offsets from this header (luce_bench/kernels/abi.py).
 *   embed   bf16 [248320 x 1024]: embedding and (tied) LM head.
 *   lm8     u8 [248320 x LUCE_MK_LM8_ROW_BYTES] or NULL: the LM head's screening copy (ABI 10). Row j: 1024 bytes
 *           q + 128 (q = round(w_j / s_j) in -127..127, s_j = max|w_j| / 127, 1 for a zero row), then f32 s_j, f32
 *           c_j and 8 zero bytes, where |s_j (h . q_j) - h . w_j| as the kernel computes both is at most ||h||_2 c_j
 *           (luce_bench/kernels/pack.py, pack_lm_screen). The argmax it gives is the bf16 LM head's, exactly: a block
 *           scores its rows on the copy and recomputes from `embed` only the rows whose bound reaches its best.
 *   kcache/vcache bf16 [6][2][max_seq][256]; gdn_state f32 [18][16][8][16][16][8] ([layer][head][v-slice][k/8][v][k%8]);
 *   conv_hist f32 [18][6144][4] (ring indexed by position % 4); scratch f32 [layout.scratch_floats];
 *   sync u32 [32] (monotonic barrier counter: the kernel never resets it; a caller may zero it together with
 *   sync_base between launches); best u64 [2] (argmax slots, zeroed by reset and after a prefill: step p combines
 *   into slot p % 2 and clears the other);
 *   last_token i32 [1] (last produced token; input of step 0 when no forced token is given).
 * A new sequence (reset) needs gdn_state, conv_hist, best and scratch zeroed and pos = 0, step_base = 0; the KV
 * cache needs no clearing.
 */
#ifndef LUCE_MK_H
#define LUCE_MK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LUCE_MK_ABI_VERSION 12 /* 6: + the prefill entry points (the decode ABI is that of 4); 7: + the prefill at pos > 0;
                                  8: + the prefill's GEMMs through cuBLAS (luce_mk_prefill_cublas);
                                  9: + LuceMkParams.tune (the per-GPU tuning, chosen at run time);
                                  10: + LuceMkParams.lm8 and LuceMkTune.lm_screen (the screened LM head);
                                  11: + LuceMkParams.grid (blocks per launch, appended);
                                  12: + LuceMkParams.deep_phases, inflight_deep and pause_ready (appended) */

/* The LM head's screening copy (lm8): its row size, and the most LM-head rows a block may hold for the kernel to use it
   (a block keeps one f32 bound per row in shared memory; grids of 61 blocks and more). */
enum LuceMkLmScreen {
    LUCE_MK_LM8_ROW_BYTES = 1040, /* 1024 codes, then f32 s and c, then 8 zero bytes */
    LUCE_MK_LM8_MAX_ROWS = 4096
};

/* Small-parameter blob, f32 offsets inside one layer's LUCE_MK_SP_STRIDE floats. */
enum LuceMkSmallParams {
    LUCE_MK_SP_LN1 = 0,       /* [1024] 1 + input_layernorm.weight */
    LUCE_MK_SP_LN2 = 1024,    /* [1024] 1 + post_attention_layernorm.weight */
    LUCE_MK_SP_CONV = 2048,   /* GDN: [6144][4] conv1d.weight */
    LUCE_MK_SP_NEGA = 26624,  /* GDN: [16] -exp(A_log) */
    LUCE_MK_SP_DTB = 26640,   /* GDN: [16] dt_bias */
    LUCE_MK_SP_GNW = 26656,   /* GDN: [128] gated-norm weight (plain, no 1 +) */
    LUCE_MK_SP_QN = 2048,     /* attention: [256] 1 + q_norm.weight */
    LUCE_MK_SP_KN = 2304,     /* attention: [256] 1 + k_norm.weight */
    LUCE_MK_SP_STRIDE = 26784 /* floats per layer */
};

/* Error codes of the entry points (negative; positive codes are cudaError_t). */
enum LuceMkErrors {
    LUCE_MK_ERR_NO_COOP = -1,        /* the device cannot launch cooperative kernels */
    LUCE_MK_ERR_SMEM = -2,           /* too little shared memory per block for a 2-slot ring */
    LUCE_MK_ERR_OCCUPANCY = -3,      /* the occupancy API reports 0 resident blocks per SM */
    LUCE_MK_ERR_ARGS = -4,           /* bad arguments */
    LUCE_MK_ERR_GRID = -5,           /* too few SMs */
    LUCE_MK_ERR_PREFILL_SMEM = -6,   /* the prefill's GDN kernels need more shared memory per block than the device has */
    LUCE_MK_ERR_CUBLAS_LOAD = -7,    /* luce_mk_prefill_cublas: no such library, or one without cublasGemmEx & co. */
    LUCE_MK_ERR_CUBLAS = -8          /* cuBLAS refused a handle, a stream or a GEMM */
};

/* debug_flags bits: timing experiments only; every result of such a launch is invalid. */
enum LuceMkDebugFlags {
    LUCE_MK_DEBUG_NO_MATH = 1,      /* take weight chunks off the ring without computing */
    LUCE_MK_DEBUG_NO_MIXING = 2,    /* skip the GDN and attention work items */
    LUCE_MK_DEBUG_NO_BARRIERS = 4,  /* skip grid barriers and tag waits (the host must not advance sync_base) */
    LUCE_MK_DEBUG_NO_MLP_ADDS = 8   /* skip the MLP's split-K f32 reductions into the residual stream (sm_90) */
};

/* Producer pause reasons (LuceMkTune.pause_mask bits): the stretches of a step during which the producer issues no
   new weight copy, because queued copies slow the block's dependent L2 round trips (cuda/NOTES.md, MK_PAUSE). */
enum LuceMkPauseReasons {
    LUCE_MK_PAUSE_X_LOAD = 4,     /* the residual-stream loads of an RMSNorm prologue */
    LUCE_MK_PAUSE_GDN_ITEM = 8    /* a GDN work item, up to its out_proj */
};

/* The per-GPU tuning of the decode kernel: the values that depend on the memory system's latencies, read at run time
   (Python picks them per device: luce_bench/kernels/tune.py). Out of range: LUCE_MK_ERR_ARGS. */
typedef struct LuceMkTune {
    int inflight;       /* 0..64: weight copies in flight per SM while streaming the layers (0: as many as the ring
                           holds); every queued copy delays the consumers' dependent round trips */
    int inflight_lm;    /* 0..64: the same while streaming the LM head (its last rows per block go back to inflight) */
    int pause_mask;     /* LuceMkPauseReasons bits the producer honours */
    int spin_sleep_ns;  /* 0..4096: a sleep between two polls of global memory (0: poll at full speed) */
    int lm_screen;      /* 0 or 1 (ABI 10): the LM head scores the screening copy `lm8` (when given) and recomputes only
                           the rows that can be the argmax; steps that return logits always read the whole bf16 head */
} LuceMkTune;

typedef struct LuceMkParams {
    const void* wblob;
    const float* sblob;
    const void* embed;
    void* kcache;
    void* vcache;
    float* gdn_state;
    float* conv_hist;
    float* scratch;
    unsigned int* sync;
    unsigned long long* best;
    int* last_token;
    const int* in_tokens;   /* [n_steps] forced inputs (>= 0) or -1 = previous argmax; may be NULL */
    int* out_tokens;        /* [n_steps] argmax of every step */
    float* logits;          /* [n_steps - logits_first][248320] or NULL (fast path writes no logits) */
    int logits_first;       /* first step whose logits are written */
    int pos;                /* position of step 0 (tokens already cached) */
    int n_steps;
    int max_seq;            /* KV cache capacity (positions) */
    unsigned int sync_base; /* barriers completed so far on `sync` (caller adds n_steps * syncs_per_step) */
    unsigned int step_base; /* steps run so far on this scratch since it was zeroed (epoch tags of the activations
                               blocks exchange); the caller adds n_steps after every launch, debug ones included */
    int debug_flags;        /* 0 in normal use; LuceMkDebugFlags bits for timing experiments (results invalid) */
    unsigned long long* trace; /* NULL, or [n_steps][luce_mk_trace_points()][grid] %globaltimer ns at each block's
                                  phase boundaries (timing diagnosis; luce-bench kernel trace) */
    LuceMkTune tune;           /* ABI 9 */
    const void* lm8;           /* ABI 10: NULL, or the LM head's screening copy (see the layouts above) */
    unsigned int* lm_rescored; /* ABI 10: NULL, or [grid] counters: rows block b recomputed from `embed`, added per
                                  screened step (how well the screen prunes: luce-bench kernel bench) */
    int grid;                  /* ABI 11: blocks of the launch: 0 = one per SM (LuceMkLaunchInfo.grid), else 8 .. the
                                  SM count (LUCE_MK_ERR_ARGS otherwise), to tune per GPU or to run the paths of a
                                  smaller GPU. Fixed within a sequence: the barrier counter grows by grid per barrier
                                  (sync_base counts barriers), so the caller resets `sync` before changing it */
    int deep_phases;           /* ABI 12: 0..15, layer phases whose weight copies run at inflight_deep copies in flight
                                  instead of tune.inflight (bit k: 0 in_proj / qkv, 1 out_proj / o_proj, 2 gate|up,
                                  3 down): more bytes in flight where the consumers only stream, not where they wait */
    int inflight_deep;         /* ABI 12: 0..64, the cap in those phases (0: as many as the ring holds) */
    int pause_ready;           /* ABI 12: 0..64, a pause of tune.pause_mask holds only while at least this many of the
                                  block's issued copies are not yet consumed (0: always; the ring's slots - 1 and more:
                                  only while the ring is full): a stretch that starts on a drained ring still gets
                                  chunks */
} LuceMkParams;

typedef struct LuceMkLayout {
    int64_t wblob_elems;
    int64_t layer_woff[24];
    int64_t sblob_floats;
    int64_t sp_stride;
    int64_t scratch_floats;
    int64_t gdn_state_floats;   /* all 18 layers */
    int64_t conv_hist_floats;   /* all 18 layers */
    int64_t kv_elems_per_pos;   /* per cache (K or V), all 6 layers: 6*2*256 */
    int syncs_per_step;
    int vocab;
    int hidden;
    int gdn_out_transposed;     /* always 1 (GDN out_proj stored transposed [2048 x 1024]) */
} LuceMkLayout;

typedef struct LuceMkLaunchInfo {
    int grid;            /* blocks (one per SM) */
    int threads;         /* per block */
    int smem_bytes;      /* dynamic shared memory per block */
    int ring_slots;      /* weight-ring slots (MK_SLOT_KB each) */
    int sm_count;
    int occupancy;       /* resident blocks per SM the occupancy API allows */
} LuceMkLaunchInfo;

/* The prefill of a prompt from position 0 (mk_prefill.cu): all 24 layers for the n_tokens positions, leaving the
 * KV cache rows 0..n_tokens-1, the GDN states and conv histories exactly as n_tokens decode steps would, and the
 * argmax of the last position in *last_token (the decode kernel's next input). Expects reset buffers (zero GDN
 * state and conv history). */
typedef struct LuceMkPrefillParams {
    const void* wblob16;    /* the layers' weights as fp16, in the layout of LuceMkParams.wblob (the GEMMs read these) */
    const float* sblob;
    const void* embed;
    void* kcache;
    void* vcache;
    float* gdn_state;
    float* conv_hist;
    int* last_token;
    const int* tokens;      /* [n_tokens] prompt token ids (device) */
    int n_tokens;           /* 1 .. max_seq */
    int max_seq;            /* KV cache capacity (positions) */
    void* workspace;        /* luce_mk_prefill_workspace(n_tokens) bytes of device memory, 256-byte aligned */
    float* logits;          /* [vocab] logits of the last position, or NULL */
    int n_layers;           /* 0 (all 24 layers, then the LM head) or, to check layer by layer, 1..24: stop after these
                               layers, without the LM head and last_token */
    float* hidden;          /* NULL, or [n_tokens][1024] f32: the residual stream after the layers run */
    int pos;                /* ABI 7: the prompt's first position; 0, or the positions already cached (their KV rows,
                               GDN states and conv histories are read and continued); pos + n_tokens <= max_seq */
} LuceMkPrefillParams;

int luce_mk_abi_version(void);
void luce_mk_get_layout(LuceMkLayout* out);
/* Fills `out` for the current device; returns 0 or a CUDA error / negative luce_mk error code. */
int luce_mk_launch_info(LuceMkLaunchInfo* out);
/* Runs p->n_steps decode steps in one cooperative launch on `stream` (a cudaStream_t). Returns 0 or an error code. */
int luce_mk_decode(const LuceMkParams* p, void* stream);
const char* luce_mk_error_string(int code);
/* Device bytes the prefill of n_tokens needs as its workspace (0 if n_tokens < 1). */
int64_t luce_mk_prefill_workspace(int n_tokens);
/* Runs the prefill on `stream` (a cudaStream_t), asynchronously. Returns 0 or an error code (luce_mk_error_string). */
int luce_mk_prefill(const LuceMkPrefillParams* p, void* stream);
/* Launches one prefill makes for n_tokens (kernels, for the report; cuBLAS's own launches count as one per GEMM). */
int luce_mk_prefill_launches(int n_tokens);
/* ABI 8. The build option MK_PF_CUBLAS: 1 if this build runs the prefill's GEMMs through cuBLAS once loaded. */
int luce_mk_prefill_gemm_option(void);
/* ABI 8. Load cuBLAS (libcublas.so.*) from `path` (one library per process) and run the prefill's GEMMs there on the
   current device (NULL: back to the kernel's own GEMMs on it). Returns 0 or an error code; a build with
   MK_PF_CUBLAS=0, or a second library path, is refused with LUCE_MK_ERR_ARGS. */
int luce_mk_prefill_cublas(const char* path);
/* ABI 8. cuBLAS's version (e.g. 130100) while the prefill's GEMMs run there, else 0. */
int luce_mk_prefill_cublas_version(void);
/* Trace points per step: 12 per layer (mk_trace.cuh names them), then 4 per step (step start, LM x ready, LM head
   done, LM barrier passed). */
int luce_mk_trace_points(void);

#ifdef __cplusplus
}
#endif
#endif /* LUCE_MK_H */
