"""The LM head's int8 screening copy (kernels/pack.py).

Its row format, the bound the kernel's skipping rests on, and the screened argmax rule (the kernel's, in plain torch)
against a plain argmax. The kernel itself is compared with its full bf16 LM head on the GPU
(tests/gpu/test_megakernel.py).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from luce_bench.kernels.pack import pack_lm_screen, screened_argmax  # noqa: E402

K = 1024


def _head(rows: int, seed: int, scale: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(rows, K, generator=g) * scale).to(torch.bfloat16)


def _meta(screen: torch.Tensor) -> torch.Tensor:
    return screen[:, K : K + 8].view(torch.float32)


def test_rows_hold_offset_codes_scale_bound_and_zero_padding():
    w = torch.zeros(3, K, dtype=torch.bfloat16)
    # max |w| = 1: s = 1/127, codes 127, -127, 64 (63.5 rounds to even), -32 (-31.75)
    w[0, :4] = torch.tensor([1.0, -1.0, 0.5, -0.25])
    w[2, 7] = -3.0
    screen = pack_lm_screen(w)
    assert screen.shape == (3, K + 16) and screen.dtype == torch.uint8
    assert screen[0, :5].tolist() == [255, 1, 192, 96, 128]
    assert screen[2, 7].item() == 1 and screen[2, 6].item() == 128
    s, c = _meta(screen).T
    assert s.tolist() == pytest.approx([1 / 127, 1.0, 3 / 127])
    assert s[1].item() == 1.0 and c[1].item() == 0.0  # an all-zero row: scale 1, codes 128, no error
    assert screen[:, K + 8 :].eq(0).all()
    q0 = screen[0, :K].double() - 128
    err0 = (w[0].double() - s[0].double() * q0).norm()
    want = err0 * (1 + 1e-4) + 1e-5 * (w[0].double().norm() + s[0].double() * q0.norm())  # error norm + f32 slack
    assert c[0].item() == pytest.approx(want.item(), rel=1e-6) and c[0].item() >= want.item()


def test_bound_holds_for_random_and_worst_case_activations():
    """|s_j (h . q_j) - h . w_j| <= ||h|| c_j in f32, also for h along a row's own rounding error (the worst case)."""
    w = _head(512, seed=3)
    screen = pack_lm_screen(w)
    s, c = _meta(screen).T
    q = screen[:, :K].to(torch.float32) - 128.0
    wf = w.to(torch.float32)
    g = torch.Generator().manual_seed(4)
    hs = [torch.randn(K, generator=g) * 3, torch.randn(K, generator=g) * 100]
    err = wf.double() - s.double()[:, None] * q.double()
    hs += [(err[j] / err[j].norm() * 40).float() for j in (0, 1, 77, 511)]  # aligned with row j's error
    for h in hs:
        gap = (s * (q @ h) - wf @ h).abs()
        bound = torch.linalg.vector_norm(h) * c
        assert (gap <= bound).all(), float((gap - bound).max())
    worst = (s[77] * (q[77] @ hs[4]) - wf[77] @ hs[4]).abs() / (torch.linalg.vector_norm(hs[4]) * c[77])
    assert worst > 0.99  # the bound is tight, not a loose guess


def test_a_non_finite_head_gets_no_screen():
    w = _head(8, seed=5)
    w[3, 10] = float("inf")
    assert pack_lm_screen(w, rows_per_chunk=4) is None


@pytest.mark.parametrize("blocks", [1, 7, 132])
def test_screened_argmax_is_the_plain_argmax_and_prunes(blocks):
    w = _head(4096, seed=6)
    screen = pack_lm_screen(w, rows_per_chunk=1000)
    g = torch.Generator().manual_seed(7)
    for _ in range(20):
        h = torch.randn(K, generator=g) * 2
        tok, rescored = screened_argmax(h, screen, w, blocks)
        assert tok == int(torch.argmax(w.to(torch.float32) @ h))
        assert rescored < 4096 // 4  # most rows are ruled out on the copy alone


