"""Naive float32 token-by-token Qwen3.5 decode (qwen35.md §2), the oracle for kernel diff tests.

Plain torch ops on any device; no batching, no chunked prefill: every token goes through the recurrent form.
"""

from __future__ import annotations

import math
from typing import Any


class Reference:
    """fp32 reference model holding its own KV cache and GDN conv/recurrent state."""

    def __init__(self, sd: dict[str, Any], cfg: Any, device: Any = "cpu") -> None:
        import torch

        self.cfg = cfg
        self.dev = torch.device(device)
        self.w = {k: v.to(device=self.dev, dtype=torch.float32) for k, v in sd.items()}
        self.reset()

    def reset(self) -> None:
        """Forget the sequence: empty KV cache, zero conv and recurrent states."""
        import torch

        c = self.cfg
        self.pos = 0
        self.kv: dict[int, list[Any]] = {}  # layer -> [K, V], each [nkv, capacity, head_dim]; rows < pos are valid
        self.conv: dict[int, Any] = {}
        self.state: dict[int, Any] = {}
        for i, t in enumerate(c.layer_types):
            if t == "full_attention":
                shape = (c.num_key_value_heads, 64, c.head_dim)
                self.kv[i] = [torch.zeros(shape, device=self.dev), torch.zeros(shape, device=self.dev)]
            else:
                self.conv[i] = torch.zeros(c.conv_dim, c.linear_conv_kernel_dim - 1, device=self.dev)
                self.state[i] = torch.zeros(
                    c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim, device=self.dev
                )

    def _rms1p(self, x: Any, w: Any) -> Any:
        import torch

        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.cfg.rms_norm_eps) * (1.0 + w)

    def _rope(self, x: Any, pos: int) -> Any:
        import torch

        rd = self.cfg.rotary_dim
        inv = 1.0 / (self.cfg.rope_theta ** (torch.arange(0, rd, 2, device=self.dev, dtype=torch.float32) / rd))
        ang = pos * inv
        cos, sin = torch.cos(ang), torch.sin(ang)
        a, b = x[..., : rd // 2], x[..., rd // 2 : rd]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, x[..., rd:]], -1)

    def kv_rows(self, i: int) -> tuple[Any, Any]:
        """Layer i's cached keys and values so far, each [nkv, pos, head_dim]."""
        return self.kv[i][0][:, : self.pos], self.kv[i][1][:, : self.pos]

    def _attn(self, i: int, u: Any) -> Any:
        import torch

        c, p = self.cfg, f"model.layers.{i}.self_attn."
        hd, nq, nkv = c.head_dim, c.num_attention_heads, c.num_key_value_heads
        qg = (self.w[p + "q_proj.weight"] @ u).view(nq, 2 * hd)
        q, gate = qg[:, :hd], qg[:, hd:]
        k = (self.w[p + "k_proj.weight"] @ u).view(nkv, hd)
        v = (self.w[p + "v_proj.weight"] @ u).view(nkv, hd)
        q = self._rope(self._rms1p(q, self.w[p + "q_norm.weight"]), self.pos)
        k = self._rope(self._rms1p(k, self.w[p + "k_norm.weight"]), self.pos)
        cache = self.kv[i]
        if self.pos == cache[0].shape[1]:  # grow by doubling (amortised appends)
            cache[:] = [torch.cat([b, torch.zeros_like(b)], 1) for b in cache]
        cache[0][:, self.pos], cache[1][:, self.pos] = k, v
        K, V = cache[0][:, : self.pos + 1], cache[1][:, : self.pos + 1]  # [nkv, T, hd]
        rep = nq // nkv
        s = torch.einsum("gjd,gtd->gjt", q.view(nkv, rep, hd), K) / math.sqrt(hd)  # [nkv, rep, T]
        o = torch.einsum("gjt,gtd->gjd", torch.softmax(s, -1), V).reshape(-1) * torch.sigmoid(gate.reshape(-1))
        return self.w[p + "o_proj.weight"] @ o

    def _gdn(self, i: int, u: Any) -> Any:
        import torch
        import torch.nn.functional as F

        c, p = self.cfg, f"model.layers.{i}.linear_attn."
        nh, dk, dv = c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
        mixed = self.w[p + "in_proj_qkv.weight"] @ u
        z = (self.w[p + "in_proj_z.weight"] @ u).view(nh, dv)
        b = self.w[p + "in_proj_b.weight"] @ u
        a = self.w[p + "in_proj_a.weight"] @ u
        win = torch.cat([self.conv[i], mixed[:, None]], 1)  # [C, 4], newest last
        self.conv[i] = win[:, 1:]
        conv = F.silu((win * self.w[p + "conv1d.weight"][:, 0, :]).sum(-1))
        q, k, v = (
            conv[: nh * dk].view(nh, dk),
            conv[nh * dk : 2 * nh * dk].view(nh, dk),
            conv[2 * nh * dk :].view(nh, dv),
        )
        q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) / math.sqrt(dk)
        k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
        beta = torch.sigmoid(b)
        g = -torch.exp(self.w[p + "A_log"]) * F.softplus(a + self.w[p + "dt_bias"])
        S = self.state[i] * torch.exp(g)[:, None, None]
        kv = torch.einsum("hkv,hk->hv", S, k)
        e = (v - kv) * beta[:, None]
        S = S + k[:, :, None] * e[:, None, :]
        self.state[i] = S
        o = torch.einsum("hkv,hk->hv", S, q)
        o = o * torch.rsqrt(o.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * self.w[p + "norm.weight"]
        o = o * F.silu(z)
        return self.w[p + "out_proj.weight"] @ o.reshape(-1)

    def step(self, token: int, hidden: list[Any] | None = None, logits: bool = True) -> Any:
        """Feed one token; return float32 logits [vocab] for the next position (None without `logits`).

        With `hidden`, the residual stream after every layer is appended to it (24 vectors [hidden]).
        """
        import torch.nn.functional as F

        E = self.w["model.embed_tokens.weight"]
        x = E[token]
        for i, t in enumerate(self.cfg.layer_types):
            p = f"model.layers.{i}."
            u = self._rms1p(x, self.w[p + "input_layernorm.weight"])
            x = x + (self._attn(i, u) if t == "full_attention" else self._gdn(i, u))
            h = self._rms1p(x, self.w[p + "post_attention_layernorm.weight"])
            m = p + "mlp."
            x = x + self.w[m + "down_proj.weight"] @ (
                F.silu(self.w[m + "gate_proj.weight"] @ h) * (self.w[m + "up_proj.weight"] @ h)
            )
            if hidden is not None:
                hidden.append(x)
        self.pos += 1
        if not logits:
            return None
        head = self.w.get("lm_head.weight", E)
        return head @ self._rms1p(x, self.w["model.norm.weight"])
