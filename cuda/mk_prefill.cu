// mk_prefill.cu -- the prompt's prefill (luce_mk.h, luce_mk_prefill): all 24 layers over N tokens at once, as a fixed
// sequence of kernels on one stream, leaving the caches exactly where the decode kernel reads them. A prompt at
// position pos > 0 continues what is cached: attention reads the pos cached K/V rows, the GDN layers start from their
// states and conv histories.
//
// X [N][1024] f32 is the residual stream. Per layer:
//   rmsnorm -> Xn (fp16)
//   GDN:  GEMM in_proj (NT) -> Y | conv + SiLU -> C, conv_hist | chunk prep | chunk scan -> O, gdn_state | gated norm
//         -> U (fp16) | GEMM out_proj^T (NN) added into X                                       (pf_gdn.cuh)
//   attn: GEMM qkv (NT) -> Y | norms, RoPE, K/V cache append | causal attention x gate -> U | GEMM o_proj (NT) into X
//   MLP:  rmsnorm -> Xn | GEMM gate|up (NT) with the SwiGLU epilogue -> U (fp16) | GEMM down^T (NN) into X
// then the last position's final norm, LM head and argmax -> *last_token. GEMMs: pf_gemm.cuh (tensor cores), or
// cuBLAS once loaded in a build with MK_PF_CUBLAS=1 (pf_cublas.cuh; the SwiGLU then is a kernel of its own).
#include <cuda_runtime.h>
#include <utility>
#include "luce_mk.h"
#include "pf_attn.cuh"
#include "pf_cublas.cuh"
#include "pf_gdn.cuh"
#include "pf_gdn_tc.cuh"
#include "pf_gemm.cuh"
#include "pf_misc.cuh"