def test_screened_argmax_keeps_ties_and_near_ties_exact():
    """Equal rows: the smaller token wins, as in the full head; rows a bf16 step apart: the larger logit wins."""
    w = _head(2048, seed=8)
    g = torch.Generator().manual_seed(9)
    h = torch.randn(K, generator=g)
    top = int(torch.argmax(w.to(torch.float32) @ h))
    assert 10 < top < 1500  # (seed 8) so that the copies below tie with an earlier and a later token
    w[1500] = w[top]  # an exact tie with a later token, in another block
    w[10] = w[top]  # ... and with an earlier one
    screen = pack_lm_screen(w)
    assert screened_argmax(h, screen, w, 16)[0] == 10
    near = w[top].clone()
    i = int(torch.argmax(h.abs()))
    bits = near[i : i + 1].view(torch.int16)
    bits += 1 if (near[i] > 0) == (h[i] > 0) else -1  # the next bf16 value in the direction of h's sign
    w[1999] = near  # one bf16 step larger along h's largest entry: a slightly larger logit than the ties
    screen = pack_lm_screen(w)
    want = int(torch.argmax(w.to(torch.float32) @ h))
    assert want == 1999 and screened_argmax(h, screen, w, 16)[0] == 1999


def test_chunked_packing_is_the_same_bytes():
    w = _head(1000, seed=10)
    assert torch.equal(pack_lm_screen(w, rows_per_chunk=64), pack_lm_screen(w, rows_per_chunk=4096))


def _dp4a_scores(h: torch.Tensor, screen: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The kernel's integer scores (sm_90, cuda/mk_math.cuh) step by step in f32, and its scale t.

    The activations become t (d1 + d2 / 128 + d3 / 128^2 + r / 128^2) with t a power of two; each lane's 32 codes
    give exact integer dots D1..D3, combined by two f32 roundings (an f64 sum rounded once is f32's fmaf here: every
    term is exact in f64); the lanes are summed in the kernel's xor-butterfly order, then scaled by s_j t.
    """
    import numpy as np

    a = h.to(torch.float32).numpy()
    am = np.float32(np.abs(a).max()) * np.float32(1 / 127)
    t = np.float32(2.0 ** np.ceil(np.log2(am))) if am > 0 else np.float32(1)
    assert t >= am and (am == 0 or t < 2 * am)
    x = a * np.float32(1 / t)
    d1 = np.rint(x)
    y = (x - d1) * np.float32(128)
    d2 = np.rint(y)
    d3 = np.rint((y - d2) * np.float32(128))
    assert np.abs(d1).max() <= 127 and np.abs(d2).max() <= 64 and np.abs(d3).max() <= 64
    q = screen[:, :K].to(torch.int64).numpy() - 128
    lane = (np.arange(K) // 8) % 32  # element it * 256 + lane * 8 + e belongs to lane `lane`

    def lane_dots(d):  # [rows, 32]: each lane's exact integer dot of its codes with its digits
        return np.stack([(q[:, lane == j] * d[lane == j].astype(np.int64)).sum(1) for j in range(32)], 1)

    dots = [lane_dots(d) for d in (d1, d2, d3)]
    part = ((dots[0] + dots[1] / 128.0).astype(np.float32).astype(np.float64) + dots[2] / 16384.0).astype(np.float32)
    for o in (16, 8, 4, 2, 1):
        part = (part + part[:, np.arange(32) ^ o]).astype(np.float32)
    s = _meta(screen)[:, 0].numpy()
    return torch.from_numpy(((s * t).astype(np.float32) * part[:, 0]).astype(np.float32)), float(t)


@pytest.mark.parametrize("kind", ["normal", "tiny", "outliers", "zero"])
def test_integer_scores_are_within_their_slack(kind):
    """The integer scores d_j stay within 16 s_j t of s_j (h . q_j), the slack the kernel adds to e_j."""
    w = _head(600, seed=11)
    screen = pack_lm_screen(w)
    g = torch.Generator().manual_seed(12)
    h = torch.randn(K, generator=g) * 3
    if kind == "tiny":
        h = h * 1e-30
    elif kind == "outliers":  # a few huge entries, as a real residual stream has: t grows, the slack with it
        h[[5, 300, 777]] = torch.tensor([400.0, -900.0, 650.0])
    elif kind == "zero":
        h = torch.zeros(K)
    d, t = _dp4a_scores(h, screen)
    s = _meta(screen)[:, 0].double()
    exact = s * ((screen[:, :K].double() - 128) @ h.to(torch.float32).double())
    gap = (d.double() - exact).abs()
    assert (gap <= 16 * s * t).all(), float((gap / (16 * s * t)).max())
    if kind == "normal":
        # the slack is a small share of the screen's own bound: it hardly adds rescored rows
        assert (16 * s * t).max() < 0.02 * (torch.linalg.vector_norm(h).double() * _meta(screen)[:, 1].double()).min()
