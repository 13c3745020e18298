"""Export a Qwen3.5 text checkpoint (HF layout) to GGUF for llama.cpp, with the `gguf` package.

Conversion rules follow `qwen35.md` §4 (llama.cpp's own `convert_hf_to_gguf.py` for `qwen35`): A_log is stored as
-exp(A_log), every zero-centred RMSNorm weight gets +1 (all norms except the GDN gated output norm), conv1d is squeezed
to [C, K], dt_bias becomes `ssm_dt.bias`. No tokenizer is written: tokenizer model "none" plus the vocab size, so the
file runs on raw token ids.

Files are cached in the user cache as `gguf/<hash16>/model-<type>-<hash16>.gguf` (never in the user's checkpoint
directory; an export an earlier version left in `<model>/gguf/` is still used), where the hash covers the source
safetensors, config.json and the exporter version; they are written to a temporary file and renamed into place, so a
reader never sees a half-written one.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError, WriteError, reason_of
from luce_bench.files import atomic_path
from luce_bench.model.gguf_check import check_gguf
from luce_bench.model.spec import TextConfig

EXPORTER_VERSION = "1"
ARCH = "qwen35"
FTYPES = ("bf16", "f16", "q8_0")
_PROGRESS_MIN_PARAMS = 32 << 20  # show a progress bar only for models bigger than this
_QK8_0, _Q8_0_BLOCK_BYTES = 32, 34


@dataclass(frozen=True)
class _Item:
    """One GGUF tensor: its name, HF source key, transform and whether it is stored as a (possibly quantised) matrix."""

    name: str
    src: str
    transform: str  # "copy", "norm1p", "neg_exp", "squeeze"
    matrix: bool  # True: stored in the export type; False: always F32


def _layer_items(cfg: TextConfig, i: int) -> Iterator[_Item]:
    p, b = f"model.layers.{i}.", f"blk.{i}."
    yield _Item(b + "attn_norm.weight", p + "input_layernorm.weight", "norm1p", False)
    yield _Item(b + "post_attention_norm.weight", p + "post_attention_layernorm.weight", "norm1p", False)
    if cfg.layer_types[i] == "full_attention":
        a = p + "self_attn."
        for g, h in (("attn_q", "q_proj"), ("attn_k", "k_proj"), ("attn_v", "v_proj"), ("attn_output", "o_proj")):
            yield _Item(b + g + ".weight", a + h + ".weight", "copy", True)
        yield _Item(b + "attn_q_norm.weight", a + "q_norm.weight", "norm1p", False)
        yield _Item(b + "attn_k_norm.weight", a + "k_norm.weight", "norm1p", False)
    else:
        a = p + "linear_attn."
        for g, h in (
            ("attn_qkv", "in_proj_qkv"),
            ("attn_gate", "in_proj_z"),
            ("ssm_beta", "in_proj_b"),
            ("ssm_alpha", "in_proj_a"),
        ):
            yield _Item(b + g + ".weight", a + h + ".weight", "copy", True)
        yield _Item(b + "ssm_conv1d.weight", a + "conv1d.weight", "squeeze", False)
        yield _Item(b + "ssm_dt.bias", a + "dt_bias", "copy", False)
        yield _Item(b + "ssm_a", a + "A_log", "neg_exp", False)
        yield _Item(b + "ssm_norm.weight", a + "norm.weight", "copy", False)  # gated norm: plain weight, no +1
        yield _Item(b + "ssm_out.weight", a + "out_proj.weight", "copy", True)
    for g in ("gate", "up", "down"):
        yield _Item(b + f"ffn_{g}.weight", p + f"mlp.{g}_proj.weight", "copy", True)


def tensor_items(cfg: TextConfig, untied_head: bool = False) -> list[_Item]:
    """Every GGUF tensor of the text model, in file order."""
    items = [_Item("token_embd.weight", "model.embed_tokens.weight", "copy", True)]
    for i in range(cfg.num_hidden_layers):
        items.extend(_layer_items(cfg, i))
    items.append(_Item("output_norm.weight", "model.norm.weight", "norm1p", False))
    if untied_head:
        items.append(_Item("output.weight", "lm_head.weight", "copy", True))
    return items


def check_supported(cfg: TextConfig) -> None:
    """Refuse configs this exporter does not convert (they would need llama.cpp's V-head reorder)."""
    if cfg.linear_num_key_heads != cfg.linear_num_value_heads:
        raise UserError("GGUF export: linear_num_value_heads != linear_num_key_heads (V-head reorder) is not supported")
    if cfg.linear_key_head_dim != cfg.linear_value_head_dim:
        raise UserError("GGUF export: llama.cpp's qwen35 needs linear_key_head_dim == linear_value_head_dim")


def _stored_type(item: _Item, shape: tuple[int, ...], ftype: str) -> str:
    """The GGML type name `item` is stored as: F32 for vectors and conv, else the export type (Q8_0 needs rows % 32)."""
    if not item.matrix:
        return "F32"
    if ftype == "q8_0" and shape[-1] % _QK8_0:
        return "F16"  # llama.cpp's converter keeps such tensors unquantised too
    return ftype.upper()


def _nbytes(qtype: str, shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    if qtype == "Q8_0":
        return n // _QK8_0 * _Q8_0_BLOCK_BYTES
    return n * (4 if qtype == "F32" else 2)


def _convert(item: _Item, t: Any, qtype: str) -> Any:
    """The stored bytes of one tensor as a numpy array (uint16 for BF16, uint8 blocks for Q8_0)."""
    import numpy as np
    import torch
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    if qtype == "BF16" and item.transform == "copy":  # exact for a bf16 checkpoint; RNE rounding otherwise
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    x = t.detach().to(torch.float32)
    if item.transform == "norm1p":
        x = x + 1.0
    elif item.transform == "neg_exp":
        x = -torch.exp(x)
    elif item.transform == "squeeze":
        x = x.reshape(x.shape[0], x.shape[-1])
    if qtype == "F32":
        return x.contiguous().numpy()
    if qtype == "F16":
        return x.to(torch.float16).contiguous().numpy()
    if qtype == "BF16":
        return x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().view(np.uint16)
    return quantize(x.contiguous().numpy(), GGMLQuantizationType.Q8_0)


def _shape(item: _Item, t: Any) -> tuple[int, ...]:
    shape = tuple(int(d) for d in t.shape)
    return (shape[0], shape[-1]) if item.transform == "squeeze" else shape


def _mrope_sections(model_dir: Path) -> list[int]:
    try:
        raw = json.loads((model_dir / "config.json").read_text())
    except (OSError, ValueError):
        raw = {}
    text = raw.get("text_config", raw) if isinstance(raw.get("text_config"), dict) else raw
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    sec = list(rope.get("mrope_section") or [11, 11, 10])
    return (sec + [0, 0, 0, 0])[:4]


def _add_metadata(w: Any, cfg: TextConfig, model_dir: Path, ftype: str, source_hash: str, name: str) -> None:
    from gguf import GGUFValueType, LlamaFileType

    file_type = {"bf16": LlamaFileType.MOSTLY_BF16, "f16": LlamaFileType.MOSTLY_F16, "q8_0": LlamaFileType.MOSTLY_Q8_0}
    w.add_name(name)
    w.add_file_type(int(file_type[ftype]))
    w.add_quantization_version(2)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_rope_dimension_count(cfg.rotary_dim)
    w.add_rope_dimension_sections(_mrope_sections(model_dir))
    w.add_ssm_conv_kernel(cfg.linear_conv_kernel_dim)
    w.add_ssm_state_size(cfg.linear_key_head_dim)
    w.add_ssm_group_count(cfg.linear_num_key_heads)
    w.add_ssm_time_step_rank(cfg.linear_num_value_heads)
    w.add_ssm_inner_size(cfg.linear_num_value_heads * cfg.linear_value_head_dim)
    w.add_full_attention_interval(cfg.full_attention_interval)
    default = tuple((i + 1) % cfg.full_attention_interval != 0 for i in range(cfg.num_hidden_layers))
    recurrent = tuple(t != "full_attention" for t in cfg.layer_types)
    if recurrent != default:  # llama.cpp derives the pattern from the interval unless told per layer
        w.add_key_value(f"{ARCH}.attention.recurrent_layers", list(recurrent), GGUFValueType.ARRAY, GGUFValueType.BOOL)
    w.add_vocab_size(cfg.vocab_size)
    w.add_tokenizer_model("none")
    w.add_string("luce_bench.source_hash", source_hash)
    w.add_string("luce_bench.exporter_version", EXPORTER_VERSION)


def source_hash(model_dir: Path) -> str:
    """sha256 over config.json, the safetensors shards' contents and the exporter version (hex)."""
    from luce_bench.model.weights import safetensors_files

    files = [model_dir / "config.json", *safetensors_files(model_dir)]
    stamp = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _hash_files(stamp)


@functools.lru_cache(maxsize=8)
def _hash_files(stamp: tuple[tuple[str, int, int], ...]) -> str:
    """The hash of the files in `stamp` (path, size, mtime): hashed once per process while they are unchanged."""
    h = hashlib.sha256(f"luce-bench-gguf-{EXPORTER_VERSION}\n".encode())
    for f in (Path(p) for p, _, _ in stamp):
        h.update(f"{f.name}\n".encode())
        with open(f, "rb") as fh:
            while chunk := fh.read(16 << 20):
                h.update(chunk)
    return h.hexdigest()


def write_gguf(
    model_dir: Path,
    cfg: TextConfig,
    out: Path,
    ftype: str = "bf16",
    src_hash: str = "",
    on_params: Callable[[int], None] | None = None,
    weights: dict[str, Any] | None = None,
) -> None:
    """Write the GGUF of the checkpoint at `model_dir` to `out` (not atomic; see `ensure_gguf`)."""
    import gguf
    import numpy as np

    from luce_bench.model.weights import load_text_weights

    if ftype not in FTYPES:
        raise UserError(f"GGUF type {ftype!r} unknown; choose one of {', '.join(FTYPES)}")
    check_supported(cfg)
    sd = weights if weights is not None else load_text_weights(model_dir)
    untied = "lm_head.weight" in sd and not cfg.tie_word_embeddings
    items = tensor_items(cfg, untied_head=untied)
    missing = [it.src for it in items if it.src not in sd]
    if missing:
        raise UserError(f"GGUF export: {model_dir} lacks {len(missing)} weights, e.g. {missing[0]}")
    unused = set(sd) - {it.src for it in items} - {"lm_head.weight"}
    if unused:
        raise UserError(f"GGUF export: {len(unused)} weights have no GGUF mapping, e.g. {sorted(unused)[0]}")

    writer = gguf.GGUFWriter(str(out), ARCH)
    _add_metadata(writer, cfg, model_dir, ftype, src_hash, model_dir.name)
    plan = []
    for it in items:  # tensor infos first (shape, type, size); the data streams afterwards, one tensor at a time
        shape = _shape(it, sd[it.src])
        qtype = _stored_type(it, shape, ftype)
        writer.add_tensor_info(
            it.name, shape, np.dtype(np.float32), _nbytes(qtype, shape), raw_dtype=gguf.GGMLQuantizationType[qtype]
        )
        plan.append((it, qtype))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for it, qtype in plan:
        arr = _convert(it, sd[it.src], qtype)
        writer.write_tensor_data(arr)
        if on_params:
            on_params(sd[it.src].numel())
    writer.close()


def gguf_path(model_dir: Path, ftype: str, src_hash: str) -> Path:
    """Where the GGUF of this checkpoint lives: the user cache (the model directory is the user's, never written).

    An export that an earlier version wrote into `<model>/gguf/` is still used where it is.
    """
    from luce_bench.files import cache_dir

    name = f"model-{ftype}-{src_hash[:16]}.gguf"
    local = model_dir / "gguf" / name
    return local if local.is_file() else cache_dir() / "gguf" / src_hash[:16] / name


def cached_gguf(model_dir: Path, ftype: str = "bf16") -> Path | None:
    """The cached export of the checkpoint at `model_dir`, if there is one (nothing is written)."""
    from luce_bench.files import cache_dir

    src = source_hash(Path(model_dir))
    name = f"model-{ftype}-{src[:16]}.gguf"
    for path in (Path(model_dir) / "gguf" / name, cache_dir() / "gguf" / src[:16] / name):
        if path.is_file():
            return path
    return None


def ensure_gguf(model_dir: Path, cfg: TextConfig, ftype: str = "bf16", progress: bool = True) -> Path:
    """Path of the cached GGUF of the checkpoint at `model_dir`, exporting it first if needed.

    The file is written to a temporary name in the same directory and renamed into place when complete.
    """
    if ftype not in FTYPES:
        raise UserError(f"GGUF type {ftype!r} unknown; choose one of {', '.join(FTYPES)}")
    model_dir = Path(model_dir)
    check_supported(cfg)
    src_hash = source_hash(model_dir)
    final = gguf_path(model_dir, ftype, src_hash)
    if final.is_file():
        check_gguf(final)  # a damaged cached export is refused, not handed to llama.cpp
        return final
    try:
        with atomic_path(final) as tmp:
            total = cfg.num_params()  # progress counts source parameters
            if progress and total >= _PROGRESS_MIN_PARAMS:
                from luce_bench.progress import param_bar

                with param_bar(f"exporting GGUF ({ftype}) {final.name}", total) as (advance, _):
                    write_gguf(model_dir, cfg, tmp, ftype, src_hash, on_params=advance)
            else:
                write_gguf(model_dir, cfg, tmp, ftype, src_hash)
    except OSError as exc:  # the cache's disk, its permissions, a file-size limit: exit 4, the file named
        if final.is_file():  # (a concurrent export that finished first: theirs is fine)
            return final
        where = Path(exc.filename) if exc.filename else None
        if where is not None and not (final.is_relative_to(where) or where.is_relative_to(final.parent)):
            raise  # a source weight file that cannot be read: not the export's write
        # (the gguf writer's short write has no strerror: "49152 requested and 8352 written")
        raise WriteError(f"cannot write the GGUF export {final}: {reason_of(exc)}") from exc
    return final