namespace mk {
namespace pf {

// Byte offsets of the workspace's arrays for N tokens (each 256-byte aligned).
struct Workspace {
    size_t best, h0, x, xn, y, u, c, o, gq, gk, gu, gw, gg, gm, gs, ge, ao, aml, acnt, acnt_bytes, total;
    int np;
    explicit Workspace(int n) {
        np = (n + GC - 1) / GC * GC;
        size_t at = 0;
        auto take = [&](size_t bytes) {
            const size_t here = at;
            at += (bytes + 255) / 256 * 256;
            return here;
        };
        const size_t N = (size_t)n, P = (size_t)np;
        best = take(8);
        h0 = take(CONV * 4 * 4);  // a GDN layer's conv history as it was before a prompt at position > 0
        x = take(N * H * 4);
        xn = take(N * H * 2);
        y = take(N * GDN_ROWS * 4);  // the widest projection (in_proj 8224; qkv 5120, gate|up 7168)
        u = take(N * FF * 2);        // fp16 GEMM inputs: SwiGLU (3584), GDN gated norm / attention output (2048)
        c = take(N * CONV * 4);      // GDN conv outputs; the attention layers' q (2048) in the same place
        o = MK_PF_GDN_TC ? 0 : take(N * DH * DV * 4);  // the tensor-core path norms its output in gdn_out_kernel
        gq = take(DH * P * DK * 4);
        gk = take(DH * P * DK * 4);
        gu = take(DH * P * DK * 4);
        gw = take(DH * P * DK * 4);
        gg = take(DH * P * 4);
        gm = take(DH * P * GC * 4);
        gs = MK_PF_GDN_TC ? take(DH * (P / GC) * DK * DV * 4) : 0;  // every chunk's start state S_c
        ge = MK_PF_GDN_TC ? take(DH * P * DV * 4) : 0;              // E = U - W S_c
        const bool split = MK_PF_ATT_SPLIT && n <= ATT_SPLIT_MAX_N;     // the attention's parts (AttSplit)
        ao = take(split ? (size_t)ATT_PARTS_MAX * 4 * TQ * HD * 4 : 0);
        aml = take(split ? (size_t)ATT_PARTS_MAX * 4 * TQ * 2 * 4 : 0);
        acnt_bytes = split ? (size_t)ATT_SPLIT_MAX_N / TQ * NKV * 4 : 0;
        acnt = take(acnt_bytes);
        total = at;
    }
};

int g_sms = 0;
bool g_att_staged = false;  // the attention stages its key tiles (the device's shared memory per block holds them)
int g_att_slots = 0;        // attention blocks resident at once on the GPU
int g_gemm_slots = 0;  // GEMM blocks resident at once on the GPU (SMs x blocks per SM at GEMM_SMEM)

template <bool NN, int OUT>
void gemm(const unsigned short* A, const unsigned short* B, float* C, unsigned short* Hout, float* Y, int M, int N,
          int K, int ldb, cudaStream_t st) {
    if (MK_PF_CUBLAS && cublas_ready()) {
        cublas_gemm<NN, OUT>(A, B, C, Hout, Y, M, N, K, ldb, st);
        return;
    }
    GemmArgs g{A, B, C, Hout, M, N, K, K, ldb, N, K};
    const int tiles = ((N + GBN - 1) / GBN) * ((M + GBM - 1) / GBM);
    int splits = 1;
    if (OUT == OUT_ADD && tiles < g_sms) {  // too few tiles for the GPU: split K (f32 atomics into X)
        // as many blocks as fit at once, never more: 72 tiles x 4 splits = 288 blocks on 264 slots (two per SM) ran
        // a second wave of 24 blocks
        splits = g_gemm_slots / tiles;
        splits = splits < K / (4 * GBK) ? splits : K / (4 * GBK);
        splits = splits > 1 ? splits : 1;
    }
    g.k_per_split = (K / GBK + splits - 1) / splits * GBK;
    splits = (K + g.k_per_split - 1) / g.k_per_split;
    const dim3 grid((N + GBN - 1) / GBN, (M + GBM - 1) / GBM, splits);
    gemm_kernel<NN, OUT><<<grid, GTHREADS, GEMM_SMEM, st>>>(g);
}

// Phase k of layer l's weights (0 in_proj / qkv, 1 out_proj^T / o_proj, 2 gate|up, 3 down^T), in the fp16 copy.
const unsigned short* layer_w(const void* wblob16, int l, int k) {
    const unsigned short* base = (const unsigned short*)wblob16 + layer_woff(l);
    const int64_t rows = is_fa(l) ? FA_ROWS : GDN_ROWS;
    switch (k) {
        case 0: return base;
        case 1: return base + rows * H;
        case 2: return base + rows * H + W_OUT;
        default: return base + rows * H + W_OUT + W_GU;
    }
}

void gdn_layer(const LuceMkPrefillParams& p, const Workspace& ws, char* w, int l, cudaStream_t st) {
    const int n = p.n_tokens, gi = gdn_index(l);
    const float* sp = p.sblob + (int64_t)l * SP;
    float* Y = (float*)(w + ws.y);
    float* C = (float*)(w + ws.c);
    GdnWork gw{(float*)(w + ws.gq), (float*)(w + ws.gk), (float*)(w + ws.gu), (float*)(w + ws.gw),
               (float*)(w + ws.gg), (float*)(w + ws.gm), ws.np};
    gemm<false, OUT_STORE>((unsigned short*)(w + ws.xn), layer_w(p.wblob16, l, 0), Y, nullptr, nullptr, n, GDN_ROWS,
                           H, H, st);
    float* hist = p.conv_hist + (int64_t)gi * CONV * 4;
    float* hist0 = nullptr;
    if (p.pos > 0) {  // the first outputs read the history that the last ones overwrite: keep a copy
        hist0 = (float*)(w + ws.h0);
        cudaMemcpyAsync(hist0, hist, (size_t)CONV * 4 * 4, cudaMemcpyDeviceToDevice, st);
    }
    gdn_conv_kernel<<<dim3(CONV / 128, ws.np / GC), 128, 0, st>>>(Y, sp + SP_CONV, hist, hist0, C, n, p.pos);
#if MK_PF_GDN_TC
    const GdnTcWork tw{(float*)(w + ws.gs), (float*)(w + ws.ge)};
    gdn_prep_kernel<<<dim3(DH, ws.np / GC), PREP_THREADS, sizeof(PrepSmem), st>>>(C, Y, sp, gw, n);
    gdn_state_kernel<<<DH * NSL, STATE_THREADS, sizeof(StateSmem), st>>>(gw, tw, p.gdn_state + gi * STATE_L, p.pos);
    gdn_out_kernel<<<dim3(DH, ws.np / GC), OUT_THREADS, sizeof(OutSmem), st>>>(gw, tw, Y, sp + SP_GNW,
                                                                       (unsigned short*)(w + ws.u), n);
#else
    gdn_chunk_kernel<<<dim3(DH, ws.np / GC), 256, sizeof(ChunkSmem), st>>>(C, Y, sp, gw, n);
    gdn_scan_kernel<<<DH * NSL, 256, sizeof(ScanSmem), st>>>(gw, (float*)(w + ws.o), p.gdn_state + gi * STATE_L, n,
                                                             p.pos);
    gdn_gate_kernel<<<n, 512, 0, st>>>((float*)(w + ws.o), Y, sp + SP_GNW, (unsigned short*)(w + ws.u), n);
#endif
    gemm<true, OUT_ADD>((unsigned short*)(w + ws.u), layer_w(p.wblob16, l, 1), (float*)(w + ws.x), nullptr, nullptr,
                        n, H, DH * DV, H, st);
}

void attn_layer(const LuceMkPrefillParams& p, const Workspace& ws, char* w, int l, cudaStream_t st) {
    const int n = p.n_tokens;
    const float* sp = p.sblob + (int64_t)l * SP;
    float* Y = (float*)(w + ws.y);
    float* Qa = (float*)(w + ws.c);
    const int64_t cache = (int64_t)fa_index(l) * NKV * p.max_seq * HD;
    unsigned short* kc = (unsigned short*)p.kcache + cache;
    unsigned short* vc = (unsigned short*)p.vcache + cache;
    gemm<false, OUT_STORE>((unsigned short*)(w + ws.xn), layer_w(p.wblob16, l, 0), Y, nullptr, nullptr, n, FA_ROWS,
                           H, H, st);
    attn_prep_kernel<<<n, 384, 0, st>>>(Y, sp, Qa, kc, vc, p.max_seq, p.pos);
    const int split = att_split(n, p.pos, g_att_slots);
    const AttSplit parts{(float*)(w + ws.ao), (float*)(w + ws.aml), (unsigned*)(w + ws.acnt)};
    const dim3 grid(att_blocks(n, p.pos, split), NKV);
    if (g_att_staged)
        attn_kernel<true><<<grid, 128, ATT_SMEM_STAGED, st>>>(Qa, Y, kc, vc, (unsigned short*)(w + ws.u), n, p.max_seq,
                                                               p.pos, split, parts);
    else
        attn_kernel<false><<<grid, 128, ATT_SMEM_PLAIN, st>>>(Qa, Y, kc, vc, (unsigned short*)(w + ws.u), n, p.max_seq,
                                                               p.pos, split, parts);
    gemm<false, OUT_ADD>((unsigned short*)(w + ws.u), layer_w(p.wblob16, l, 1), (float*)(w + ws.x), nullptr,
                         nullptr, n, H, NQH * HD, NQH * HD, st);
}

void mlp(const LuceMkPrefillParams& p, const Workspace& ws, char* w, int l, cudaStream_t st) {
    const int n = p.n_tokens;
    rmsnorm_kernel<<<n, 256, 0, st>>>((float*)(w + ws.x), p.sblob + (int64_t)l * SP + SP_LN2,
                                      (unsigned short*)(w + ws.xn));
    // gate|up rows are [gate_i | up_i] pairs: as a [2 FF][H] matrix, output columns 2i, 2i + 1 = gate_i, up_i
    gemm<false, OUT_SWIGLU>((unsigned short*)(w + ws.xn), layer_w(p.wblob16, l, 2), nullptr,
                            (unsigned short*)(w + ws.u), (float*)(w + ws.y), n, 2 * FF, H, H, st);
    gemm<true, OUT_ADD>((unsigned short*)(w + ws.u), layer_w(p.wblob16, l, 3), (float*)(w + ws.x), nullptr, nullptr,
                        n, H, FF, H, st);
}

int setup_device() {
    static int done_dev = -1;
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return (int)e;
    if (done_dev == dev) return 0;
    int optin = 0;
    if ((e = cudaDeviceGetAttribute(&g_sms, cudaDevAttrMultiProcessorCount, dev)) != cudaSuccess) return (int)e;
    if ((e = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev)) != cudaSuccess) return (int)e;
#if MK_PF_GDN_TC
    const std::pair<const void*, int> gdn[] = {{(const void*)gdn_prep_kernel, (int)sizeof(PrepSmem)},
                                               {(const void*)gdn_state_kernel, (int)sizeof(StateSmem)},
                                               {(const void*)gdn_out_kernel, (int)sizeof(OutSmem)}};
#else
    const std::pair<const void*, int> gdn[] = {{(const void*)gdn_chunk_kernel, (int)sizeof(ChunkSmem)},
                                               {(const void*)gdn_scan_kernel, (int)sizeof(ScanSmem)}};
#endif
    for (const auto& [f, bytes] : gdn) {
        if (optin < bytes) return LUCE_MK_ERR_PREFILL_SMEM;
        if ((e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes)) != cudaSuccess)
            return (int)e;
    }
    if (optin < GEMM_SMEM || optin < ATT_SMEM_PLAIN) return LUCE_MK_ERR_PREFILL_SMEM;
    g_att_staged = !MK_PF_ATT_PLAIN && optin >= ATT_SMEM_STAGED;
    const void* attn = g_att_staged ? (const void*)attn_kernel<true> : (const void*)attn_kernel<false>;
    e = cudaFuncSetAttribute(attn, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             g_att_staged ? ATT_SMEM_STAGED : ATT_SMEM_PLAIN);
    if (e != cudaSuccess) return (int)e;
    int att_per_sm = 0;
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&att_per_sm, attn, 128,
                                                      g_att_staged ? ATT_SMEM_STAGED : ATT_SMEM_PLAIN);
    if (e != cudaSuccess) return (int)e;
    g_att_slots = g_sms * (att_per_sm > 0 ? att_per_sm : 1);
    for (const void* f : {(const void*)gemm_kernel<false, OUT_STORE>, (const void*)gemm_kernel<false, OUT_ADD>,
                          (const void*)gemm_kernel<false, OUT_SWIGLU>, (const void*)gemm_kernel<true, OUT_ADD>})
        if ((e = cudaFuncSetAttribute(f, cudaFuncAttributeMaxDynamicSharedMemorySize, GEMM_SMEM)) != cudaSuccess)
            return (int)e;
    int per_sm = 0;  // the split-K kernels' occupancy sizes their splits
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, gemm_kernel<true, OUT_ADD>, GTHREADS, GEMM_SMEM);
    if (e != cudaSuccess) return (int)e;
    g_gemm_slots = g_sms * (per_sm > 0 ? per_sm : 1);
    done_dev = dev;
    return 0;
}

}  // namespace pf
}  // namespace mk

