/* luce_mk.h -- the C ABI of the Qwen3.5-0.8B decode megakernel (ctypes-callable; raw pointers + a CUDA stream).
 *
 * One call of luce_mk_decode runs n_steps decode steps in ONE persistent cooperative kernel launch: for each step the
 * embedding lookup, all 24 layers, the final norm, the tied LM head and the argmax; the argmax is fed back on the
 * device as the next step's input (unless a forced input token is given). No host work happens between layers/steps.
 *
 * Layouts (all device memory, owned by the caller; see luce_mk_get_layout for the sizes):
 *   wblob   bf16, the 24 layers' matrices in streaming order (layer l at layout.layer_woff[l] elements):
 *           GDN layer: in_proj [8224 x 1024], head-major: for head h = 0..15 the 514 rows [q_h 128 | k_h 128 |
 *                      v_h 128 | z_h 128 | b_h | a_h] (rows of in_proj_qkv / _z / _b / _a); out_proj [1024 x 2048]
 *                      (TRANSPOSED [2048 x 1024] when layout.gdn_out_transposed);
 *                      gate/up [3584 x 2048] (row i = gate_i | up_i); down_proj TRANSPOSED [3584 x 1024]
 *           FA layer:  qkv [5120 x 1024], by KV group g = 0, 1: [q_proj rows 2048g..2048g+2047 (4 query heads, q/gate
 *                      interleaved per head as in HF) | k_proj rows 256g.. (256) | v_proj rows 256g.. (256)];
 *                      o_proj [1024 x 2048]; gate/up; down (as above)
 *   sblob   f32 small params, layer l at l * layout.sp_stride: [0,1024) 1+input_layernorm, [1024,2048) 1+post_norm;
 *           GDN: [2048, 2048+6144*4) conv1d weight [6144][4]; +26624 -exp(A_log)[16]; +26640 dt_bias[16];
 *                +26656 gated-norm weight[128] (plain).  FA: +2048 1+q_norm[256]; +2304 1+k_norm[256].
 *           final norm (1+w) at 24 * sp_stride.
 *   embed   bf16 [248320 x 1024]: embedding and (tied) LM head.
 *   kcache/vcache bf16 [6][2][max_seq][256]; gdn_state f32 [18][16][8][16][16][8] ([layer][head][v-slice][k/8][v][k%8]);
 *   conv_hist f32 [18][6144][4] (ring indexed by position % 4); scratch f32 [layout.scratch_floats];
 *   sync u32 [32] (monotonic barrier counter, never reset); best u64 [2] (argmax slots, zeroed by reset);
 *   last_token i32 [1] (last produced token; input of step 0 when no forced token is given).
 * A new sequence (reset) needs gdn_state, conv_hist and best zeroed and pos = 0; the KV cache needs no clearing.
 */
#ifndef LUCE_MK_H
#define LUCE_MK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LUCE_MK_ABI_VERSION 4

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
    int debug_flags;        /* 0 in normal use; timing experiments only (results invalid): 1 skip matvec math,
                               2 skip GDN/attention work, 4 skip grid barriers */
    unsigned long long* trace; /* NULL, or [n_steps][luce_mk_trace_points()][grid] %globaltimer ns at each block's
                                  phase boundaries (timing diagnosis; see scripts/trace_megakernel.py) */
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
    int gdn_out_transposed;     /* 1: GDN out_proj is stored transposed [2048 x 1024] (split-K build, MK_GDNFUSE) */
} LuceMkLayout;

typedef struct LuceMkLaunchInfo {
    int grid;            /* blocks (one per SM) */
    int threads;         /* per block */
    int smem_bytes;      /* dynamic shared memory per block */
    int ring_slots;      /* weight-ring slots of 32 KB */
    int sm_count;
    int occupancy;       /* resident blocks per SM the occupancy API allows */
} LuceMkLaunchInfo;

int luce_mk_abi_version(void);
void luce_mk_get_layout(LuceMkLayout* out);
/* Fills `out` for the current device; returns 0 or a CUDA error / negative luce_mk error code. */
int luce_mk_launch_info(LuceMkLaunchInfo* out);
/* Runs p->n_steps decode steps in one cooperative launch on `stream` (a cudaStream_t). Returns 0 or an error code. */
int luce_mk_decode(const LuceMkParams* p, void* stream);
const char* luce_mk_error_string(int code);
/* Trace points per step: 10 per layer (P1 x ready, in_proj done, mixer done, mixer barrier passed, P3 done, P3 barrier
   passed [attention layers], P4 x ready, gate/up done, down added, P4 barrier passed), then step start, LM x ready,
   LM head done, LM barrier passed. */
int luce_mk_trace_points(void);

#ifdef __cplusplus
}
#endif
#endif /* LUCE_MK_H */
