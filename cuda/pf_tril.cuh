// pf_tril.cuh -- T = (I + A)^-1 of the chunked delta rule's strictly lower A (64 x 64, pf_gdn_tc.cuh's prep), one
// column per thread, by forward substitution with the column in registers:
//   T[i][c] = [i == c] - sum_{j < i} A[i][j] T[j][c]
// A thread holding column c computes every row the same way (rows above c come out 0: their sums run over zeros), so
// there is no branch, no barrier and no shared-memory round trip per step; row i of A is read as float4 broadcasts
// (every thread of a warp reads the same row). About 2,080 FMAs and 528 vector loads per thread. It waits for A in
// shared memory (zeros on and above the diagonal, rows 16-byte aligned) and writes the column with stride ldt.
// __host__ as well, so that a CPU test (tests/test_kernel_chunked.py) checks it against numpy's inverse.
#pragma once
#include <cuda_runtime.h>

namespace mk {
namespace pf {

template <int N>
__host__ __device__ __forceinline__ void tril_inverse_column(const float* a, int lda, int col, float* t_col, int ldt) {
    static_assert(N % 4 == 0, "rows are read four at a time");
    float t[N];
#pragma unroll
    for (int i = 0; i < N; ++i) t[i] = 0.f;
#pragma unroll
    for (int i = 0; i < N; ++i) {
        // four partial sums: four independent FMA chains. A[i][j] for j >= i is 0 and so is t[j] (not yet computed)
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
#pragma unroll
        for (int j = 0; j < i; j += 4) {
            const float4 a4 = *reinterpret_cast<const float4*>(a + i * lda + j);
            s0 = fmaf(a4.x, t[j], s0);
            s1 = fmaf(a4.y, t[j + 1], s1);
            s2 = fmaf(a4.z, t[j + 2], s2);
            s3 = fmaf(a4.w, t[j + 3], s3);
        }
        t[i] = i == col ? 1.f : -((s0 + s1) + (s2 + s3));
    }
#pragma unroll
    for (int i = 0; i < N; ++i) t_col[i * ldt] = t[i];
}

}  // namespace pf
}  // namespace mk
