"""The chunked gated delta rule (the prefill's algorithm) equals the token-by-token recurrence (the decode's)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from luce_bench.kernels.chunked import (  # noqa: E402
    _tf32,
    chunked_gated_delta_rule,
    recurrent_gated_delta_rule,
    three_pass_gated_delta_rule,
)


def _inputs(T: int, H: int = 3, K: int = 16, V: int = 8, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=gen, dtype=torch.float64)  # noqa: E731
    q, k = r(T, H, K), r(T, H, K)
    q = q / q.norm(dim=-1, keepdim=True) / K**0.5
    k = k / k.norm(dim=-1, keepdim=True)
    v = r(T, H, V)
    g = -torch.rand(T, H, generator=gen, dtype=torch.float64) * 0.5  # log decay in (-0.5, 0]
    beta = torch.rand(T, H, generator=gen, dtype=torch.float64)
    return q, k, v, g, beta


@pytest.mark.parametrize("T", [1, 7, 63, 64, 65, 130], ids=lambda t: f"T{t}")
def test_chunked_equals_recurrent(T):
    q, k, v, g, beta = _inputs(T)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta)
    o, s = chunked_gated_delta_rule(q, k, v, g, beta, chunk=64)
    assert o.shape == o_ref.shape and s.shape == s_ref.shape
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_chunked_continues_from_a_state_and_chunk_size_does_not_matter():
    q, k, v, g, beta = _inputs(40, seed=1)
    o1, s1 = recurrent_gated_delta_rule(q[:17], k[:17], v[:17], g[:17], beta[:17])
    o2, s2 = recurrent_gated_delta_rule(q[17:], k[17:], v[17:], g[17:], beta[17:], state=s1)
    for chunk in (8, 16, 64):
        c1, t1 = chunked_gated_delta_rule(q[:17], k[:17], v[:17], g[:17], beta[:17], chunk=chunk)
        c2, t2 = chunked_gated_delta_rule(q[17:], k[17:], v[17:], g[17:], beta[17:], chunk=chunk, state=t1)
        torch.testing.assert_close(torch.cat([c1, c2]), torch.cat([o1, o2]), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(t2, s2, rtol=1e-10, atol=1e-10)


def test_known_values_of_one_token():
    """One token from a zero state: e = beta v, S = k e^T, o = (k . q) beta v."""
    q = torch.tensor([[[1.0, 0.0]]], dtype=torch.float64)
    k = torch.tensor([[[0.6, 0.8]]], dtype=torch.float64)
    v = torch.tensor([[[2.0, -1.0, 4.0]]], dtype=torch.float64)
    g = torch.tensor([[-0.3]], dtype=torch.float64)
    beta = torch.tensor([[0.5]], dtype=torch.float64)
    o, s = chunked_gated_delta_rule(q, k, v, g, beta)
    torch.testing.assert_close(o[0, 0], torch.tensor([0.6, -0.3, 1.2], dtype=torch.float64))
    torch.testing.assert_close(s[0], torch.tensor([[0.6, -0.3, 1.2], [0.8, -0.4, 1.6]], dtype=torch.float64))


@pytest.mark.parametrize("T", [1, 63, 64, 65, 200], ids=lambda t: f"T{t}")
def test_the_tensor_core_kernels_split_equals_the_recurrence(T):
    # cuda/pf_gdn_tc.cuh computes T = (I + A)^-1 first, then U and W as products, and keeps every chunk's start state
    q, k, v, g, beta = _inputs(T, seed=2)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta)
    o, s = three_pass_gated_delta_rule(q, k, v, g, beta, chunk=16)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s, s_ref, rtol=1e-10, atol=1e-10)


def test_tf32_rounding_keeps_ten_mantissa_bits_and_the_split_stays_close():
    x = torch.tensor([1.0 + 2**-10, 1.0 + 2**-11, 1.0 + 2**-12, -3.0 - 2**-9, 1e-30], dtype=torch.float64)
    assert _tf32(x).tolist() == [1.0 + 2**-10, 1.0 + 2**-10, 1.0, -3.0 - 2**-9, pytest.approx(1e-30, rel=2**-11)]
    # products with tf32 inputs (as the kernels' mma.sync): the chunked outputs stay within ~1e-3 of float64
    q, k, v, g, beta = _inputs(130, H=2, K=128, V=32, seed=3)
    o_ref, s_ref = recurrent_gated_delta_rule(q, k, v, g, beta)
    o, s = three_pass_gated_delta_rule(q, k, v, g, beta, chunk=64, tf32=True)
    rel = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
    assert 1e-6 < rel(o, o_ref) < 3e-3 and 1e-6 < rel(s, s_ref) < 3e-3


TRIL_HARNESS = r"""
#include <cstdio>
#include "pf_tril.cuh"
int main(int argc, char** argv) {
    constexpr int N = 64, LD = 68;  // the prep kernel's A and T: 64 x 64 rows padded to 68 floats
    alignas(16) static float a[N * LD], t[N * LD];
    FILE* f = std::fopen(argv[1], "rb");
    if (!f || std::fread(a, sizeof(float), N * LD, f) != N * LD) return 1;
    std::fclose(f);
    for (int c = 0; c < N; ++c) mk::pf::tril_inverse_column<N>(a, LD, c, t + c, LD);
    f = std::fopen(argv[2], "wb");
    return f && std::fwrite(t, sizeof(float), N * LD, f) == N * LD && std::fclose(f) == 0 ? 0 : 1;
}
"""


def test_the_prep_kernels_triangular_inverse_equals_numpys(tmp_path):
    """cuda/pf_tril.cuh on the host (nvcc, no GPU): T = (I + A)^-1 of a chunk's A as the prep kernel builds it."""
    import subprocess
    from pathlib import Path

    import numpy as np

    from luce_bench.kernels import build as kb

    nvcc = kb.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found: the CUDA toolkit is not installed here")
    (tmp_path / "tril.cu").write_text(TRIL_HARNESS)
    cuda = Path(kb.source_dir())
    exe = tmp_path / "tril"
    subprocess.run([str(nvcc), "-std=c++17", "-O2", "-I", str(cuda), str(tmp_path / "tril.cu"), "-o", str(exe)],
                   check=True, capture_output=True, timeout=300)  # fmt: skip
    q, k, v, g, beta = _inputs(64, H=1, K=128, V=8, seed=4)
    k, g, beta = k[:, 0].numpy(), g[:, 0].numpy() * 0.2, beta[:, 0].numpy()
    G = np.cumsum(g)
    a = np.tril(beta[:, None] * (k @ k.T) * np.exp(G[:, None] - G[None, :]), -1)  # strictly lower, as in the kernel
    padded = np.zeros((64, 68), np.float32)
    padded[:, :64] = a
    padded.tofile(tmp_path / "a.bin")
    subprocess.run([str(exe), str(tmp_path / "a.bin"), str(tmp_path / "t.bin")], check=True, timeout=60)
    got = np.fromfile(tmp_path / "t.bin", np.float32).reshape(64, 68)[:, :64].astype(np.float64)
    want = np.linalg.inv(np.eye(64) + a)
    assert np.allclose(np.triu(got, 1), 0) and np.allclose(np.diag(got), 1)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 1e-5, rel
