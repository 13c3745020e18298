"""Synthetic Qwen3.5 checkpoints: exact shapes, random weights from a fixed seed, written once in the HF layout.

The checkpoint is generated into a temporary directory next to its final place and renamed into place only when
complete (a `luce_bench.json` marker is the last file written), so a reader never sees a half-written one.

Initialisation is chosen so greedy decoding is not degenerate: projections use std 1/sqrt(fan_in) and the embedding
std 0.1, so the layers dominate the residual and the tied LM head does not just echo the input token (with an
embedding of std 1, greedy decoding repeats the last prompt token forever).
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from luce_bench.files import atomic_path, cache_dir
from luce_bench.model.spec import SIZES, TextConfig

FORMAT_VERSION = 1
MARKER = "luce_bench.json"
DEFAULT_SEED = 0


def synthetic_dir(size: str, seed: int = DEFAULT_SEED) -> Path:
    """Where the synthetic checkpoint of `size` and `seed` lives (in the user cache, `luce_bench.files`)."""
    tag = f"seed{seed}" if seed >= 0 else f"seed_minus{-seed}"  # ("tiny-seed-1" would read as seed 1)
    return cache_dir() / "models" / f"{size}-{tag}-v{FORMAT_VERSION}"


def is_complete(path: Path) -> bool:
    """True if `path` holds a fully written synthetic checkpoint."""
    return (path / MARKER).is_file() and (path / "model.safetensors").is_file() and (path / "config.json").is_file()


def tensor_plan(cfg: TextConfig) -> Iterator[tuple[str, tuple[int, ...], str]]:
    """(name, shape, init kind) for every weight of the text model, in HF `Qwen3_5ForCausalLM` key order."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    yield "model.embed_tokens.weight", (cfg.vocab_size, h), "embed"
    for i, kind in enumerate(cfg.layer_types):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (h,), "norm1p"
        yield p + "post_attention_layernorm.weight", (h,), "norm1p"
        if kind == "full_attention":
            a = p + "self_attn."
            yield a + "q_proj.weight", (2 * cfg.num_attention_heads * cfg.head_dim, h), "linear"
            yield a + "k_proj.weight", (cfg.num_key_value_heads * cfg.head_dim, h), "linear"
            yield a + "v_proj.weight", (cfg.num_key_value_heads * cfg.head_dim, h), "linear"
            yield a + "o_proj.weight", (h, cfg.num_attention_heads * cfg.head_dim), "linear"
            yield a + "q_norm.weight", (cfg.head_dim,), "norm1p"
            yield a + "k_norm.weight", (cfg.head_dim,), "norm1p"
        else:
            g = p + "linear_attn."
            nv = cfg.linear_num_value_heads
            yield g + "in_proj_qkv.weight", (cfg.conv_dim, h), "linear"
            yield g + "in_proj_z.weight", (nv * cfg.linear_value_head_dim, h), "linear"
            yield g + "in_proj_b.weight", (nv, h), "linear"
            yield g + "in_proj_a.weight", (nv, h), "linear"
            yield g + "conv1d.weight", (cfg.conv_dim, 1, cfg.linear_conv_kernel_dim), "conv"
            yield g + "A_log", (nv,), "a_log"
            yield g + "dt_bias", (nv,), "dt_bias"
            yield g + "norm.weight", (cfg.linear_value_head_dim,), "norm_plain"
            yield g + "out_proj.weight", (h, nv * cfg.linear_value_head_dim), "linear"
        yield p + "mlp.gate_proj.weight", (inter, h), "linear"
        yield p + "mlp.up_proj.weight", (inter, h), "linear"
        yield p + "mlp.down_proj.weight", (h, inter), "linear"
    yield "model.norm.weight", (h,), "norm1p"


def _init(kind: str, shape: tuple[int, ...], gen: Any) -> Any:
    import torch

    if kind == "linear":
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    if kind == "embed":  # small, so the tied LM head does not echo the input token
        return torch.randn(shape, generator=gen) * 0.1
    if kind == "conv":
        return torch.randn(shape, generator=gen) / math.sqrt(shape[-1])
    if kind == "norm1p":  # zero-centred RMSNorm weight: y = x_hat * (1 + w)
        return torch.randn(shape, generator=gen) * 0.1
    if kind == "norm_plain":  # GDN gated norm: plain weight around 1
        return 1.0 + torch.randn(shape, generator=gen) * 0.1
    if kind == "a_log":  # transformers' init: A ~ U(0, 16], stored as log
        return torch.log(torch.rand(shape, generator=gen) * 15.0 + 1.0)
    if kind == "dt_bias":  # inverse softplus of dt ~ logU(1e-3, 1e-1)
        dt = torch.exp(torch.rand(shape, generator=gen) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
        return dt + torch.log(-torch.expm1(-dt))
    raise ValueError(kind)


def generate(cfg: TextConfig, out_dir: Path, seed: int, on_tensor: Callable[[str, int], None] | None = None) -> None:
    """Write config.json + bf16 model.safetensors for `cfg` into `out_dir` (which must exist)."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    tensors: dict[str, Any] = {}
    for name, shape, kind in tensor_plan(cfg):
        tensors[name] = _init(kind, shape, gen).to(torch.bfloat16).contiguous()
        if on_tensor:
            on_tensor(name, math.prod(shape))
    from luce_bench.files import default_mode

    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt", "generator": "luce-bench"})
    default_mode(out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")


def ensure_synthetic(size: str, seed: int = DEFAULT_SEED, progress: bool = True) -> Path:
    """Return the directory of the synthetic checkpoint `size`, generating it once if needed."""
    from luce_bench.errors import UserError, WriteError, reason_of

    if size not in SIZES:
        raise UserError(f"unknown synthetic size {size!r}; known: {', '.join(SIZES)}")
    final = synthetic_dir(size, seed)
    if is_complete(final):
        return final
    if final.exists():  # an incomplete leftover from a killed run; a complete one returned above
        shutil.rmtree(final, ignore_errors=True)
    try:
        with atomic_path(final) as tmp:
            tmp.mkdir()
            _generate_with_progress(SIZES[size], tmp, seed, f"synthetic {size} (seed {seed})", progress)
            (tmp / MARKER).write_text(json.dumps({"size": size, "seed": seed, "format": FORMAT_VERSION}) + "\n")
    except Exception as exc:  # noqa: BLE001 - OSError, or the safetensors writer's own error on a full disk
        if not is_complete(final):  # lost a race with a concurrent writer that finished first: theirs is fine
            raise WriteError(f"cannot write the synthetic checkpoint {final}: {reason_of(exc)}") from exc
    return final


def _generate_with_progress(cfg: TextConfig, out_dir: Path, seed: int, label: str, progress: bool) -> None:
    if not progress:
        generate(cfg, out_dir, seed)
        return
    from luce_bench.progress import param_bar

    with param_bar(f"generating {label}", cfg.num_params()) as (advance, describe):
        generate(cfg, out_dir, seed, on_tensor=lambda _n, k: advance(k))
        describe(f"writing {label}")
