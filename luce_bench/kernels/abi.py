"""What the kernel's C headers declare, read from the headers themselves (never typed twice in Python).

* `small_params()`: the f32 small-parameter blob's offsets, the `LUCE_MK_SP_*` enum of `cuda/luce_mk.h`.
* `debug_flags()`: the `LUCE_MK_DEBUG_*` bits of `luce_mk.h` (timing experiments).
* `lm_screen()`: the LM head's screening copy's row size and rows-per-block limit (`LUCE_MK_LM8_*`).
* `build_options()`: the build options and their defaults, the `#ifndef MK_*` / `#define` pairs of `cuda/mk_config.cuh`.
* `trace_points()`: the per-layer timing-trace points, `enum TracePoint` of `cuda/mk_trace.cuh`.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

ABI_HEADER = "luce_mk.h"
CONFIG_HEADER = "mk_config.cuh"
TRACE_HEADER = "mk_trace.cuh"
_ENUM_ITEM = re.compile(r"^\s*LUCE_MK_(SP|DEBUG|ERR|LM8)_([A-Z0-9_]+)\s*=\s*(-?\d+)", re.M)
_OPTION = re.compile(r"^#ifndef (MK_[A-Z0-9_]+)\s*\n#define \1 (\S+)", re.M)


def _source_dir() -> Path:
    from luce_bench.kernels.build import source_dir

    return source_dir()


@functools.lru_cache(maxsize=4)
def _enum_items(header: Path, kind: str) -> dict[str, int]:
    items = {name: int(value) for k, name, value in _ENUM_ITEM.findall(header.read_text()) if k == kind}
    if not items:
        raise RuntimeError(f"{header}: no LUCE_MK_{kind}_* enum items found")
    return items


def small_params(src: Path | None = None) -> dict[str, int]:
    """{"LN1": 0, "LN2": 1024, ..., "STRIDE": 26784}: f32 offsets inside one layer's block of the small-param blob."""
    return dict(_enum_items((src or _source_dir()) / ABI_HEADER, "SP"))


def error_codes(src: Path | None = None) -> dict[str, int]:
    """{"NO_COOP": -1, ..., "PREFILL_SMEM": -6, ...}: the library's own return codes (CUDA's are positive)."""
    return dict(_enum_items((src or _source_dir()) / ABI_HEADER, "ERR"))


def debug_flags(src: Path | None = None) -> dict[str, int]:
    """{"NO_MATH": 1, "NO_MIXING": 2, "NO_BARRIERS": 4, "NO_MLP_ADDS": 8}."""
    return dict(_enum_items((src or _source_dir()) / ABI_HEADER, "DEBUG"))


def lm_screen(src: Path | None = None) -> dict[str, int]:
    """{"ROW_BYTES": 1040, "MAX_ROWS": 4096}."""
    return dict(_enum_items((src or _source_dir()) / ABI_HEADER, "LM8"))


@functools.lru_cache(maxsize=4)
def _options(header: Path) -> dict[str, str]:
    found = dict(_OPTION.findall(header.read_text()))
    if not found:
        raise RuntimeError(f"{header}: no `#ifndef MK_*` build options found")
    return found


def build_options(src: Path | None = None) -> dict[str, str]:
    """{"MK_SLOT_KB": "32", ...}: every build option the kernel reads, with its default as written."""
    return dict(_options((src or _source_dir()) / CONFIG_HEADER))


_TRACE_ENUM = re.compile(r"enum TracePoint \{(.*?)\};", re.S)
_TRACE_ITEM = re.compile(r"^\s*(TR_[A-Z0-9_]+)\s*=\s*(\d+)", re.M)


def trace_points(src: Path | None = None) -> dict[str, int]:
    """{"TR_X_READY": 0, ..., "TR_L": 12}: point k of layer l is TR_L * l + k in a trace buffer's step row."""
    text = ((src or _source_dir()) / TRACE_HEADER).read_text()
    m = _TRACE_ENUM.search(text)
    if not m:
        raise RuntimeError(f"{TRACE_HEADER}: enum TracePoint not found")
    return {name: int(v) for name, v in _TRACE_ITEM.findall(m.group(1))}
