"""`luce-bench info`: the GPU as NVML sees it, and which backends can run here (and why not).

Read-only: the GPU is opened with its setters refused; the clock facts (supported SM and memory clocks, the lock in
force where it can be read) come from getters only.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from typing import Any

from rich.markup import escape

from luce_bench.backends import available, get
from luce_bench.provenance import gpu_meta


def nvcc_version() -> str | None:
    """`nvcc --version`'s release line, or None without nvcc."""
    exe = shutil.which("nvcc")
    if not exe:
        return None
    with contextlib.suppress(Exception):
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=20).stdout
        return next((ln.strip() for ln in out.splitlines() if "release" in ln), out.strip()[-60:])
    return None


def _steps(clocks: list[int]) -> str:
    """A supported-clock list (highest first) in words, e.g. "345-1980 MHz, 110 clocks every 15 MHz"."""
    gaps = {a - b for a, b in zip(clocks, clocks[1:], strict=False)}
    every = f" every {gaps.pop()} MHz" if len(gaps) == 1 else ""
    return f"{clocks[-1]}-{clocks[0]} MHz, {len(clocks)} clocks{every}" if len(clocks) > 1 else f"{clocks[0]} MHz"


def clock_facts(gpu: Any) -> dict[str, Any]:
    """Supported SM and memory clocks and the SM clock lock in force, as `info` shows them (getters only)."""
    from luce_bench.gpu.base import GPUError
    from luce_bench.gpu.journal import lock_text

    out: dict[str, Any] = {}
    for key, getter in (
        ("sm_clocks_supported", gpu.supported_sm_clocks_mhz),
        ("mem_clocks_supported", gpu.supported_mem_clocks_mhz),
    ):
        try:
            clocks = getter()
            out[key] = _steps(clocks) if clocks else "none listed"
        except GPUError as exc:
            out[key] = f"n/a ({exc})"
    try:
        out["sm_clock_lock"] = lock_text(gpu.locked_sm_clocks_mhz())
    except GPUError:
        out["sm_clock_lock"] = "not readable through NVML"
    return out


def setup_gaps() -> list[dict[str, str]]:
    """What this machine lacks for the main job, each with the command that fixes it (`make setup`'s decisions).

    The Python running luce-bench stands for the venv: a torch that does not see the GPU, a CPU build of llama.cpp on
    a GPU host, no nvcc or cuBLAS, a driver too old for CUDA torch.
    """
    import dataclasses
    import sys
    from pathlib import Path

    from luce_bench.setup.decide import decide
    from luce_bench.setup.plan import Options
    from luce_bench.setup.probe import Machine, probe_hardware, python_facts

    hw = probe_hardware()
    me = python_facts()
    plan = decide(Machine(hw.gpu, hw.gpu_problem, hw.toolkit, me, me, tools=hw.tools), Options(venv=Path(sys.prefix)))
    gaps = [*plan.gaps, *(s.closes for s in plan.steps if s.closes is not None)]
    return [dataclasses.asdict(g) for g in gaps]


def gather(gpu_index: int = 0, fake_preset: str | None = None) -> dict[str, Any]:
    """Everything `info` shows, as a dict (`fake_preset`: describe that simulated card instead of NVML's)."""
    from luce_bench.errors import UserError
    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.base import GPUError, GPUIndexError

    out: dict[str, Any] = {"nvcc": nvcc_version()}
    try:
        gpu = open_gpu(gpu_index, fake_preset=fake_preset, read_only=True)
    except GPUIndexError as exc:  # the host has GPUs, not this one: bad input, as for the run commands
        raise UserError(str(exc)) from None
    except GPUError as exc:
        out["gpu_error"] = str(exc)
    else:
        try:
            out["gpu"] = gpu_meta(gpu)
            out["gpu"].update(clock_facts(gpu))
            out["gpu"]["simulated"] = fake_preset is not None
        finally:
            gpu.close()
    backends = {}
    for name, reason in available(simulated_gpu=fake_preset is not None).items():
        row: dict[str, Any] = {"available": reason is None, "reason": reason}
        if reason is None:
            with contextlib.suppress(Exception):
                row["details"] = get(name).describe()
        backends[name] = row
    out["backends"] = backends
    with contextlib.suppress(Exception):
        from luce_bench.kernels import build_info

        out["kernel"] = build_info()
    out["missing"] = setup_gaps()
    return out


def show(console: Any, gpu_index: int = 0, fake_preset: str | None = None) -> None:
    """Print `gather()` as rich tables, in words (info_text.py)."""
    from rich.table import Table

    from luce_bench.info_text import details_text, gpu_rows, kernel_rows, missing_line

    data = gather(gpu_index, fake_preset)
    if "gpu" in data:
        g = data["gpu"]
        t = Table(title="GPU" + (" (SIMULATED)" if g.get("simulated") else ""), show_header=False)
        for label, text in gpu_rows(g):
            t.add_row(label, escape(text))
        console.print(t)
    else:
        from luce_bench.tables import styled

        why = f"none usable: {data.get('gpu_error')}. Energy columns will stay empty (use --fake-gpu to exercise the "
        console.print(styled(why + "pipeline).", "GPU:", "yellow"))
    console.print(f"nvcc: {data.get('nvcc') or 'not found (the megakernel cannot be built)'}", markup=False)
    t = Table(title="Backends")
    for col in ("backend", "available", "why not / details"):
        t.add_column(col)
    for name, row in data["backends"].items():
        t.add_row(
            name, "yes" if row["available"] else "no", escape(row["reason"] or details_text(row.get("details") or {}))
        )
    console.print(t)
    if data.get("kernel"):
        t = Table(title="Megakernel build", show_header=False)
        real_gpu = "gpu" in data and not data["gpu"].get("simulated")
        for label, text in kernel_rows(data["kernel"], gpu_visible=real_gpu):
            t.add_row(label, escape(text))
        console.print(t)
    if data["missing"]:
        _show_missing(console, data["missing"])
    else:  # nothing to add, but the backends marked `no` above still cannot run (no GPU, say): no "missing: nothing"
        stuck = [n for n, row in data["backends"].items() if not row["available"] and not get(n).simulated]
        console.print(missing_line(stuck))


def _show_missing(console: Any, missing: list[dict[str, str]]) -> None:
    from rich.table import Table

    t = Table(title="Missing here (what runs instead, and the fix)")
    for col in ("piece", "what it costs", "fix"):
        t.add_column(col)
    for gap in missing:
        t.add_row(*(escape(gap[k]) for k in ("piece", "problem", "fix")))
    console.print(t)
