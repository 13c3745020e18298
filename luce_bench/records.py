"""Typed rows of a run directory and their CSV schema: the columns are the dataclass fields, in order.

`RunRecord` (runs.csv, one row per repetition), `SummaryRow` (summary.csv), `SweetSpot` (sweet_spot.csv) and the
sampler's `Sample` (samples.csv) are written and read through `to_cells` / `from_cells`, so every reader gets typed
values once. Column names follow llama-bench's where they overlap (`model_type`, `model_n_params`, `n_prompt`,
`n_gen`, `n_depth`, `test_time`, `avg_ts`, `stddev_ts`); a depth test's name says its depth too (`tg128@d4096`).
Cells: floats with 6 significant digits, None and NaN empty.

A setting is a power limit (`power_limit_req_w` requested, `power_limit_w` enforced) and/or a locked SM clock
(`sm_clock_req_mhz` requested, `sm_clock_mhz` the supported clock it snapped to and was locked at; the clock the
card actually ran at is `mean_sm_mhz`). `clock_reasons` names the clock-event reasons seen in a window
(`sw_power_cap`: the limit held the clock down; `clock_setting`: the lock did; thermal ones; see gpu/base.py).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import io
import math
import types
import typing
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from luce_bench import quality
from luce_bench.errors import UserError
from luce_bench.files import atomic_write

R = TypeVar("R")


@dataclass(kw_only=True)
class RunRecord:
    """One repetition: one energy window looping one test of one backend under one power setting."""

    test_time: str  # RFC 3339 UTC, when the window closed
    backend: str
    model: str
    model_type: str
    model_n_params: int
    n_prompt: int
    n_gen: int
    n_depth: int = 0  # tokens already in the context (llama-bench -d): prefilled before the window's work, not counted
    test: str
    rep: int
    power_limit_req_w: float | None = None  # None: the limit in force, not set by luce-bench
    power_limit_w: float | None = None  # enforced
    sm_clock_req_mhz: int | None = None  # None: the SM clock not locked by luce-bench
    sm_clock_mhz: int | None = None  # the supported clock the request snapped to, locked (min = max)
    iterations: int
    n_tokens: int
    window_s: float
    compute_s: float
    avg_ts: float  # tokens / window seconds
    timed_ts: float | None = None  # tokens / the backends' own synchronised timings
    energy_j: float | None = None  # NVML counter delta over the window
    tok_per_j: float | None = None
    j_per_tok: float | None = None
    mean_power_w: float | None = None
    idle_power_w: float | None = None
    net_tok_per_j: float | None = None
    sampled_energy_j: float | None = None  # integral of the sampled instant power
    counter_vs_sampled_pct: float | None = None
    n_samples: int | None = None
    max_sample_gap_s: float | None = None  # the window's longest stretch without a sample (the cross-check spans it)
    mean_sm_mhz: float | None = None
    mean_mem_mhz: float | None = None
    temp_start_c: float | None = None  # 1 s into the window (sampler.TEMP_SETTLE_S): past the gap before it
    temp_end_c: float | None = None
    throttled_share: float | None = None
    clock_reasons: str = ""  # clock-event reasons seen in the window, e.g. "sw_power_cap" (GpuIdle left out)
    power_cap_pct: float | None = None  # NVML's violation counter (field 74): % of the window held by the power cap
    thermal_pct: float | None = None  # the same for thermal slowdown (fields 269, 270: software and hardware)
    cpu_energy_j: float | None = None  # RAPL package energy, where readable
    t_start_s: float | None = None  # window edges on the sampler's clock
    t_end_s: float | None = None
    device: str
    gpu_simulated: bool
    valid: bool
    verdict: str
    energy_note: str = ""

    def problems(self) -> list[str]:
        """What makes this row impossible or self-contradictory (a damaged or hand-edited runs.csv); [] if none."""
        out = [
            f"{name} = {value:g} is negative"
            for name in ("avg_ts", "n_tokens", "tok_per_j", "compute_s")  # (energy_j < 0: a counter reset, kept)
            if (value := getattr(self, name)) is not None and value < 0
        ]
        if self.window_s <= 0:
            out.append(f"window_s = {self.window_s:g} is not positive")
        elif not _close(self.avg_ts, self.n_tokens / self.window_s):
            out.append(f"avg_ts = {self.avg_ts:g} is not n_tokens / window_s = {self.n_tokens / self.window_s:.6g}")
        if self.energy_j and self.tok_per_j is not None and not _close(self.tok_per_j, self.n_tokens / self.energy_j):
            out.append(
                f"tok_per_j = {self.tok_per_j:g} is not n_tokens / energy_j = {self.n_tokens / self.energy_j:.6g}"
            )
        if self.valid and self.energy_j and self.energy_j > 0 and self.window_s > 0:  # (the row's W and J/token)
            for name, value, want, how in (
                ("mean_power_w", self.mean_power_w, self.energy_j / self.window_s, "energy_j / window_s"),
                ("j_per_tok", self.j_per_tok, self.energy_j / max(self.n_tokens, 1), "energy_j / n_tokens"),
            ):
                if value is not None and self.n_tokens > 0 and not _close(value, want):
                    out.append(f"{name} = {value:g} is not {how} = {want:.6g}")
        out += quality.verdict_problems(
            self.verdict, self.window_s, self.counter_vs_sampled_pct, self.temp_start_c, self.temp_end_c, self.energy_j
        )
        return out


def _close(a: float, b: float) -> bool:
    """Equal to the 6 significant digits the CSVs keep (1e-4 relative leaves room for the rounding of both)."""
    return abs(a - b) <= 1e-4 * max(abs(a), abs(b), 1e-12)


@dataclass(kw_only=True)
class SummaryRow:
    """Repetitions of one (backend, test, setting): n, mean, std and 95 % CI of tok/s and tok/J."""

    backend: str
    model: str
    test: str
    n_prompt: int
    n_gen: int
    n_depth: int = 0
    power_limit_req_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_req_mhz: int | None = None
    sm_clock_mhz: int | None = None
    n: int
    window_s: float | None = None
    avg_ts: float | None = None
    stddev_ts: float | None = None
    ts_ci95_lo: float | None = None
    ts_ci95_hi: float | None = None
    median_ts: float | None = None
    timed_ts: float | None = None
    tok_per_j: float | None = None
    tok_per_j_std: float | None = None
    tok_per_j_ci95_lo: float | None = None
    tok_per_j_ci95_hi: float | None = None
    j_per_tok: float | None = None
    mean_power_w: float | None = None
    idle_power_w: float | None = None
    net_tok_per_j: float | None = None
    mean_sm_mhz: float | None = None
    mean_mem_mhz: float | None = None
    throttled_share: float | None = None
    clock_reasons: str = ""  # reasons seen in any repetition
    max_counter_vs_sampled_pct: float | None = None
    temp_drift_c: float | None = None
    valid_reps: int
    device: str
    gpu_simulated: bool
    verdict: str

    @property
    def limit_w(self) -> float | None:
        """The enforced limit, else the requested one (None: the limit in force)."""
        return self.power_limit_w if self.power_limit_w is not None else self.power_limit_req_w

    @property
    def is_setting(self) -> bool:
        """Whether luce-bench set this row's GPU state (a sweep's limit and/or clock)."""
        return self.power_limit_req_w is not None or self.sm_clock_mhz is not None

    @property
    def setting(self) -> str:
        """The setting in words: "300 W", "1605 MHz", "300 W, 1605 MHz" ("current" for the state in force)."""
        return setting_text(self.power_limit_req_w, self.sm_clock_mhz)


def setting_text(limit_w: float | None, sm_clock_mhz: float | None, current: str = "current") -> str:
    """A setting in words: "300 W", "1605 MHz" or "300 W, 1605 MHz"; `current` when neither was set."""
    parts = [f"{limit_w:g} W"] if limit_w is not None and math.isfinite(limit_w) else []
    parts += [f"{sm_clock_mhz:g} MHz"] if sm_clock_mhz is not None and math.isfinite(sm_clock_mhz) else []
    return ", ".join(parts) or current


_JSON_ONLY = {"csv": False}


@dataclass(kw_only=True)
class SweetSpot:
    """Per (backend, test) of a sweep: the best tok/J keeping `min_speed` of the reference tok/s (see summary.py).

    The reference ("stock_*") is the run at the card's default limit in a limits-only sweep, the fastest setting
    when SM clocks were swept (`reference` says which).
    """

    backend: str
    test: str
    limit_w: float | None
    enforced_w: float | None
    sm_clock_mhz: int | None = None
    avg_ts: float
    speed_share: float
    tok_per_j: float
    net_tok_per_j: float | None
    mean_power_w: float | None
    power_share: float | None
    stock_limit_w: float | None
    stock_sm_clock_mhz: int | None = None
    stock_ts: float
    stock_tok_per_j: float
    tok_per_j_gain_pct: float | None
    stock_is_default: bool = field(default=True, metadata=_JSON_ONLY)
    # the gain passes a one-sided Welch test at p < 0.05 (summary.gain_is_significant; None: the sweet spot is the
    # reference itself, or a row has one repetition)
    significant: bool | None = field(default=None, metadata=_JSON_ONLY)
    reference: str = field(default="stock", metadata=_JSON_ONLY)  # stock, highest (limit measured) or fastest
    provisional: bool = field(default=False, metadata=_JSON_ONLY)  # the sweep stopped before measuring every setting
    settings: int = field(default=0, metadata=_JSON_ONLY)  # settings measured for this backend and test (0: not known)
    # the sweet spot's windows' mean start temperature minus the reference's (None: not known). Units: °C
    start_temp_diff_c: float | None = field(default=None, metadata=_JSON_ONLY)

    @property
    def setting(self) -> str:
        """The sweet spot's setting in words."""
        return setting_text(self.limit_w, self.sm_clock_mhz)

    @property
    def stock_setting(self) -> str:
        """The reference setting in words."""
        return setting_text(self.stock_limit_w, self.stock_sm_clock_mhz)


