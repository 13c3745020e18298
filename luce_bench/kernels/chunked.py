"""The gated delta rule two ways: token by token (the decode kernel's recurrence) and chunked (the prefill's algorithm).

Shapes: q, k [T, H, K] (already L2-normalised; q also scaled by 1/sqrt(K)), v [T, H, V], g (log decay, <= 0) and beta
[T, H]; state S [H, K, V]. One token step (qwen35.md section 2.4):

    S <- exp(g_t) S;   e_t = beta_t (v_t - S^T k_t);   S <- S + k_t e_t^T;   o_t = S^T q_t

The chunked form (section 2.5) computes the same outputs and final state a chunk of C tokens at a time: inside a chunk,
with G the cumulative sum of g, A[i, j] = beta_i (k_i . k_j) exp(G_i - G_j) for j < i; solve (I + A) U = beta v and
(I + A) W = beta exp(G) k; then with the chunk's start state S: E = U - W S, O = exp(G) (Q S) + (M * (Q K^T)) E with
M[i, j] = exp(G_i - G_j) for j <= i (else 0), and S <- exp(G_C) S + sum_t exp(G_C - G_t) k_t e_t^T. Only the last
step is sequential over chunks; everything else is parallel over heads and chunks (the CUDA prefill's plan).
"""

from __future__ import annotations

from typing import Any


def recurrent_gated_delta_rule(q: Any, k: Any, v: Any, g: Any, beta: Any, state: Any = None) -> tuple[Any, Any]:
    """Outputs [T, H, V] and the final state [H, K, V], one token at a time."""
    import torch

    T, H, K = k.shape
    S = torch.zeros(H, K, v.shape[-1], dtype=q.dtype) if state is None else state.clone()
    out = []
    for t in range(T):
        S = S * torch.exp(g[t])[:, None, None]
        e = beta[t][:, None] * (v[t] - torch.einsum("hkv,hk->hv", S, k[t]))
        S = S + k[t][:, :, None] * e[:, None, :]
        out.append(torch.einsum("hkv,hk->hv", S, q[t]))
    return torch.stack(out), S


def chunked_gated_delta_rule(
    q: Any, k: Any, v: Any, g: Any, beta: Any, chunk: int = 64, state: Any = None
) -> tuple[Any, Any]:
    """The same as `recurrent_gated_delta_rule`, computed `chunk` tokens at a time (T is zero-padded to a multiple)."""
    import torch

    T, H, K = k.shape
    Vd = v.shape[-1]
    pad = (-T) % chunk
    if pad:  # padded tokens have k = v = 0, beta = 0, g = 0: they change neither outputs nor the state
        q, k, v = (torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) for x in (q, k, v))
        g, beta = (torch.cat([x, x.new_zeros(pad, H)]) for x in (g, beta))
    S = torch.zeros(H, K, Vd, dtype=q.dtype) if state is None else state.clone()
    eye = torch.eye(chunk, dtype=q.dtype)
    causal = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool))
    out = []
    for c0 in range(0, T + pad, chunk):
        sl = slice(c0, c0 + chunk)
        Q, Kc, Vc = (x[sl].transpose(0, 1) for x in (q, k, v))  # [H, C, K|V]
        G = torch.cumsum(g[sl], 0).transpose(0, 1)  # [H, C]
        b = beta[sl].transpose(0, 1)  # [H, C]
        decay = torch.exp(G[:, :, None] - G[:, None, :]).masked_fill(~causal, 0.0)  # [H, C, C], j <= i
        A = (b[:, :, None] * (Kc @ Kc.transpose(1, 2)) * decay).tril(-1)
        rhs = torch.cat([b[:, :, None] * Vc, (b * torch.exp(G))[:, :, None] * Kc], -1)
        UW = torch.linalg.solve_triangular(eye + A, rhs, upper=False, unitriangular=True)
        U, W = UW[..., :Vd], UW[..., Vd:]
        E = U - W @ S  # [H, C, V]
        o = torch.exp(G)[:, :, None] * (Q @ S) + ((Q @ Kc.transpose(1, 2)) * decay) @ E
        out.append(o.transpose(0, 1))
        last = G[:, -1]
        S = torch.exp(last)[:, None, None] * S + (Kc * torch.exp(last[:, None] - G)[:, :, None]).transpose(1, 2) @ E
    return torch.cat(out)[:T], S


