// mk_decode.cu -- the persistent decode kernel (one cooperative launch runs n_steps whole decode steps) and the
// extern "C" host entry points of luce_mk.h (layout, launch sizing from the SM count + occupancy API, launch).
//
// Per step and layer: P1 RMSNorm + in_proj/qkv, outputs written as tagged values (epoch | f32) |
// GDN: P2 recurrence items poll their head's tagged inputs, apply the gated norm (the 8 slices' sums of squares are
// tagged values too) and add their out_proj^T split-K partials into the next residual buffer | sync;  attention: P2
// items per (KV group, query head, chunk) poll q/k/v, the head's last chunk item merges the chunks and gates | sync |
// P3 o_proj rows + residual | sync;  P4 RMSNorm + gate/up + SiLU + split-K down_proj^T added to the next residual
// buffer (4 copies) | sync; then final norm + LM head + argmax | sync (18 x 2 + 6 x 3 + 1 = 55 grid barriers per step).
// Weights stream through a per-block shared-memory ring filled by a producer warp that runs ahead across all of these
// barriers, with at most MK_INFLIGHT copies in flight (deep queues slow every dependent L2 round trip; NOTES.md v9)
// and none issued while the consumers load x or run a GDN item (MK_PAUSE). Build options: mk_config.cuh.
// With P.trace set, thread 0 of every block stamps %globaltimer at each phase boundary (scripts/trace_megakernel.py).
#include <cuda_runtime.h>
#include "luce_mk.h"
#include "mk_attn.cuh"
#include "mk_gdn.cuh"

