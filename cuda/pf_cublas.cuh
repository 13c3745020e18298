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
// rows) are op T, NN weights ([K][N] rows) op N. The handle works on the stream of each call, with a 32 MiB workspace
// of its own (set after every stream change, as cuBLAS asks for CUDA-graph capture).
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

struct Cublas {
    using Handle = void*;
    int (*create)(Handle*) = nullptr;
    int (*destroy)(Handle) = nullptr;
    int (*set_stream)(Handle, cudaStream_t) = nullptr;
    int (*set_workspace)(Handle, void*, size_t) = nullptr;
    int (*get_version)(Handle, int*) = nullptr;
    int (*gemm_ex)(Handle, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                   const void*, void*, int, int, int, int) = nullptr;
    void* lib = nullptr;
    std::string path;
    Handle handle = nullptr;
    void* workspace = nullptr;
    cudaStream_t stream = nullptr;
    int device = -1;
    int version = 0;
    int status = 0;  // the first failed call's cuBLAS status since the last prefill began (0: none)
};

inline Cublas g_cublas;

// Drop the handle, the workspace and the library: the prefill runs its own GEMMs again.
inline void cublas_unload() {
    Cublas& c = g_cublas;
    if (c.handle) c.destroy(c.handle);
    if (c.workspace) cudaFree(c.workspace);
    if (c.lib) dlclose(c.lib);
    c = Cublas{};
}

// Load `path` and make a handle on the current device: 0, or LUCE_MK_ERR_CUBLAS_LOAD (the library or one of its
// entry points is missing), LUCE_MK_ERR_CUBLAS (it refused a handle), a cudaError_t (no workspace). Loading what is
// loaded already changes nothing: CUDA graphs captured through the handle keep its workspace.
inline int cublas_load(const char* path) {
    int dev = -1;
    if (g_cublas.handle && g_cublas.path == path && cudaGetDevice(&dev) == cudaSuccess && dev == g_cublas.device)
        return 0;
    cublas_unload();
    Cublas c;
    c.path = path;
    c.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!c.lib) return LUCE_MK_ERR_CUBLAS_LOAD;
    auto need = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(c.lib, name));
        return fn != nullptr;
    };
    if (!(need(c.create, "cublasCreate_v2") && need(c.destroy, "cublasDestroy_v2") &&
          need(c.set_stream, "cublasSetStream_v2") && need(c.set_workspace, "cublasSetWorkspace_v2") &&
          need(c.get_version, "cublasGetVersion_v2") && need(c.gemm_ex, "cublasGemmEx"))) {
        dlclose(c.lib);
        return LUCE_MK_ERR_CUBLAS_LOAD;
    }
    cudaError_t e = cudaGetDevice(&c.device);
    if (e == cudaSuccess) e = cudaMalloc(&c.workspace, CUBLAS_WORKSPACE);
    if (e != cudaSuccess) {
        dlclose(c.lib);
        return (int)e;
    }
    if (c.create(&c.handle) != 0 || c.get_version(c.handle, &c.version) != 0) {
        if (c.handle) c.destroy(c.handle);
        cudaFree(c.workspace);
        dlclose(c.lib);
        return LUCE_MK_ERR_CUBLAS;
    }
    c.stream = (cudaStream_t)-1;  // no stream set yet
    g_cublas = c;
    return 0;
}

// cuBLAS is loaded for the current device: the prefill's GEMMs go there.
inline bool cublas_ready() {
    int dev = -1;
    return g_cublas.handle && cudaGetDevice(&dev) == cudaSuccess && dev == g_cublas.device;
}

// U[m][i] = fp16(silu(G[m][2i]) * G[m][2i + 1]): the SwiGLU that pf_gemm.cuh fuses into its epilogue.
__global__ void __launch_bounds__(256) swiglu_kernel(const float* G, unsigned short* U, int m, int ff) {
    const int64_t i = (int64_t)blockIdx.x * 256 + threadIdx.x;
    if (i >= (int64_t)m * ff) return;
    const float2 gu = *(const float2*)(G + 2 * i);
    U[i] = f2h(silu(gu.x) * gu.y);
}

// The GEMM of pf_gemm.cuh's gemm() through cuBLAS; `Y` is the f32 scratch for OUT_SWIGLU. A failure is kept in
// g_cublas.status for luce_mk_prefill to return.
template <bool NN, int OUT>
void cublas_gemm(const unsigned short* A, const unsigned short* B, float* C, unsigned short* Hout, float* Y, int M,
                 int N, int K, int ldb, cudaStream_t st) {
    Cublas& c = g_cublas;
    if (c.stream != st) {
        if (c.set_stream(c.handle, st) != 0 || c.set_workspace(c.handle, c.workspace, CUBLAS_WORKSPACE) != 0) {
            c.status = c.status ? c.status : LUCE_MK_ERR_CUBLAS;
            return;
        }
        c.stream = st;
    }
    const float one = 1.f, beta = OUT == OUT_ADD ? 1.f : 0.f;
    float* out = OUT == OUT_SWIGLU ? Y : C;
    const int s = c.gemm_ex(c.handle, NN ? CUBLAS_OP_N : CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, B, CUDA_R_16F, ldb, A,
                            CUDA_R_16F, K, &beta, out, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (s != 0 && !c.status) c.status = LUCE_MK_ERR_CUBLAS;
    if (OUT == OUT_SWIGLU) {
        const int64_t units = (int64_t)M * (N / 2);
        swiglu_kernel<<<(unsigned)((units + 255) / 256), 256, 0, st>>>(Y, Hout, M, N / 2);
    }
}

}  // namespace pf
}  // namespace mk
