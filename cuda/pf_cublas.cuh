// pf_cublas.cuh -- the prefill's GEMMs through cuBLAS (build option MK_PF_CUBLAS=1), loaded at run time: the build
// needs neither cuBLAS headers nor the library (CI's machine has none). luce_mk_prefill_cublas(path) dlopens the
// library that Python found (luce_bench/kernels/cublas.py: LUCE_BENCH_CUBLAS, the nvidia-cublas wheel torch brings,
// or the CUDA toolkit's) and resolves the six entry points below; until it has, the prefill runs its own GEMM
// kernels (pf_gemm.cuh).
//
// Same operands and numerics as pf_gemm.cuh: fp16 A (activations) and B (the fp16 weight copy), f32 accumulation
// (CUBLAS_COMPUTE_32F), f32 output. OUT_ADD is beta = 1 on the f32 residual stream (cuBLAS picks its own split-K; no
// atomics of ours); OUT_SWIGLU stores the f32 gate|up products in the scratch `Y` and swiglu_kernel makes the fp16 U.
// Row-major C[M][N] = A[M][K] B is column-major C^T[N][M] = op(B) A^T: cuBLAS's m = N and n = M; NT weights ([N][K]
// rows) are op T, NN weights ([K][N] rows) op N. A device's handle works on the stream of each call, with a 32 MiB
// workspace of its own (set after every stream change, as cuBLAS asks for CUDA-graph capture); handle, workspace and
// library stay to the end of the process, since a captured graph replays with them.
#pragma once
#include <cuda_runtime.h>
#include <dlfcn.h>
#include <library_types.h>
#include <string>
#include <type_traits>
#include "luce_mk.h"
#include "pf_gemm.cuh"

namespace mk {
namespace pf {

// The C API's enum values (cublas_api.h; enums pass as int).
constexpr int CUBLAS_OP_N = 0, CUBLAS_OP_T = 1, CUBLAS_COMPUTE_32F = 68, CUBLAS_GEMM_DEFAULT = -1;
constexpr size_t CUBLAS_WORKSPACE = 32u << 20;

// The library and its entry points: loaded once per process, never closed (CUDA graphs may hold its kernels).
struct CublasLib {
    using Handle = void*;
    int (*create)(Handle*) = nullptr;
    int (*set_stream)(Handle, cudaStream_t) = nullptr;
    int (*set_workspace)(Handle, void*, size_t) = nullptr;
    int (*get_version)(Handle, int*) = nullptr;
    int (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                   const void*, void*, int, int, int, int) = nullptr;
    void* lib = nullptr;
    std::string path;
};

// A device's handle and workspace: made once, kept to the end of the process (a CUDA graph captured through them
// replays with that workspace), only switched on and off.
struct CublasDevice {
    CublasLib::Handle handle = nullptr;
    void* workspace = nullptr;
    cudaStream_t stream = (cudaStream_t)-1;  // the stream the handle was last set to (-1: none yet)
    int version = 0;
    bool on = false;
};

constexpr int CUBLAS_MAX_DEVICES = 64;
// static: each kernel library keeps its own (an `inline` variable would be one GNU-unique symbol for every library
// loaded in the process)
static CublasLib g_cublas_lib;
static CublasDevice g_cublas_dev[CUBLAS_MAX_DEVICES];
static int g_cublas_status = 0;  // the first failed cuBLAS call since the last prefill began (0: none)

inline CublasDevice* cublas_device() {
    int dev = -1;
    if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= CUBLAS_MAX_DEVICES) return nullptr;
    return &g_cublas_dev[dev];
}

// Load `path` (once per process) and switch cuBLAS on for the current device, making its handle and workspace the
// first time: 0, or LUCE_MK_ERR_CUBLAS_LOAD (no such library, or one without the entry points), LUCE_MK_ERR_ARGS
// (another library was loaded before), LUCE_MK_ERR_CUBLAS (it refused a handle), a cudaError_t (no workspace).
// A failure leaves what was loaded before as it was.
inline int cublas_load(const char* path) {
    CublasLib& L = g_cublas_lib;
    if (!L.lib) {
        CublasLib c;
        c.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
        if (!c.lib) return LUCE_MK_ERR_CUBLAS_LOAD;
        auto need = [&](auto& fn, const char* name) {
            fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(c.lib, name));
            return fn != nullptr;
        };
        if (!(need(c.create, "cublasCreate_v2") && need(c.set_stream, "cublasSetStream_v2") &&
              need(c.set_workspace, "cublasSetWorkspace_v2") && need(c.get_version, "cublasGetVersion_v2") &&
              need(c.gemm_ex, "cublasGemmEx")))
            return LUCE_MK_ERR_CUBLAS_LOAD;  // left open: closing a half-used libcublas is not worth the risk
        c.path = path;
        L = c;
    } else if (L.path != path) {
        return LUCE_MK_ERR_ARGS;
    }
    CublasDevice* d = cublas_device();
    if (!d) return LUCE_MK_ERR_ARGS;
    if (!d->handle) {
        void* ws = nullptr;
        const cudaError_t e = cudaMalloc(&ws, CUBLAS_WORKSPACE);
        if (e != cudaSuccess) return (int)e;
        CublasLib::Handle h = nullptr;
        int version = 0;
        if (L.create(&h) != 0 || L.get_version(h, &version) != 0) {
            cudaFree(ws);
            return LUCE_MK_ERR_CUBLAS;  // a handle that failed its version query is left alone
        }
        d->handle = h;
        d->workspace = ws;
        d->version = version;
    }
    d->on = true;
    return 0;
}