namespace mk {

__device__ __forceinline__ unsigned long long pack_best(float v, int idx) {
    unsigned u = __float_as_uint(v);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return ((unsigned long long)u << 32) | (unsigned long long)(0xffffffffu - (unsigned)idx);
}


__device__ __forceinline__ void sync_all(Ctx& c, const LuceMkParams& P) {
    ++c.nsync;
    if (P.debug_flags & 4) {
        cbar();
        return;
    }
    grid_sync(P.sync, (P.sync_base + c.nsync) * (unsigned)c.G);
}

// GDN token mixing: the block's (head, value slice) items; with MK_GDNFUSE also out_proj, added into xn (the mixer's
// output residual buffer, zeroed before the previous barrier) together with the block's owned rows of x.
// With MK_HEADBUF the items add into the per-head buffers hb (no rstd) instead and x stays in xs for the MLP prologue.
__device__ void gdn_layer_mix(Ctx& c, const LuceMkParams& P, int l, int pos, float* xn, unsigned ep, float* hb) {
    for (int it = 0, item = c.b; item < GDN_ITEMS; ++it, item += c.G) {
        if (!(P.debug_flags & 2)) gdn_item(c, P, l, item, pos, it, xn, ep, hb);
        else if (MK_GDNFUSE) consume_all_seg(c, phase_seg(c, P, l, 1, it), [](int, int, const char*) {});
    }
#if MK_GDNFUSE && !MK_HEADBUF
    const int r0 = split_rows(H, c.b, c.G), r1 = split_rows(H, c.b + 1, c.G);
    if (c.tid < r1 - r0) atomicAdd(xn + r0 + c.tid, c.xs()[r0 + c.tid]);
#endif
}

// Zeroes this block's owned rows of `copies` consecutive 1024-float vectors at x.
__device__ __forceinline__ void zero_owned(const Ctx& c, float* x, int copies = XC) {
    const int r0 = split_rows(H, c.b, c.G), r1 = split_rows(H, c.b + 1, c.G);
    for (int i = c.tid; i < (r1 - r0) * copies; i += NCT) __stcg(x + (i / (r1 - r0)) * H + r0 + i % (r1 - r0), 0.f);
}

#if MK_HEADBUF
// The per-head out_proj buffers of GDN layer gi (2 sets, alternating): [16][1024] f32.
__device__ __forceinline__ float* hbuf(const LuceMkParams& P, int gi) { return P.scratch + S_HB + (gi & 1) * DH * H; }
// MLP prologue of a GDN layer: xs += sum_h rstd_h * hb[h] (rstd_h from the head's 8 partial sums of squares), then
// acts <- bf16(RMSNorm(xs) * w1p); all 48 + 1 loads per thread in flight at once. Also clears this block's rows of
// the other buffer set (last read by the previous GDN layer's prologue, before a barrier; next written after one).
__device__ __forceinline__ void load_x_headbuf(Ctx& c, const LuceMkParams& P, int gi, const float* w1p) {
    const float* hb = hbuf(P, gi);
    float* rs = c.misc() + 1984;  // 16 head rstd (block_sum uses misc + 2000)
    float hv[3][DH];
#pragma unroll
    for (int k = 0; k < 3; ++k)
#pragma unroll
        for (int h = 0; h < DH; ++h) hv[k][h] = c.tid + k * NCT < H ? __ldcg(hb + h * H + c.tid + k * NCT) : 0.f;
    head_rstd(c, P, rs);
    cbar();
    float v[3], ss = 0.f;
#pragma unroll
    for (int k = 0; k < 3; ++k) {
        const int i = c.tid + k * NCT;
        v[k] = 0.f;
        if (i < H) {
            float a = 0.f;
#pragma unroll
            for (int h = 0; h < DH; ++h) a = fmaf(rs[h], hv[k][h], a);
            v[k] = c.xs()[i] + a;
            c.xs()[i] = v[k];
        }
        ss = fmaf(v[k], v[k], ss);
    }
    norm_to_acts(c, v, ss, w1p);
    zero_owned(c, hbuf(P, gi + 1), DH);
}
#endif

// Residual stream: three rotating f32 buffers. Sub-layer j (= 2*layer + {0: mixer, 1: MLP}; 48 per step, and
// 48 % 3 == 0) reads buffer j%3, writes buffer (j+1)%3 (mixer: owner rows plain stores; MLP: every block adds its
// split-K down_proj partial with f32 reductions, owners also add x) and zeroes its owned rows of buffer (j+2)%3, the
// target of sub-layer j+1 (last read in sub-layer j-1, before the barrier that ended it).
// Each buffer has XC copies (readers sum them in a fixed order): the split-K adds of the 132 blocks spread over XC
// copies, so fewer same-address f32 reductions queue in L2.
__device__ __forceinline__ float* xbuf(const LuceMkParams& P, int j) { return P.scratch + S_X + (j % 3) * XC * H; }


__device__ void consumer_step(Ctx& c, const LuceMkParams& P, int s, int& tok) {
    const int pos = P.pos + s;
    float* RAW = P.scratch + S_RAW;
    trace_pt(c, P, s, TR_STEP);
    for (int l = 0; l < NL; ++l) {
        const float* sp = P.sblob + (long long)l * SP;
        const int j = 2 * l;
        const unsigned ep = (P.step_base + (unsigned)s) * NL + (unsigned)l + 1u;  // tag of this layer's P1 outputs
        // P1: norm + in_proj / qkv
        zero_owned(c, xbuf(P, j + 2));
        if (l == 0) load_x_norm(c, nullptr, (const unsigned short*)P.embed + (long long)tok * H, sp + SP_LN1);
        else load_x_norm(c, xbuf(P, j), nullptr, sp + SP_LN1);
        trace_pt(c, P, s, TR_L * l + 0);
        {
            float a[32];
            load_act_regs(a, c.acts(), c.lane);
            consume(c, layer_phase(P.wblob, l, 0), [&](int r, const char* row) {
                const float d = warp_sum(dot1024_part(row, a, c.lane));
#if MK_TAGRAW
                if (c.lane == 0) st_tag((u64*)RAW + r, ep, bfr(d));
#else
                if (c.lane == 0) RAW[r] = bfr(d);
#endif
            });
        }
        if (P.trace) cbar();
        trace_pt(c, P, s, TR_L * l + 1);
#if MK_TAGRAW
        // P2 polls the tagged outputs themselves
#elif MK_HEADCNT
        // publish this block's rows to the per-head / per-group counters that P2's work items wait on
        cbar();
        if (!(P.debug_flags & 4) && c.tid < 18) {
            const Phase ph = layer_phase(P.wblob, l, 0);
            const int n = counted_rows(is_fa(l), c.tid, split_rows(ph.rows, c.b, c.G), split_rows(ph.rows, c.b + 1, c.G));
            if (n) red_release_add(row_counter(P, c.tid), (unsigned)n);
        }
#else
        sync_all(c, P);
#endif
        // P2: token mixing
        if (is_fa(l)) {
            const int items = att_items(pos);
            if (!(P.debug_flags & 2))
                for (int item = c.b; item < items; item += c.G) {
#if MK_ATTHEAD
                    attn_head_item(c, P, l, item, pos, ep);
#else
                    attn_item(c, P, l, item, pos, ep);
#endif
                }
        } else {
#if MK_HEADBUF
            gdn_layer_mix(c, P, l, pos, xbuf(P, j + 1), ep, hbuf(P, gdn_index(l)));
#else
            gdn_layer_mix(c, P, l, pos, xbuf(P, j + 1), ep, nullptr);
#endif
        }
        if (P.trace) cbar();
        trace_pt(c, P, s, TR_L * l + 2);
        sync_all(c, P);
        trace_pt(c, P, s, TR_L * l + 3);
        if (l == 0 && c.b == 0 && c.tid == 0) P.best[(pos + 1) & 1] = 0ull;  // next step's argmax slot
#if MK_HEADCNT || MK_GDNFUSE
        // every wait on this layer's counters ended before the barrier above; the next increments come two
        // barriers later
        if (c.b == 0 && c.tid < N_CNT && !(P.debug_flags & 4)) __stcg(row_counter(P, c.tid), 0u);
#endif
        // P3: out_proj / o_proj + residual (row owners), unless fused into the GDN items
        if (!fused_out(l)) {
            if (is_fa(l)) attn_out_act(c, P, pos);
            else gdn_out_act(c, P, l);
            trace_pt(c, P, s, TR_L * l + 11);
            float* xn = xbuf(P, j + 1);
            consume(c, layer_phase(P.wblob, l, 1), [&](int r, const char* row) {
                const float d = warp_sum(dot_smem_part<2048>(row, c.acts(), c.lane));
                if (c.lane == 0) {
                    xn[r] = bfr(c.xs()[r] + bfr(d));
#pragma unroll 1
                    for (int q = 1; q < XC; ++q) xn[q * H + r] = 0.f;
                }
            });
            if (P.trace) cbar();
            trace_pt(c, P, s, TR_L * l + 4);
            sync_all(c, P);
            trace_pt(c, P, s, TR_L * l + 5);
        }
        // P4: norm + gate/up + SiLU for this block's slice of the 3584 hidden units, then the matching columns of
        // down_proj (split-K), reduced in shared memory and added to the next residual buffer.
        zero_owned(c, xbuf(P, j + 3));
#if MK_HEADBUF
        if (!is_fa(l)) load_x_headbuf(c, P, gdn_index(l), sp + SP_LN2);
        else load_x_norm(c, xbuf(P, j + 1), nullptr, sp + SP_LN2);
#else
        load_x_norm(c, xbuf(P, j + 1), nullptr, sp + SP_LN2);
#endif
        trace_pt(c, P, s, TR_L * l + 6);
        float* part = c.misc();          // [1024] block partial of down_proj
        float* hs = c.misc() + 1024;     // this block's silu(g)*u (<= 28)
        const int k0 = split_rows(FF, c.b, c.G);
        {
            float a[32];
            load_act_regs(a, c.acts(), c.lane);
            consume(c, layer_phase(P.wblob, l, 2), [&](int r, const char* row) {
                const float gt = bfr(warp_sum(dot1024_part(row, a, c.lane)));
                const float up = bfr(warp_sum(dot1024_part(row + 2048, a, c.lane)));
                if (c.lane == 0) hs[r - k0] = bfr(bfr(silu(gt)) * up);
            });
        }
        cbar();
        trace_pt(c, P, s, TR_L * l + 7);
        {
            // down_proj^T rows of this block: thread t owns output columns t, t + 480, t + 960 (no atomics; the
            // v2/v3 shared-memory atomicAdd per element was a CAS loop with 8-way bank conflicts)
            float acc0 = 0.f, acc1 = 0.f, acc2 = 0.f;
            const bool has2 = c.tid + 2 * NCT < H;
            consume_all(c, layer_phase(P.wblob, l, 3), [&](int r, int n, const char* base) {
                const unsigned short* w = (const unsigned short*)base + c.tid;
#pragma unroll 4
                for (int i = 0; i < n; ++i) {
                    const float hv = hs[r - k0 + i];
                    acc0 = fmaf(hv, __uint_as_float((unsigned)w[i * H] << 16), acc0);
                    acc1 = fmaf(hv, __uint_as_float((unsigned)w[i * H + NCT] << 16), acc1);
                    if (has2) acc2 = fmaf(hv, __uint_as_float((unsigned)w[i * H + 2 * NCT] << 16), acc2);
                }
            });
            part[c.tid] = acc0;
            part[c.tid + NCT] = acc1;
            if (has2) part[c.tid + 2 * NCT] = acc2;
        }
        cbar();
        {
            const int r0 = split_rows(H, c.b, c.G), r1 = split_rows(H, c.b + 1, c.G);
            float* xn = xbuf(P, j + 2) + (c.b % XC) * H;
#if __CUDA_ARCH__ >= 900
            if (c.tid < H / 4 && !(P.debug_flags & 8)) {
                const int i = c.tid * 4;
                float4 v = *(const float4*)(part + i);
                if (i >= r0 && i < r1) v.x += c.xs()[i];
                if (i + 1 >= r0 && i + 1 < r1) v.y += c.xs()[i + 1];
                if (i + 2 >= r0 && i + 2 < r1) v.z += c.xs()[i + 2];
                if (i + 3 >= r0 && i + 3 < r1) v.w += c.xs()[i + 3];
                red_add4(xn + i, v);
            }
#else
#pragma unroll 1
            for (int i = c.tid; i < H; i += NCT) atomicAdd(xn + i, part[i] + ((i >= r0 && i < r1) ? c.xs()[i] : 0.f));
#endif
        }
        if (P.trace) cbar();
        trace_pt(c, P, s, TR_L * l + 8);
        sync_all(c, P);
        trace_pt(c, P, s, TR_L * l + 9);
    }
    float* X = xbuf(P, 2 * NL);
    // final norm + LM head + argmax
    load_x_norm(c, X, nullptr, P.sblob + (long long)NL * SP);
    trace_pt(c, P, s, TR_STEP + 1);
    float a[32];
    load_act_regs(a, c.acts(), c.lane);
    float bv = -INFINITY;
    int bi = 0x7fffffff;
    float* lg = (P.logits && s >= P.logits_first) ? P.logits + (long long)(s - P.logits_first) * V : nullptr;
    consume(c, lm_phase(P.embed), [&](int r, const char* row) {
        const float d = bfr(warp_sum(dot1024_part(row, a, c.lane)));
        if (lg && c.lane == 0) lg[r] = d;
        if (d > bv) { bv = d; bi = r; }
    });
    unsigned long long* kb = (unsigned long long*)(c.misc() + 1664);
    if (c.lane == 0) kb[c.warp] = bi == 0x7fffffff ? 0ull : pack_best(bv, bi);
    cbar();
    if (c.tid == 0) {
        unsigned long long k = 0;
        for (int w = 0; w < NCW; ++w) k = kb[w] > k ? kb[w] : k;
        atomicMax(P.best + (pos & 1), k);
    }
    trace_pt(c, P, s, TR_STEP + 2);
    sync_all(c, P);
    trace_pt(c, P, s, TR_STEP + 3);
    const unsigned long long k = __ldcg(P.best + (pos & 1));
    tok = (int)(0xffffffffu - (unsigned)(k & 0xffffffffull));
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
    c.skip_math = (P.debug_flags & 1) != 0;
    if (threadIdx.x == 0) {
        for (int i = 0; i < ns; ++i) {
#if __CUDA_ARCH__ >= 900
            mbar_init(&c.full()[i], 1);
#else
            mbar_init(&c.full()[i], 32);
#endif
            mbar_init(&c.empty()[i], NCW);
        }
        *(volatile unsigned*)(mk_smem + SM_PAUSE) = 0u;
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
constexpr int kErrNoCoop = -1, kErrSmem = -2, kErrOccupancy = -3, kErrArgs = -4;

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
        d.ns = (d.optin - mk::SM_FIXED) / mk::SLOT_BYTES;
        if (d.ns > mk::MAX_SLOTS) d.ns = mk::MAX_SLOTS;
        if (d.ns < 2) return kErrSmem;
        d.smem = mk::SM_FIXED + d.ns * mk::SLOT_BYTES;
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
    o->scratch_floats = mk::SCRATCH;
    o->gdn_state_floats = 18 * mk::STATE_L;
    o->conv_hist_floats = 18LL * mk::CONV * 4;
    o->kv_elems_per_pos = 6 * mk::KV_L;
    o->syncs_per_step = mk::SYNCS_PER_STEP;
    o->vocab = mk::V;
    o->hidden = mk::H;
    o->gdn_out_transposed = MK_GDNFUSE;
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
    DevInfo* d = nullptr;
    const int rc = dev_info(&d);
    if (rc) return rc;
    LuceMkParams prm = *p;
    int ns = d->ns;
    void* args[] = {&prm, &ns};
    cudaError_t e = cudaLaunchCooperativeKernel((const void*)mk::decode_kernel, dim3(d->sms), dim3(mk::NT), args,
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
        case kErrArgs: return "luce_mk: bad arguments (n_steps < 1, or pos + n_steps > max_seq)";
        default: return cudaGetErrorString((cudaError_t)code);
    }
}

}  // extern "C"
