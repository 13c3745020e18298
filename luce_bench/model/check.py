"""Checks of a checkpoint before any run uses it: config.json's fields, and every safetensors file's header.

A broken model directory is refused while the plan is made, with one line naming the file and the problem, before a
run directory exists and before any GPU setting changes. Only headers are read (cheap even for 0.8B):
* config.json: each shape field a positive integer, each float finite, `layer_types` one known type per layer;
* each safetensors file: an 8-byte header length, a JSON header of known dtypes, shapes and data offsets that tile
  the data section exactly (a truncated or padded file fails here);
* the text model's weights (canonical names, model/weights.py) all present with the shapes config.json implies.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError

DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2,
    "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1,
}  # fmt: skip
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
MAX_DIM = 1 << 31
LAYER_TYPES = ("full_attention", "linear_attention")


def check_text_config(raw: dict[str, Any], where: Path) -> None:
    """Refuse config.json values a Qwen3.5 text model cannot have (UserError naming the field)."""
    from luce_bench.model.spec import TextConfig

    cfg = raw["text_config"] if isinstance(raw.get("text_config"), dict) else raw
    for name, f in TextConfig.__dataclass_fields__.items():
        if name not in cfg or name in ("layer_types", "rope_theta", "partial_rotary_factor"):
            continue
        value, kind = cfg[name], type(f.default)
        if kind is bool:
            ok = isinstance(value, bool)
        elif kind is int:
            ok = isinstance(value, int) and not isinstance(value, bool) and 0 < value < MAX_DIM
        else:
            ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
        if not ok:
            raise UserError(f"{where}: {name} = {value!r} is not valid for a Qwen3.5 text model")
    types = cfg.get("layer_types")
    if types is not None and (not isinstance(types, list) or any(t not in LAYER_TYPES for t in types)):
        raise UserError(f"{where}: layer_types must list {' or '.join(LAYER_TYPES)} per layer")


def _header_fail(path: Path, why: str) -> UserError:
    return UserError(f"{path} is not a valid safetensors file: {why}")


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} of one safetensors file, after checking that its data section is exact."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise _header_fail(path, f"{size} bytes, shorter than its 8-byte header length (truncated?)")
            (n,) = struct.unpack("<Q", head)
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                raise _header_fail(path, f"header length {n} does not fit a {size}-byte file (truncated?)")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise _header_fail(path, f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise _header_fail(path, "its header is not a JSON object")
    return _tensors(path, header, size - 8 - n)


def _tensors(path: Path, header: dict[str, Any], data_bytes: int) -> dict[str, tuple[str, tuple[int, ...]]]:
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    spans = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, end) = info["dtype"], tuple(info["shape"]), info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise _header_fail(path, f"tensor {name!r} lacks dtype, shape or data_offsets") from None
        if dtype not in DTYPE_BYTES or not all(isinstance(d, int) and 0 <= d < MAX_DIM for d in shape):
            raise _header_fail(path, f"tensor {name!r} has dtype {dtype!r} / shape {list(shape)}")
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end):
            raise _header_fail(path, f"tensor {name!r} has data offsets {[start, end]}")
        if end - start != math.prod(shape) * DTYPE_BYTES[dtype]:
            raise _header_fail(path, f"tensor {name!r}: {end - start} bytes for shape {list(shape)} in {dtype}")
        spans.append((start, end, name))
        out[name] = (dtype, shape)
    at = 0
    for start, end, name in sorted(spans):
        if start != at:
            raise _header_fail(path, f"tensor {name!r} starts at byte {start}, expected {at}")
        at = end
    if at != data_bytes:
        what = "truncated" if at > data_bytes else "trailing bytes"
        raise _header_fail(path, f"{data_bytes} data bytes where the header describes {at} ({what})")
    return out


def _stored(path: Path) -> Iterator[tuple[str, tuple[int, ...], Path]]:
    """(canonical name, shape, file) of every text-model weight stored in the checkpoint at `path`."""
    from luce_bench.model.weights import canonical_key, safetensors_files

    try:
        files = safetensors_files(path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{path}/model.safetensors.index.json is not a valid shard index ({exc})") from None
    for file in files:
        if not file.is_file():
            raise UserError(f"{path}: the shard index names {file.name}, which is missing")
        for name, (_, shape) in read_header(file).items():
            key = canonical_key(name)
            if key is not None:
                yield key, shape, file


def check_weights(path: Path, cfg: Any) -> None:
    """Refuse a checkpoint whose safetensors are broken or lack a weight (or its shape) that `cfg` needs."""
    from luce_bench.model.synthetic import tensor_plan

    stored = {key: (shape, file) for key, shape, file in _stored(path)}
    missing = []
    for name, shape, _ in tensor_plan(cfg):
        if name not in stored:
            missing.append(name)
        elif tuple(stored[name][0]) != tuple(shape):
            got, file = stored[name]
            raise UserError(f"{file}: {name} has shape {list(got)}; config.json implies {list(shape)}")
    if missing:
        raise UserError(f"{path}: {len(missing)} weights of the text model are missing, e.g. {missing[0]}")
