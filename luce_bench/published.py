"""The committed runs under `results/<gpu>/<date>-<name>/` and what the tables say about them.

`committed(results)` finds and reads them (ad-hoc runs in `results/runs/` are not committed); `newest_per_gpu` picks,
per GPU folder, the run whose last window closed last. The cells of the published tables live here: ratios against
llama.cpp and HF, the share of the bandwidth floor, and the labels a reader needs to trust a row (GPU, driver, power
limit in force, weights, HF's GDN path, kernel version, commit). Where meta.json lacks a fact, the label or cell says
so instead of guessing. The documents themselves are put together in `published_tables.py`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luce_bench.config import TG_ITERATION_BEFORE
from luce_bench.errors import UserError
from luce_bench.records import RunRecord, SummaryRow, read_csv
from luce_bench.results import META, RUNS, SUMMARY, read_meta
from luce_bench.summary import summarize

AD_HOC = "runs"  # results/runs/: ad-hoc runs, ignored by git
BASELINES = (("llamacpp", "llama.cpp"), ("hf", "HF"))
PLOTS = (("tok/s", "tok_s.png"), ("tok/J", "tok_j.png"), ("timeline", "timeline.png"))
RUN_FILES = (RUNS, SUMMARY, META)


@dataclass(frozen=True)
class CommittedRun:
    """One committed run: its folder, meta.json, summary rows and when its last window closed (RFC 3339)."""

    path: Path
    meta: dict[str, Any]
    summary: list[SummaryRow]
    last_time: str

    @property
    def gpu_dir(self) -> str:
        """The GPU folder name, e.g. "nvidia-h200"."""
        return self.path.parent.name

    @property
    def stock_rows(self) -> list[SummaryRow]:
        """Rows measured at the limit in force (no power limit or clock set by luce-bench)."""
        return [r for r in self.summary if not r.is_setting]


def run_dirs(results: Path) -> list[Path]:
    """Folders `results/<gpu>/<run>/` holding any run file, sorted (the ad-hoc `results/runs/` left out)."""
    return sorted(
        d
        for d in results.glob("*/*")
        if d.is_dir() and d.parent.name != AD_HOC and any((d / f).is_file() for f in RUN_FILES)
    )


NO_ROWS = "no finished repetition (a published run holds at least one row)"


def load_run(path: Path) -> CommittedRun:
    """Read one committed run (UserError when a file breaks the schema).

    Its summary is computed from runs.csv, unrounded, as its report.md shows it (summary.csv, rounded to 6 digits,
    must match it: check.py).
    """
    runs = read_csv(path / RUNS, RunRecord)
    if not runs:
        raise UserError(f"{path / RUNS}: {NO_ROWS}")
    return CommittedRun(path, read_meta(path), summarize(runs), max(r.test_time for r in runs))


def committed(results: Path) -> list[CommittedRun]:
    """Every committed run under `results`."""
    return [load_run(d) for d in run_dirs(results)]


def newest_per_gpu(runs: Sequence[CommittedRun]) -> dict[str, CommittedRun]:
    """Per GPU folder (sorted), the run whose last window closed last."""
    out: dict[str, CommittedRun] = {}
    for run in runs:
        if run.gpu_dir not in out or run.last_time > out[run.gpu_dir].last_time:
            out[run.gpu_dir] = run
    return dict(sorted(out.items()))


# --- cells -------------------------------------------------------------------------------------------------------
def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def ratio_text(row: SummaryRow, base: SummaryRow | None, field: str) -> str:
    """`row`'s `field` over the baseline's ("3.20×"); "–" for the baseline itself, "n/a" without data."""
    if base is not None and base.backend == row.backend:
        return "–"
    a, b = getattr(row, field), getattr(base, field) if base is not None else None
    return f"{a / b:.2f}×" if _finite(a) and _finite(b) and b > 0 else "n/a"


def floor_tok_s(row: SummaryRow, meta: dict[str, Any]) -> float | str:
    """The decode bandwidth floor of a tg row in tok/s, or why there is none.

    Every decoded token reads the bf16 weights once, plus the KV cache of its context (`kv_bytes_per_position`, for
    the mean context of the test: depth + (n_gen + 1) / 2 positions); the floor is the GPU's peak memory bandwidth
    (meta.json `gpu.memory_bandwidth_gb_s`) over those bytes.
    """
    if row.n_gen == 0:
        return "– (prefill)"
    bandwidth_gb_s = meta.get("gpu", {}).get("memory_bandwidth_gb_s")
    if not isinstance(bandwidth_gb_s, int | float):
        return "n/a: no bandwidth in meta.json"
    model = meta.get("model", {})
    weights, kv = model.get("bytes"), model.get("kv_bytes_per_position")
    if not isinstance(weights, int | float):
        return "n/a: no model bytes in meta.json"
    if not isinstance(kv, int | float):
        if row.n_depth:
            return "n/a: no KV bytes in meta.json"
        kv = 0  # a few hundred positions add < 0.1 % to 1.5 GB of weights
    per_token = weights + kv * (row.n_depth + (row.n_gen + 1) / 2)
    return bandwidth_gb_s * 1e9 / per_token


def floor_text(row: SummaryRow, meta: dict[str, Any]) -> str:
    """The share of the floor and the floor in tok/s ("58 % of 2,860"), or why there is no floor."""
    floor = floor_tok_s(row, meta)
    if isinstance(floor, str):
        return floor
    return f"{100 * row.avg_ts / floor:.0f} % of {floor:,.0f}" if _finite(row.avg_ts) else "n/a"


# --- labels ------------------------------------------------------------------------------------------------------
def _w(x: Any) -> str:
    return f"{x:g} W" if isinstance(x, int | float) else "n/a"


def gpu_label(meta: dict[str, Any]) -> str:
    """GPU (which card: two cards of one model draw different power for the same work), driver, power limit in force."""
    gpu = meta.get("gpu", {})
    limits = f"default {_w(gpu.get('power_limit_default_w'))}"
    if "power_limit_min_w" in gpu:
        limits += f", range {_w(gpu.get('power_limit_min_w'))}–{_w(gpu.get('power_limit_max_w'))}"
    card = f" (card {gpu['uuid'].removeprefix('GPU-')[:8]})" if gpu.get("uuid") else ""
    return (
        f"{gpu.get('name', 'no GPU')}{card}, driver {gpu.get('driver', 'n/a')} (CUDA {gpu.get('cuda_driver', 'n/a')}), "
        f"power limit in force {_w(gpu.get('power_limit_w'))} ({limits})"
    )


def model_label(meta: dict[str, Any]) -> str:
    """Which weights: synthetic ones with the real shapes, or a real checkpoint."""
    model = meta.get("model", {})
    name = model.get("name", "?")
    if not model.get("synthetic"):
        return f"{name} (checkpoint weights)"
    shapes = "the exact Qwen3.5-0.8B shapes" if name == "synthetic-0.8b" else "small shapes (not the 0.8B)"
    return f"{name}: synthetic bf16 weights (seed {model.get('seed', '?')}) with {shapes}"


def _backend(meta: dict[str, Any], name: str) -> dict[str, Any] | None:
    info = meta.get("backends", {}).get(name)
    return info if isinstance(info, dict) else None


def hf_label(meta: dict[str, Any]) -> str:
    """Which GDN path HF ran (fla kernels or transformers' pure-torch fallbacks) and its versions."""
    hf = _backend(meta, "hf")
    if hf is None or "skipped" in hf:
        return "not run" + (f" ({hf['skipped']})" if hf else "")
    return (
        f"GDN path {hf.get('gdn_path', 'not recorded')}; transformers {hf.get('transformers', '?')}, "
        f"torch {hf.get('torch', '?')}, fla {hf.get('fla') or 'not installed'}"
    )


_BUILD_KEY = re.compile(r"/([0-9a-f]{64})/[^/]+$")


def kernel_label(meta: dict[str, Any]) -> str:
    """The megakernel's version: ABI and a hash of its sources (older runs: the library's build key only)."""
    mk = _backend(meta, "megakernel")
    if mk is None or "skipped" in mk:
        return "not run"
    prefill = mk.get("prefill", {}).get("last_used") if isinstance(mk.get("prefill"), dict) else None
    tail = f", prompt path {prefill}" if prefill else ""
    if "sources_sha256" in mk:
        return f"ABI {mk.get('abi_version', '?')}, sources {mk['sources_sha256'][:12]}{tail}"
    key = _BUILD_KEY.search(str(mk.get("lib", "")))
    build = f" (library build key {key.group(1)[:12]})" if key else ""
    return f"version not recorded in meta.json{build}{tail}"


def llamacpp_label(meta: dict[str, Any]) -> str:
    """llama.cpp's build: commit, CUDA or CPU, GGUF type."""
    lc = _backend(meta, "llamacpp")
    if lc is None or "skipped" in lc:
        return "not run"
    gguf = str(lc.get("gguf_type", "?")).upper()
    return (
        f"{lc.get('build_commit', '?')} (llama-cpp-python {lc.get('llama_cpp_python', '?')}, {lc.get('build', '?')} "
        f"build, {gguf} GGUF, flash attention {'on' if lc.get('flash_attn') else 'off'})"
    )


def commit_label(meta: dict[str, Any]) -> str:
    """luce-bench's commit, and where it came from when that is recorded."""
    commit = meta.get("git_commit") or "not recorded"
    source = meta.get("git_commit_source")
    return f"{commit} (from {source})" if source else str(commit)


def method_label(meta: dict[str, Any]) -> str:
    """Repetitions, window length, and what a tg iteration ran (a run from before 2026-12-06 records nothing)."""
    method = meta.get("method", {})
    tg = method.get("tg_iteration") or TG_ITERATION_BEFORE
    return f"{method.get('reps', '?')} repetitions of ≥ {method.get('window_s', '?')} s windows per row; tg<N>: {tg}"


def labels(meta: dict[str, Any]) -> list[tuple[str, str]]:
    """(what, label) for every fact a published table must state."""
    return [
        ("GPU", gpu_label(meta)),
        ("model", model_label(meta)),
        ("megakernel", kernel_label(meta)),
        ("llama.cpp", llamacpp_label(meta)),
        ("HF", hf_label(meta)),
        ("luce-bench commit", commit_label(meta)),
        ("method", method_label(meta)),
    ]
