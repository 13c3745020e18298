// pf_launch.cuh -- how the prefill launches its own kernels (launch), and what each of them does first (pdl_wait).
// With MK_PF_PDL=1 on an sm_90+ device, a kernel is launched with programmatic dependent launch: its blocks may be
// placed while the kernel before it drains. Every prefill kernel opens with pdl_wait: griddepcontrol.wait (until the
// kernel before it has finished and its writes are visible), then griddepcontrol.launch_dependents (the next kernel
// may be placed). Nothing is read or written before the wait, so the effects come in the order of plain launches;
// only launch latency overlaps. cuBLAS's kernels launch plainly in between and wait for the kernel before them in
// full. Otherwise (MK_PF_PDL=0, or an older GPU) launch is a plain launch and pdl_wait does nothing.
#pragma once
#include <cuda_runtime.h>

namespace mk {
namespace pf {

__device__ __forceinline__ void pdl_wait() {
#if MK_PF_PDL && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

inline bool g_pdl = false;  // MK_PF_PDL and a device of compute capability 9.0 or newer (mk_prefill.cu, setup_device)

// kernel<<<grid, block, smem, st>>>(args...), with the programmatic-serialization attribute when g_pdl
template <typename... P, typename... A>
void launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t st, A... args) {
    cudaLaunchAttribute attr[1] = {};
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = st;
    cfg.attrs = attr;
    cfg.numAttrs = g_pdl ? 1 : 0;
    cudaLaunchKernelEx(&cfg, kernel, args...);
}

}  // namespace pf
}  // namespace mk
