"""Repack HF-named Qwen3.5-0.8B weights into the megakernel's layouts (cuda/luce_mk.h).

One bf16 blob of all layer matrices in streaming order and one f32 blob of the small parameters ((1 + w) norms, conv
taps, -exp(A_log), ...), whose offsets come from luce_mk.h itself (luce_bench.kernels.abi).
"""

from __future__ import annotations

from typing import Any

from luce_bench.kernels import abi


def is_fa(layer: int) -> bool:
    """Layer `layer` is a gated full-attention layer (3, 7, ..., 23)."""
    return layer % 4 == 3


def layer_matrices(sd: dict[str, Any], layer: int) -> list[Any]:
    """The layer's 4 streamed matrices [rows, K] in kernel order (bf16, CPU).

    The GDN out_proj and every down_proj are streamed transposed (row k = input column k: split-K by block).
    """
    import torch

    p = f"model.layers.{layer}."
    bf = torch.bfloat16
    if is_fa(layer):
        a = p + "self_attn."
        q, k, v = sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]
        # by KV group: the 4 query heads (q/gate interleaved) sharing it, then its k and v rows
        proj = torch.cat(
            [
                t
                for g in range(2)
                for t in (q[2048 * g : 2048 * (g + 1)], k[256 * g : 256 * (g + 1)], v[256 * g : 256 * (g + 1)])
            ],
            0,
        )
        outp = sd[a + "o_proj.weight"]
    else:
        g = p + "linear_attn."
        qkv, z = sd[g + "in_proj_qkv.weight"], sd[g + "in_proj_z.weight"]
        b, a_ = sd[g + "in_proj_b.weight"], sd[g + "in_proj_a.weight"]
        # head-major: head h's q, k, v, z rows, then its b and a rows (514 rows per head)
        proj = torch.cat(
            [
                t
                for h in range(16)
                for t in (
                    qkv[128 * h : 128 * (h + 1)],
                    qkv[2048 + 128 * h : 2048 + 128 * (h + 1)],
                    qkv[4096 + 128 * h : 4096 + 128 * (h + 1)],
                    z[128 * h : 128 * (h + 1)],
                    b[h : h + 1],
                    a_[h : h + 1],
                )
            ],
            0,
        )
        outp = sd[g + "out_proj.weight"].t().contiguous()  # [2048, 1024]
    m = p + "mlp."
    gate_up = torch.stack([sd[m + "gate_proj.weight"], sd[m + "up_proj.weight"]], 1).reshape(-1, 2 * 1024)
    down_t = sd[m + "down_proj.weight"].t().contiguous()  # [3584, 1024]: row k = column k (split-K by block)
    return [t.to(bf) for t in (proj, outp, gate_up, down_t)]


def pack_weights(sd: dict[str, Any], layout: Any, device: Any) -> Any:
    """The bf16 weight blob on `device` (filled layer by layer, so host memory stays small)."""
    import torch

    blob = torch.empty(layout.wblob_elems, dtype=torch.bfloat16, device=device)
    for layer in range(24):
        off = layout.layer_woff[layer]
        for mat in layer_matrices(sd, layer):
            n = mat.numel()
            blob[off : off + n].view_as(mat).copy_(mat.contiguous())
            off += n
        end = layout.layer_woff[layer + 1] if layer < 23 else layout.wblob_elems
        if off != end:
            raise AssertionError(f"layer {layer}: packed {off} elements, layout expects {end}")
    return blob


def pack_small(sd: dict[str, Any], layout: Any) -> Any:
    """The f32 small-parameter blob (CPU)."""
    import torch

    f = torch.float32
    o = abi.small_params()
    sp = int(layout.sp_stride)
    if sp != o["STRIDE"]:
        raise AssertionError(f"library layout stride {sp} != luce_mk.h LUCE_MK_SP_STRIDE {o['STRIDE']}")
    out = torch.zeros(int(layout.sblob_floats), dtype=f)
    for layer in range(24):
        p = f"model.layers.{layer}."
        base = layer * sp
        out[base + o["LN1"] : base + o["LN1"] + 1024] = 1.0 + sd[p + "input_layernorm.weight"].to(f)
        out[base + o["LN2"] : base + o["LN2"] + 1024] = 1.0 + sd[p + "post_attention_layernorm.weight"].to(f)
        if is_fa(layer):
            a = p + "self_attn."
            out[base + o["QN"] : base + o["QN"] + 256] = 1.0 + sd[a + "q_norm.weight"].to(f)
            out[base + o["KN"] : base + o["KN"] + 256] = 1.0 + sd[a + "k_norm.weight"].to(f)
        else:
            g = p + "linear_attn."
            out[base + o["CONV"] : base + o["CONV"] + 6144 * 4] = sd[g + "conv1d.weight"].to(f).reshape(-1)
            out[base + o["NEGA"] : base + o["NEGA"] + 16] = -torch.exp(sd[g + "A_log"].to(f))
            out[base + o["DTB"] : base + o["DTB"] + 16] = sd[g + "dt_bias"].to(f)
            out[base + o["GNW"] : base + o["GNW"] + 128] = sd[g + "norm.weight"].to(f)
    out[24 * sp : 24 * sp + 1024] = 1.0 + sd["model.norm.weight"].to(f)
    return out


