// mk_decode.cu -- the persistent decode kernel: the schedule of one decode step, and the extern "C" host entry points
// of luce_mk.h (layout, launch sizing from the SM count and the occupancy API, cooperative launch).
//
// One cooperative launch runs n_steps whole steps. Each block is 15 consumer warps plus one producer warp that streams
// the block's weight rows of every phase into a shared-memory ring (mk_ring.cuh) and runs ahead across all barriers.
// Per step and layer (49 grid barriers per step: 18 x 2 + 6 x 2 + 1; 43 with MK_O_TAGS):
//   P1 in_proj (mk_in_proj.cuh)  RMSNorm + in_proj / qkv rows, outputs as tagged values that P2 polls (no barrier)
//   P2 GDN   (mk_gdn.cuh)        128 items: conv, delta rule, gated norm, out_proj split-K into the residual | barrier
//   P2 attn  (mk_attn.cuh)       items per (KV group, query head, chunk), the last chunk item merges the head and
//                                stores its outputs as tagged values that P3 polls (no barrier)
//   P3 attn  (mk_o_proj.cuh)     o_proj rows + residual                            | barrier (MK_O_TAGS: tagged rows)
//   P4 MLP   (mk_mlp.cuh)        RMSNorm + gate/up + SiLU + down_proj^T split-K into the residual            | barrier
// then the LM head + argmax (mk_lm_head.cuh; screened on an int8 copy unless logits are asked for) | barrier; the
// argmax is the next step's input token.
// Memory layouts: mk_layout.cuh; build options: mk_config.cuh; primitives: mk_sync.cuh; timing trace: mk_trace.cuh.
#include <cuda_runtime.h>
#include "luce_mk.h"
#include "mk_attn.cuh"
#include "mk_gdn.cuh"
#include "mk_in_proj.cuh"
#include "mk_lm_head.cuh"
#include "mk_mlp.cuh"
#include "mk_o_proj.cuh"

namespace mk {

// Grid barrier number c.nsync + 1 of this launch (skipped with LUCE_MK_DEBUG_NO_BARRIERS).
__device__ __forceinline__ void sync_all(Ctx& c, const LuceMkParams& P) {
    ++c.nsync;
    if (P.debug_flags & LUCE_MK_DEBUG_NO_BARRIERS) {
        cbar();
        return;
    }
    grid_sync(P.sync, (P.sync_base + c.nsync) * (unsigned)c.G);
}

// One decode step of the consumer warps: `tok` is the input token, and the argmax on return.
__device__ void consumer_step(Ctx& c, const LuceMkParams& P, int s, int& tok) {
    const int pos = P.pos + s;
    trace_pt(c, P, s, TR_STEP);
    // every prologue's norm weights are loaded before the barrier that precedes it (mk_norm.cuh, norm_weights), but
    // layer 0's: they are loaded here, beside the embedding row's loads
    NormW wn = norm_weights(c, ln1_w(P, 0));
    for (int l = 0; l < NL; ++l) {
        const unsigned ep = layer_epoch(P, s, l);
        float* xmix = xbuf(P, xk(l) + 1);  // the mixer's output residual buffer (MK_O_TAGS: a GDN layer's only)
        in_proj(c, P, s, l, tok, ep, wn);
        if (is_fa(l)) attn_mix(c, P, l, pos, ep);
        else gdn_mix(c, P, l, pos, ep, xmix);
        trace_done(c, P, s, TR_L * l + TR_MIX_DONE);
        if (!is_fa(l)) {
            wn = norm_weights(c, ln2_w(P, l));
            sync_all(c, P);  // (an attention mixer has none: o_proj polls its tagged head outputs)
        }
        trace_pt(c, P, s, TR_L * l + TR_MIX_SYNC);
        if (l == 0 && c.b == 0 && c.tid == 0) P.best[(pos + 1) & 1] = 0ull;  // the next step's argmax slot
        if (is_fa(l)) {
            o_proj(c, P, s, l, xmix, ep);
            wn = norm_weights(c, ln2_w(P, l));
            if (!MK_O_TAGS) sync_all(c, P);  // (MK_O_TAGS: the MLP polls o_proj's tagged rows)
            trace_pt(c, P, s, TR_L * l + TR_O_SYNC);
        }
        mlp(c, P, s, l, wn, ep);
        wn = norm_weights(c, l + 1 < NL ? ln1_w(P, l + 1) : final_norm_w(P));
        sync_all(c, P);
        trace_pt(c, P, s, TR_L * l + TR_MLP_SYNC);
    }
    lm_head(c, P, s, wn);
    sync_all(c, P);
    trace_pt(c, P, s, TR_STEP + 3);
    tok = unpack_token(__ldcg(P.best + (pos & 1)));
    if (tok < 0 || tok >= V) tok = 0;  // only reachable in debug timing modes (no argmax written)
    if (c.b == 0 && c.tid == 0) {
        P.out_tokens[s] = tok;
        *P.last_token = tok;
    }
}

__global__ void __launch_bounds__(NT, 1) decode_kernel(const __grid_constant__ LuceMkParams P, int ns) {
    Ctx c;
    c.G = gridDim.x;
    c.b = blockIdx.x;
    c.tid = threadIdx.x;
    c.warp = threadIdx.x >> 5;
    c.lane = threadIdx.x & 31;
    c.ns = ns;
    c.q = 0;
    c.nsync = 0;
    c.skip_math = (P.debug_flags & LUCE_MK_DEBUG_NO_MATH) != 0;
    if (threadIdx.x == 0) {
        for (int i = 0; i < ns; ++i) {
            mbar_init(&smem().full[i], FULL_ARRIVALS);
            mbar_init(&smem().empty[i], NCW);
        }
        smem().pause = 0u;
        smem().sleep_ns = (unsigned)P.tune.spin_sleep_ns;
    }
    __syncthreads();
    if (c.warp == NCW) {
        run_producer(c, P);
        return;
    }
    int tok = 0;
    for (int s = 0; s < P.n_steps; ++s) {
        const int forced = P.in_tokens ? P.in_tokens[s] : -1;
        if (forced >= 0) tok = forced;
        else if (s == 0) tok = *P.last_token;
        consumer_step(c, P, s, tok);
    }
}

}  // namespace mk