extern "C" {

int64_t luce_mk_prefill_workspace(int n_tokens) {
    return n_tokens < 1 ? 0 : (int64_t)mk::pf::Workspace(n_tokens).total;
}

int luce_mk_prefill_launches(int n_tokens) {
    if (n_tokens < 1) return 0;
    // embed + 24 x (rmsnorm + MLP's 3) + 18 GDN x 6 + 6 attention x 4 + LM head + finish (+ the best reset); with
    // cuBLAS, each GEMM counts as one and the SwiGLU is one more per layer
    return 1 + 24 * 4 + 18 * 6 + 6 * 4 + 3 + (MK_PF_CUBLAS && mk::pf::cublas_ready() ? 24 : 0);
}

int luce_mk_prefill(const LuceMkPrefillParams* p, void* stream) {
    using namespace mk;
    using namespace mk::pf;
    if (!p || p->n_tokens < 1 || p->pos < 0 || p->n_tokens > p->max_seq - p->pos || !p->workspace || !p->wblob16 ||
        p->n_layers < 0 || p->n_layers > NL)
        return LUCE_MK_ERR_ARGS;
    int rc = setup_device();
    if (rc) return rc;
    (void)cudaGetLastError();  // an error left by an earlier call is not this prefill's (the return reports this one)
    cudaStream_t st = (cudaStream_t)stream;
    g_cublas_status = 0;
    const Workspace ws(p->n_tokens);
    char* w = (char*)p->workspace;
    const int n = p->n_tokens;
    cudaMemsetAsync(w + ws.best, 0, 8, st);
    if (ws.acnt_bytes) cudaMemsetAsync(w + ws.acnt, 0, ws.acnt_bytes, st);  // the attention parts' counters
    embed_kernel<<<n, 256, 0, st>>>(p->tokens, (const unsigned short*)p->embed, (float*)(w + ws.x));
    const int layers = p->n_layers ? p->n_layers : NL;
    for (int l = 0; l < layers; ++l) {
        rmsnorm_kernel<<<n, 256, 0, st>>>((float*)(w + ws.x), p->sblob + (int64_t)l * SP + SP_LN1,
                                          (unsigned short*)(w + ws.xn));
        if (is_fa(l)) attn_layer(*p, ws, w, l, st);
        else gdn_layer(*p, ws, w, l, st);
        mlp(*p, ws, w, l, st);
    }
    if (p->hidden) cudaMemcpyAsync(p->hidden, w + ws.x, (size_t)n * H * 4, cudaMemcpyDeviceToDevice, st);
    if (g_cublas_status) return g_cublas_status;
    if (p->n_layers) return (int)cudaGetLastError();
    lm_head_kernel<<<1024, 256, 0, st>>>((float*)(w + ws.x) + (int64_t)(n - 1) * H, p->sblob + (int64_t)NL * SP,
                                         (const unsigned short*)p->embed, p->logits,
                                         (unsigned long long*)(w + ws.best));
    finish_kernel<<<1, 1, 0, st>>>((unsigned long long*)(w + ws.best), p->last_token);
    return g_cublas_status ? g_cublas_status : (int)cudaGetLastError();
}

int luce_mk_prefill_gemm_option(void) { return MK_PF_CUBLAS; }

int luce_mk_prefill_cublas(const char* path) {
    if (!MK_PF_CUBLAS) return path ? LUCE_MK_ERR_ARGS : 0;
    if (!path) {
        mk::pf::cublas_off();
        return 0;
    }
    return mk::pf::cublas_load(path);
}

int luce_mk_prefill_cublas_version(void) {
    return MK_PF_CUBLAS && mk::pf::cublas_ready() ? mk::pf::cublas_device()->version : 0;
}

}  // extern "C"
