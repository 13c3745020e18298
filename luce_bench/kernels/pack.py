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