# --- CSV codec --------------------------------------------------------------------------------------------------------
@functools.cache
def _schema(cls: type) -> tuple[tuple[str, type, bool, bool], ...]:
    """(column, scalar type, required, nullable) per CSV column of the dataclass `cls`."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if f.metadata.get("csv", True):
            hint = hints[f.name]
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            nullable = isinstance(hint, types.UnionType)
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append((f.name, args[0] if nullable else hint, required, nullable))
    return tuple(out)


def columns(cls: type) -> list[str]:
    """The CSV columns of record type `cls`."""
    return [name for name, *_ in _schema(cls)]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def to_cells(record: Any, names: Sequence[str] | None = None) -> list[str]:
    """One CSV row of `record`: its columns, or `names` (a file's header; a name it lacks gives an empty cell)."""
    return [_cell(getattr(record, name, None)) for name in (columns(type(record)) if names is None else names)]


def _parse(text: str, scalar: type) -> Any:
    if text == "":
        return None
    if scalar is bool:
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected True or False, got {text!r}")
        return text.lower() in ("true", "1")
    value = scalar(text)
    if scalar is float and not math.isfinite(value):
        raise ValueError(f"{text!r} is not a finite number (an unknown value is an empty cell)")
    return value


def from_cells(cls: type[R], cells: dict[str, str]) -> R:
    """A `cls` from one CSV row (a DictReader dict); missing optional columns become None, unknown ones are ignored."""
    values = {}
    for name, scalar, required, nullable in _schema(cls):
        text = cells.get(name)
        if text is None:
            if required:
                raise ValueError(f"missing column {name}")
            continue
        try:
            value = _parse(text, scalar)
        except ValueError as exc:
            raise ValueError(f"column {name}: {exc}") from None
        if value is None and scalar is str:
            value = ""
        elif value is None and not nullable:
            raise ValueError(f"column {name} is empty")
        values[name] = value
    record = cls(**values)
    problems = record.problems() if hasattr(record, "problems") else []
    if problems:
        raise ValueError("; ".join(problems))
    return record


def write_csv(path: Path, cls: type, records: Iterable[Any]) -> None:
    """Replace the CSV at `path` with `records` of type `cls` (atomically)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns(cls))
    w.writerows(to_cells(r) for r in records)
    atomic_write(path, buf.getvalue())


def read_csv(path: Path, cls: type[R]) -> list[R]:
    """The rows of the CSV at `path` (or `path`.gz) as `cls`, [] if neither exists; UserError names a bad line."""
    gz = path.with_name(path.name + ".gz")
    if not path.is_file() and not gz.is_file():
        return []
    src = path if path.is_file() else gz
    try:
        # (utf-8-sig: a file saved by a spreadsheet may start with a byte-order mark, not part of its first column)
        with (
            path.open(newline="", encoding="utf-8-sig")
            if src is path
            else gzip.open(gz, "rt", newline="", encoding="utf-8-sig")
        ) as f:
            reader = csv.DictReader(f)
            missing = [n for n, _, required, _ in _schema(cls) if required and n not in (reader.fieldnames or [])]
            if missing:
                raise UserError(f"{path} is not a luce-bench {path.name} (missing columns: {', '.join(missing)})")
            try:
                return [from_cells(cls, row) for row in reader]
            except (ValueError, TypeError) as exc:
                if isinstance(exc, UnicodeDecodeError):  # (a ValueError too: the file's bytes, not a cell)
                    raise
                raise UserError(f"{path} line {reader.line_num}: {exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{src} is not a luce-bench {path.name}: not UTF-8 text (byte {exc.start})") from None
    except (csv.Error, gzip.BadGzipFile, EOFError, zlib.error) as exc:  # (csv.Error: a field over its size limit)
        raise UserError(f"{src} is not a luce-bench {path.name}: {exc}") from None
