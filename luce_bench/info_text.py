"""`luce-bench info`'s facts as readable text: labelled rows, units, yes/no, and no raw Python values (None, (9, 0))."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def value_text(value: Any) -> str:
    """One value in words: None -> "none", True -> "yes", (9, 0) -> "9, 0", {"A": 1} -> "A=1", 700.0 -> "700"."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple | list):
        return ", ".join(value_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}={value_text(v)}" for k, v in value.items())
    return str(value)


def _watts(v: Any) -> str:
    return f"{v:g} W"


def _clocks(v: Any) -> str:
    sm_mhz, mem_mhz = v
    return f"SM {sm_mhz} MHz, memory {mem_mhz} MHz"


# gpu_meta key -> (label, text); keys a GPU does not report are left out
GPU_ROWS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "name": ("name", str),
    "uuid": ("uuid", str),
    "driver": ("driver", str),
    "cuda_driver": ("CUDA (driver)", str),
    "compute_capability": ("compute capability", lambda v: f"{v[0]}.{v[1]}"),
    "persistence_mode": ("persistence mode", lambda v: "on" if v else "off"),
    "power_limit_w": ("power limit", _watts),
    "power_limit_default_w": ("power limit default", _watts),
    "power_limit_min_w": ("power limit min", _watts),
    "power_limit_max_w": ("power limit max", _watts),
    "clocks_mhz": ("clocks now", _clocks),
    "sm_clocks_supported": ("supported SM clocks", str),
    "mem_clocks_supported": ("supported memory clocks", str),
    "sm_clock_lock": ("SM clock lock", str),
    "temperature_c": ("temperature", lambda v: f"{v:g} °C"),
}


def gpu_rows(gpu: dict[str, Any]) -> list[tuple[str, str]]:
    """The GPU table: (label, text) per fact, e.g. ("compute capability", "9.0"), ("power limit max", "700 W")."""
    return [(label, text(gpu[key])) for key, (label, text) in GPU_ROWS.items() if key in gpu]


def _kernel_line(k: dict[str, Any]) -> str:
    return (
        f"{k['function']} ({k['arch']}): {k['registers']} registers, {k['stack_bytes']} B stack, "
        f"{k['spill_stores']} B spill stores, {k['spill_loads']} B spill loads"
    )


def _arch_text(kernel: dict[str, Any], gpu_visible: bool) -> str:
    if kernel.get("arch"):
        return str(kernel["arch"])
    if kernel.get("nvcc") is None:
        return "not checked (no nvcc)"
    return "none (see error)" if gpu_visible else "none (no GPU)"


def error_text(error: str) -> str:
    """A kernel build error as `info` shows it: the hint at `--arch`, which `info` lacks, names the command with it."""
    return re.sub(r"pass --arch \(e\.g\. (\w+)\)", r"build for one with `luce-bench kernel build --arch \1`", error)


def kernel_rows(kernel: dict[str, Any], gpu_visible: bool) -> list[tuple[str, str]]:
    """The megakernel build table: ("arch", "none (no GPU)"), ("built", "no"), one line per compiled kernel."""
    rows = []
    for key, value in kernel.items():
        if key == "arch":
            text = _arch_text(kernel, gpu_visible)
        elif key == "nvcc":
            text = value or "not found"
        elif key == "cache":
            text = value or "none (no arch to build for)"
        elif key == "kernels":
            text = "\n".join(_kernel_line(k) for k in value)
        elif key == "error":
            text = error_text(str(value))
        else:
            text = value_text(value)
        rows.append((key, text))
    return rows


def details_text(details: dict[str, Any]) -> str:
    """A backend's details in one cell: "build=cpu, gpu_offload=no, build_recipe=none"."""
    return ", ".join(f"{k}={value_text(v)}" for k, v in details.items())


def missing_line(unavailable: list[str]) -> str:
    """The line where `make setup` has nothing to add; `unavailable`: backends that still cannot run here."""
    if not unavailable:
        return "missing: nothing (`make setup` has nothing to add here)"
    return (
        f"missing: nothing `make setup` can add; {', '.join(unavailable)} cannot run on this machine "
        "(the reasons are in the table above)"
    )
