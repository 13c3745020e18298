"""Check a GGUF file's structure without loading it: header, metadata, tensor table, and that the data is all there.

llama.cpp given a truncated or foreign file fails deep inside a load (or worse); this reads only the header and tensor
table (GGUF v2/v3: magic, version, counts, key/values, tensor infos, alignment) and checks that the file is long
enough for every tensor's data. A cached export that fails is refused while the plan is made, with one line.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import BinaryIO

from luce_bench.errors import UserError

MAGIC = b"GGUF"
MAX_COUNT = 1 << 20  # tensors or key/values: a 0.8B model has a few hundred
# GGUF value types -> struct format of a scalar (8: string, 9: array)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
# ggml tensor types this project writes -> (elements per block, bytes per block); others come from the gguf package
_BLOCKS = {0: (1, 4), 1: (1, 2), 30: (1, 2), 8: (32, 34)}


class _Bad(Exception):
    pass


def _read(f: BinaryIO, fmt: str) -> int | float:
    size = struct.calcsize("<" + fmt)
    data = f.read(size)
    if len(data) < size:
        raise _Bad("ends inside its header (truncated)")
    return struct.unpack("<" + fmt, data)[0]


def _string(f: BinaryIO, file_size: int) -> str:
    n = int(_read(f, "Q"))
    if n > file_size:
        raise _Bad(f"a string of {n} bytes in a {file_size}-byte file")
    data = f.read(n)
    if len(data) < n:
        raise _Bad("ends inside its header (truncated)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise _Bad("a metadata string that is not UTF-8") from None


def _skip_value(f: BinaryIO, kind: int, file_size: int) -> int | float | str | None:
    if kind in _SCALARS:
        return _read(f, _SCALARS[kind])
    if kind == 8:
        return _string(f, file_size)
    if kind == 9:
        item, n = int(_read(f, "I")), int(_read(f, "Q"))
        if n > file_size:
            raise _Bad(f"an array of {n} items in a {file_size}-byte file")
        for _ in range(n):
            _skip_value(f, item, file_size)
        return None
    raise _Bad(f"unknown metadata value type {kind}")


def _block(kind: int) -> tuple[int, int]:
    if kind in _BLOCKS:
        return _BLOCKS[kind]
    try:
        import gguf

        return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
    except (ImportError, ValueError, KeyError):
        raise _Bad(f"unknown tensor type {kind}") from None


def _scan(f: BinaryIO, file_size: int) -> int:
    """The number of bytes the file must have; _Bad when its structure is wrong."""
    if f.read(4) != MAGIC:
        raise _Bad("no GGUF magic")
    version = _read(f, "I")
    if version not in (2, 3):
        raise _Bad(f"GGUF version {version} (2 or 3 expected)")
    n_tensors, n_kv = int(_read(f, "Q")), int(_read(f, "Q"))
    if n_tensors > MAX_COUNT or n_kv > MAX_COUNT:
        raise _Bad(f"{n_tensors} tensors and {n_kv} key/values")
    alignment = 32
    for _ in range(n_kv):
        key, kind = _string(f, file_size), int(_read(f, "I"))
        value = _skip_value(f, kind, file_size)
        if key == "general.alignment" and isinstance(value, int) and value > 0:
            alignment = value
    end = 0
    for _ in range(n_tensors):
        _string(f, file_size)
        n_dims = int(_read(f, "I"))
        if n_dims > 8:
            raise _Bad(f"a tensor of {n_dims} dimensions")
        count = 1
        for _ in range(n_dims):
            count *= int(_read(f, "Q"))
        per_block, block_bytes = _block(int(_read(f, "I")))
        offset = int(_read(f, "Q"))
        end = max(end, offset + -(-count // per_block) * block_bytes)
    data_start = -(-f.tell() // alignment) * alignment
    return data_start + end


def check_gguf(path: Path) -> None:
    """Refuse a GGUF file that is truncated, foreign or malformed (UserError naming the file and the problem)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            need = _scan(f, size)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except _Bad as exc:
        raise UserError(f"{path} is not a valid GGUF file: {exc}; delete it (luce-bench exports it again)") from None
    if size < need:
        raise UserError(f"{path} is truncated: {size} bytes, its tensors need {need}; delete it to export it again")