// ------------------------------------------------------------------ host side

namespace {
constexpr int kErrNoCoop = LUCE_MK_ERR_NO_COOP, kErrSmem = LUCE_MK_ERR_SMEM, kErrOccupancy = LUCE_MK_ERR_OCCUPANCY,
              kErrArgs = LUCE_MK_ERR_ARGS, kErrGrid = LUCE_MK_ERR_GRID;

struct DevInfo {
    int sms = 0, optin = 0, coop = 0, ns = 0, smem = 0, occ = 0;
    bool ready = false;
};
DevInfo g_dev[64];

int dev_info(DevInfo** out) {
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    if (dev < 0 || dev >= 64) return kErrArgs;
    DevInfo& d = g_dev[dev];
    if (!d.ready) {
        if ((e = cudaDeviceGetAttribute(&d.sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return (int)e;
        if ((e = cudaDeviceGetAttribute(&d.optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess) return (int)e;
        if ((e = cudaDeviceGetAttribute(&d.coop, cudaDevAttrCooperativeLaunch, dev)) != cudaSuccess) return (int)e;
        if (!d.coop) return kErrNoCoop;
        if (d.sms < mk::MIN_GRID) return kErrGrid;  // one block per SM: the MLP split and the GDN items need 8
        d.ns = (d.optin - mk::SM_RING) / mk::SLOT_BYTES;
        if (d.ns > mk::MAX_SLOTS) d.ns = mk::MAX_SLOTS;
        if (d.ns < 2) return kErrSmem;
        d.smem = mk::SM_RING + d.ns * mk::SLOT_BYTES;
        e = cudaFuncSetAttribute(mk::decode_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, d.smem);
        if (e != cudaSuccess) return (int)e;
        e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&d.occ, mk::decode_kernel, mk::NT, d.smem);
        if (e != cudaSuccess) return (int)e;
        if (d.occ < 1) return kErrOccupancy;
        d.ready = true;
    }
    *out = &d;
    return 0;
}
}  // namespace

extern "C" {

int luce_mk_abi_version(void) { return LUCE_MK_ABI_VERSION; }

void luce_mk_get_layout(LuceMkLayout* o) {
    o->wblob_elems = mk::WBLOB;
    for (int l = 0; l < mk::NL; ++l) o->layer_woff[l] = mk::layer_woff(l);
    o->sblob_floats = mk::SBLOB;
    o->sp_stride = mk::SP;
    o->scratch_floats = mk::SCRATCH_FLOATS;
    o->gdn_state_floats = 18 * mk::STATE_L;
    o->conv_hist_floats = 18LL * mk::CONV * 4;
    o->kv_elems_per_pos = 6 * mk::KV_L;
    o->syncs_per_step = mk::SYNCS_PER_STEP;
    o->vocab = mk::V;
    o->hidden = mk::H;
    o->gdn_out_transposed = 1;
}

int luce_mk_launch_info(LuceMkLaunchInfo* out) {
    DevInfo* d = nullptr;
    const int rc = dev_info(&d);
    if (rc) return rc;
    out->grid = d->sms;  // one block per SM: the occupancy check above guarantees co-residency
    out->threads = mk::NT;
    out->smem_bytes = d->smem;
    out->ring_slots = d->ns;
    out->sm_count = d->sms;
    out->occupancy = d->occ;
    return 0;
}

int luce_mk_decode(const LuceMkParams* p, void* stream) {
    if (!p || p->n_steps < 1 || p->pos < 0 || p->pos + p->n_steps > p->max_seq) return kErrArgs;
    const LuceMkTune& t = p->tune;
    const unsigned pauses = LUCE_MK_PAUSE_X_LOAD | LUCE_MK_PAUSE_GDN_ITEM;
    if (t.inflight < 0 || t.inflight > 64 || t.inflight_lm < 0 || t.inflight_lm > 64 || (t.pause_mask & ~pauses) ||
        t.spin_sleep_ns < 0 || t.spin_sleep_ns > 4096 || t.lm_screen < 0 || t.lm_screen > 1 || p->deep_phases < 0 ||
        p->deep_phases > 15 || p->inflight_deep < 0 || p->inflight_deep > 64 || p->pause_ready < 0 ||
        p->pause_ready > 64)
        return kErrArgs;
    DevInfo* d = nullptr;
    const int rc = dev_info(&d);
    if (rc) return rc;
    const int grid = p->grid ? p->grid : d->sms;  // every row split, item loop and barrier target reads gridDim.x
    if (grid < mk::MIN_GRID || grid > d->sms) return kErrArgs;
    LuceMkParams prm = *p;
    int ns = d->ns;
    void* args[] = {&prm, &ns};
    (void)cudaGetLastError();  // an error left by an earlier call is not this launch's (the return reports this one)
    cudaError_t e = cudaLaunchCooperativeKernel((const void*)mk::decode_kernel, dim3(grid), dim3(mk::NT), args,
                                                (size_t)d->smem, (cudaStream_t)stream);
    if (e != cudaSuccess) return (int)e;
    return (int)cudaGetLastError();
}

int luce_mk_trace_points(void) { return mk::TR_POINTS; }

const char* luce_mk_error_string(int code) {
    switch (code) {
        case kErrNoCoop: return "luce_mk: device does not support cooperative launch";
        case kErrSmem: return "luce_mk: not enough shared memory per block for a 2-slot weight ring";
        case kErrOccupancy: return "luce_mk: occupancy API reports 0 resident blocks per SM";
        case kErrGrid:
            return "luce_mk: too few SMs (8 at least: each block holds at most 1024 of the 3584 MLP hidden units, and "
                   "at most one GDN item of each head)";
        case kErrArgs:
            return "luce_mk: bad arguments (n_steps or n_tokens < 1, beyond max_seq, a tune value out of range, or a "
                   "grid outside 8 .. the SM count)";
        case LUCE_MK_ERR_PREFILL_SMEM:
            return "luce_mk: the prefill needs about 180 KB of shared memory per block (sm_80 / sm_90 class GPUs)";
        case LUCE_MK_ERR_CUBLAS_LOAD:
            return "luce_mk: cuBLAS could not be loaded from that path (or it lacks cublasGemmEx and its helpers)";
        case LUCE_MK_ERR_CUBLAS: return "luce_mk: cuBLAS refused a handle, a stream or a GEMM of the prefill";
        default: return cudaGetErrorString((cudaError_t)code);
    }
}

}  // extern "C"