def _tf32(x: Any) -> Any:
    """Round float32/64 values to tf32 (10 explicit mantissa bits, round to nearest, ties away), as cvt.rna.tf32."""
    import torch

    x32 = x.to(torch.float32).contiguous()
    bits = x32.view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)  # add half an ulp of tf32, drop the low 13 bits
    return rounded.to(x.dtype)


def three_pass_gated_delta_rule(
    q: Any, k: Any, v: Any, g: Any, beta: Any, chunk: int = 64, tf32: bool = False
) -> tuple[Any, Any]:
    """The same as `recurrent_gated_delta_rule` from a zero state, split as the tensor-core prefill kernels split it.

    prep (per chunk, parallel): T = (I + A)^-1 by forward substitution, U = T diag(beta) V, W = T diag(beta exp(G)) K,
    Kd = K exp(G_C - G), M = (Q K^T) * decay; state (sequential): keep every chunk's start state S_c and
    E = U - W S_c, then S <- exp(G_C) S + Kd^T E; out (parallel): O = exp(G) (Q S_c) + M E. With `tf32` the inputs of
    every product are rounded to tf32 as the kernels' mma.sync does (sums stay in the working precision).
    """
    import torch

    T, H, K = k.shape
    Vd = v.shape[-1]
    pad = (-T) % chunk
    if pad:
        q, k, v = (torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) for x in (q, k, v))
        g, beta = (torch.cat([x, x.new_zeros(pad, H)]) for x in (g, beta))
    r = _tf32 if tf32 else (lambda x: x)
    mm = lambda a, b: r(a) @ r(b)  # noqa: E731 - one tensor-core product
    causal = torch.tril(torch.ones(chunk, chunk, dtype=torch.bool))
    chunks = []
    for c0 in range(0, T + pad, chunk):  # prep
        sl = slice(c0, c0 + chunk)
        Q, Kc, Vc = (x[sl].transpose(0, 1) for x in (q, k, v))
        G = torch.cumsum(g[sl], 0).transpose(0, 1)
        b = beta[sl].transpose(0, 1)
        decay = torch.exp(G[:, :, None] - G[:, None, :]).masked_fill(~causal, 0.0)
        A = (b[:, :, None] * mm(Kc, Kc.transpose(1, 2)) * decay).tril(-1)
        Tm = torch.zeros_like(A)
        for i in range(chunk):  # T[i] = e_i - sum_{j < i} A[i, j] T[j]
            Tm[:, i, i] = 1.0
            Tm[:, i, :i] = -torch.einsum("hj,hjc->hc", A[:, i, :i], Tm[:, :i, :i])
        U = mm(Tm * b[:, None, :], Vc)
        W = mm(Tm * (b * torch.exp(G))[:, None, :], Kc)
        Kd = Kc * torch.exp(G[:, -1:] - G)[:, :, None]
        M = mm(Q, Kc.transpose(1, 2)) * decay
        chunks.append((Q, G, U, W, Kd, M))
    S = torch.zeros(H, K, Vd, dtype=q.dtype)
    starts, errs = [], []
    for _, G, U, W, Kd, _ in chunks:  # state
        starts.append(S)
        E = U - mm(W, S)
        errs.append(E)
        S = torch.exp(G[:, -1])[:, None, None] * S + mm(Kd.transpose(1, 2), E)
    out = [  # out
        (torch.exp(G)[:, :, None] * mm(Q, Sc) + mm(M, E)).transpose(0, 1)
        for (Q, G, _, _, _, M), Sc, E in zip(chunks, starts, errs, strict=True)
    ]
    return torch.cat(out)[:T], S