// Back to the own GEMM kernels on the current device (the handle and workspace stay for graphs that use them).
inline void cublas_off() {
    if (CublasDevice* d = cublas_device()) d->on = false;
}

// cuBLAS is on for the current device: the prefill's GEMMs go there.
inline bool cublas_ready() {
    const CublasDevice* d = cublas_device();
    return d && d->on;
}

// U[m][i] = fp16(silu(G[m][2i]) * G[m][2i + 1]): the SwiGLU that pf_gemm.cuh fuses into its epilogue.
__global__ void __launch_bounds__(256) swiglu_kernel(const float* G, unsigned short* U, int m, int ff) {
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= (int64_t)m * ff) return;
    const float2 gu = *(const float2*)(G + 2 * i);
    U[i] = f2h(silu(gu.x) * gu.y);
}

// The GEMM of pf_gemm.cuh's gemm() through cuBLAS; `Y` is the f32 scratch for OUT_SWIGLU. A failure is kept in
// g_cublas_status for luce_mk_prefill to return.
template <bool NN, int OUT>
void cublas_gemm(const unsigned short* A, const unsigned short* B, float* C, unsigned short* Hout, float* Y, int M,
                 int N, int K, int ldb, cudaStream_t st) {
    const CublasLib& L = g_cublas_lib;
    CublasDevice& d = *cublas_device();  // cublas_ready() said it exists
    if (d.stream != st) {
        if (L.set_stream(d.handle, st) != 0 || L.set_workspace(d.handle, d.workspace, CUBLAS_WORKSPACE) != 0) {
            g_cublas_status = g_cublas_status ? g_cublas_status : LUCE_MK_ERR_CUBLAS;
            return;
        }
        d.stream = st;
    }
    const float one = 1.f, beta = OUT == OUT_ADD ? 1.f : 0.f;
    float* out = OUT == OUT_SWIGLU ? Y : C;
    const int s = L.gemm_ex(d.handle, NN ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, B, CUDA_R_16F, ldb, A,
                            CUDA_R_16F, K, &beta, out, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != 0 && !g_cublas_status) g_cublas_status = LUCE_MK_ERR_CUBLAS;
    if (OUT == OUT_SWIGLU) {
        const int64_t units = (int64_t)M * (N / 2);
        swiglu_kernel<<<(unsigned)((units + 255) / 256), 256, 0, st>>>(Y, Hout, M, N / 2);
    }
}

}  // namespace pf
}  // namespace mk