LM8_PAD = 16  # bytes after a screening row's codes: f32 s, f32 c, 8 zero bytes (LUCE_MK_LM8_ROW_BYTES = 1024 + 16)
# Slack of the screening bound c_j (luce_mk.h, lm8) for what f32 arithmetic adds to the quantisation error: both dots
# (the score and the bf16 logit it stands for) round at most ~22 times in a chain (2^-24 each, of sum |a_i w_i| <=
# ||a|| ||w||), and the score's scale product, the sums d +- e and ||h|| round once more. 1e-5 per unit of weight norm
# is ~8x that; the relative 1e-4 covers the f32 rounding of c itself.
_LM8_REL, _LM8_ABS = 1e-4, 1e-5


def pack_lm_screen(embed: Any, rows_per_chunk: int = 4096) -> Any | None:
    """The LM head's int8 screening copy of `embed` [V, K] (uint8 [V, K + 16], on embed's device), or None.

    Row j: the K bytes q_j + 128 with q_j = round(w_j / s_j) in -127..127 and s_j = max|w_j| / 127 (1 for a zero row),
    then s_j and c_j = ||w_j - s_j q_j||_2 (1 + 1e-4) + 1e-5 (||w_j||_2 + s_j ||q_j||_2) as f32, then 8 zero bytes.
    For any activations h, |s_j (h . q_j) - h . w_j| <= ||h||_2 c_j holds for the f32 dots the kernel computes (the
    error term by Cauchy-Schwarz, the rest for f32 rounding), which is what lets the kernel skip a row. None when the
    head holds a non-finite weight (no bound holds: the kernel then reads the bf16 head).
    """
    import torch

    n_rows, k = embed.shape
    if k + LM8_PAD != abi.lm_screen()["ROW_BYTES"]:
        raise AssertionError(f"screening rows of {k + LM8_PAD} bytes, luce_mk.h expects {abi.lm_screen()['ROW_BYTES']}")
    out = torch.zeros((n_rows, k + LM8_PAD), dtype=torch.uint8, device=embed.device)
    meta = out[:, k : k + 8].view(torch.float32)  # [V, 2]: s, c
    for r0 in range(0, n_rows, rows_per_chunk):
        w = embed[r0 : r0 + rows_per_chunk].to(torch.float64)
        if not torch.isfinite(w).all():
            return None
        s = w.abs().amax(1) / 127.0
        s = torch.where(s > 0, s, torch.ones_like(s))
        s = s.to(torch.float32).to(torch.float64)  # the f32 scale the kernel reads
        q = torch.round(w / s[:, None]).clamp_(-127, 127)
        err = torch.linalg.vector_norm(w - s[:, None] * q, dim=1)
        slack = torch.linalg.vector_norm(w, dim=1) + s * torch.linalg.vector_norm(q, dim=1)
        c = err * (1 + _LM8_REL) + _LM8_ABS * slack
        out[r0 : r0 + rows_per_chunk, :k] = (q + 128).to(torch.uint8)
        meta[r0 : r0 + rows_per_chunk, 0] = s.to(torch.float32)
        c32 = c.to(torch.float32)
        up = torch.nextafter(c32, torch.full_like(c32, float("inf")))
        meta[r0 : r0 + rows_per_chunk, 1] = torch.where(c32.to(torch.float64) < c, up, c32)
    return out


def screened_argmax(h: Any, screen: Any, embed: Any, blocks: int) -> tuple[int, int]:
    """The screened LM head's argmax in plain torch (f32), as the kernel does it: (token, rows recomputed).

    The vocabulary is split into `blocks` contiguous parts as the kernel's grid splits it. In each part, every row is
    scored on the screening copy (d_j = s_j h . q_j, e_j = ||h|| c_j); the rows with d_j + e_j >= max_k (d_k - e_k)
    get their exact logit h . w_j; the part's best is the largest exact logit (the smaller token on a tie), and the
    answer the best of the parts. Equals torch.argmax(embed @ h) up to f32 rounding ties (tests/test_lm_screen.py).
    """
    import torch

    n_rows, k = embed.shape
    h = h.to(torch.float32)
    meta = screen[:, k : k + 8].view(torch.float32)
    q = screen[:, :k].to(torch.float32) - 128.0
    d = meta[:, 0] * (q @ h)
    e = torch.linalg.vector_norm(h) * 1.00001 * meta[:, 1]
    best_v, best_i, rescored = -float("inf"), -1, 0
    for b in range(blocks):
        r0, r1 = n_rows * b // blocks, n_rows * (b + 1) // blocks
        if r0 == r1:
            continue
        lo = (d[r0:r1] - e[r0:r1]).max()
        cand = torch.nonzero(d[r0:r1] + e[r0:r1] >= lo).flatten() + r0
        rescored += int(cand.numel())
        exact = embed[cand].to(torch.float32) @ h
        i = int(torch.argmax(exact))  # the first of equal maxima: the smaller token
        v = float(exact[i])
        if v > best_v or (v == best_v and int(cand[i]) < best_i):
            best_v, best_i = v, int(cand[i])
    return best_i, rescored
