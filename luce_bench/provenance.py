"""Where a result came from (measurement.md rule 14): the checkout's commit, package versions, the GPU's facts."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from luce_bench import __version__
from luce_bench.config import TG_ITERATION

if TYPE_CHECKING:
    from luce_bench.backends.base import ModelSpec
    from luce_bench.context import RunContext
    from luce_bench.gpu.base import GPU

PACKAGES = ("torch", "transformers", "llama_cpp_python", "nvidia-ml-py", "gguf")


COMMIT_ENV = "LUCE_BENCH_GIT_COMMIT"


def git_commit() -> str | None:
    """The luce-bench checkout's commit (with -dirty); `LUCE_BENCH_GIT_COMMIT` for copies without .git; else None."""
    return commit_and_source()[0]


def commit_and_source() -> tuple[str | None, str]:
    """(commit, where it came from): LUCE_BENCH_GIT_COMMIT first (a copy of the tree without .git), else git."""
    if os.environ.get(COMMIT_ENV):
        return os.environ[COMMIT_ENV], COMMIT_ENV
    return _describe(), "git describe"


def _describe() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def versions() -> dict[str, Any]:
    """Versions of luce-bench, Python and the installed backend packages."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {"luce_bench": __version__, "python": platform.python_version()}
    for pkg in PACKAGES:
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg.replace("_", "-"))
    return out


def gpu_meta(gpu: GPU) -> dict[str, Any]:
    """Facts of `gpu`; fields that cannot be read are left out."""
    meta: dict[str, Any] = {}
    probes = {
        "name": gpu.name,
        "uuid": gpu.uuid,
        "driver": gpu.driver_version,
        "cuda_driver": gpu.cuda_driver_version,
        "compute_capability": gpu.compute_capability,
        "persistence_mode": gpu.persistence_mode,
        "temperature_c": gpu.temperature_c,
        "clocks_mhz": gpu.clocks_mhz,
    }
    for key, fn in probes.items():
        with contextlib.suppress(Exception):
            meta[key] = fn()
    with contextlib.suppress(Exception):
        lo, hi = gpu.power_limit_constraints_mw()
        meta.update(power_limit_min_w=lo / 1000, power_limit_max_w=hi / 1000)
    with contextlib.suppress(Exception):
        meta["power_limit_default_w"] = gpu.default_power_limit_mw() / 1000
    with contextlib.suppress(Exception):
        meta["power_limit_w"] = gpu.power_limit_mw() / 1000
    with contextlib.suppress(Exception):
        bus_bits, mem_mhz = gpu.memory_bus_width_bits(), max(gpu.supported_mem_clocks_mhz())
        meta.update(
            memory_bus_width_bits=bus_bits,
            memory_clock_max_mhz=mem_mhz,
            memory_bandwidth_gb_s=peak_bandwidth_gb_s(bus_bits, mem_mhz),
        )
    return meta


def peak_bandwidth_gb_s(bus_bits: int, mem_mhz: float) -> float:
    """Peak memory bandwidth: bus width x the top memory clock x 2 transfers per clock. Units: GB/s (1e9 B/s).

    NVML's memory clock is half the data rate on HBM and GDDR6X alike: H100 SXM 5120 bits x 2619 MHz -> 3352 GB/s,
    H200 6144 x 3201 -> 4917, RTX 3090 384 x 9751 -> 936 (the datasheets: 3.35 TB/s, 4.8 TB/s, 936 GB/s).
    """
    return round(bus_bits / 8 * mem_mhz * 1e6 * 2 / 1e9, 1)


def kv_bytes_per_position(model: ModelSpec) -> int:
    """Bytes of KV cache one position adds: bf16 K and V of every full-attention layer. Units: bytes.

    Decode reads them for every cached position on top of the weights (the bandwidth floor of a depth test).
    """
    cfg = model.config
    n_attention = sum(t == "full_attention" for t in cfg.layer_types)
    return n_attention * 2 * cfg.num_key_value_heads * cfg.head_dim * 2


def run_meta(ctx: RunContext, model: ModelSpec) -> dict[str, Any]:
    """meta.json's provenance of a run: host, versions, config, model, GPU, energy source and method."""
    cfg = ctx.cfg
    simulated = ctx.fake_gpu is not None
    n_params = model.config.num_params()
    commit, source = commit_and_source()
    return {
        "luce_bench_version": __version__,
        "git_commit": commit,
        "git_commit_source": source if commit else None,
        "host": platform.node(),
        "platform": platform.platform(),
        "versions": versions(),
        "config": cfg.to_dict(),
        "model": {
            "name": model.name,
            "path": str(model.path),
            "synthetic": model.synthetic,
            "seed": model.seed,
            "n_params": n_params,
            "bytes": n_params * 2,
            "kv_bytes_per_position": kv_bytes_per_position(model),
            "type": "qwen35 bf16",
        },
        "gpu": gpu_meta(ctx.gpu) if ctx.gpu is not None else {},
        "energy": {
            "available": ctx.gpu is not None,
            "simulated": simulated,
            "virtual_time": ctx.virtual_time,
            "reason": ctx.energy_note or ("simulated GPU" if simulated else "NVML energy counter"),
            "cpu_rapl": ctx.rapl is not None,
        },
        "method": {
            "window_s": cfg.window_s,
            "reps": cfg.reps,
            "warmup_s": cfg.warmup_s,
            "sampler_period_s": cfg.sampler.period_s,
            "energy_source": (
                "the simulated GPU's energy model" if simulated else "nvmlDeviceGetTotalEnergyConsumption delta"
            ),
            "power_samples": "the simulated GPU's power model" if simulated else "field 186 (instant)",
            "tg_iteration": TG_ITERATION,
        },
    }
