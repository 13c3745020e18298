"""Run directories: runs.csv (one row per repetition), samples.csv, summary.csv, meta.json.

Rows are appended and flushed as they finish, so an interrupted run keeps every finished repetition; summary.csv and
meta.json are replaced atomically (temp file + rename), never left half-written. Column names follow llama-bench's
where they overlap (`model_type`, `model_n_params`, `n_prompt`, `n_gen`, `test_time`, `avg_ts`, `stddev_ts`).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from luce_bench.stats import describe, median
from luce_bench.stats import to_float as _num

RUN_COLUMNS = [
    "test_time", "backend", "model", "model_type", "model_n_params", "n_prompt", "n_gen", "test", "rep",
    "power_limit_req_w", "power_limit_w", "iterations", "n_tokens", "window_s", "compute_s", "avg_ts", "timed_ts",
    "energy_j", "tok_per_j", "j_per_tok", "mean_power_w", "idle_power_w", "net_tok_per_j",
    "sampled_energy_j", "counter_vs_sampled_pct", "n_samples", "mean_sm_mhz", "mean_mem_mhz",
    "temp_start_c", "temp_end_c", "throttled_share", "cpu_energy_j", "t_start_s", "t_end_s",
    "device", "gpu_simulated", "valid", "verdict", "energy_note",
]
SAMPLE_COLUMNS = ["t_s", "power_w", "avg_power_w", "sm_mhz", "mem_mhz", "temp_c", "reasons", "energy_mj", "limit_w"]
SUMMARY_COLUMNS = [
    "backend", "model", "test", "n_prompt", "n_gen", "power_limit_req_w", "power_limit_w", "n", "window_s", "avg_ts",
    "stddev_ts",
    "ts_ci95_lo", "ts_ci95_hi", "median_ts", "timed_ts", "tok_per_j", "tok_per_j_std", "tok_per_j_ci95_lo",
    "tok_per_j_ci95_hi", "j_per_tok", "mean_power_w", "idle_power_w", "net_tok_per_j", "mean_sm_mhz", "throttled_share",
    "max_counter_vs_sampled_pct", "temp_drift_c", "valid_reps", "device", "gpu_simulated", "verdict",
]


def utc_stamp() -> str:
    """Compact UTC timestamp for directory names."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def rfc3339() -> str:
    """RFC 3339 UTC time, as llama-bench's `test_time`."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` through a temp file in the same directory and an atomic rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(v: Any) -> Any:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def write_csv_atomic(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    """Replace the CSV at `path` with `rows` (atomically)."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


class _Appender:
    """A CSV that gains one flushed row at a time."""

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.columns = list(columns)
        new = not path.exists()
        self._f = path.open("a", newline="")
        self._w = csv.DictWriter(self._f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        if new:
            self._w.writeheader()
            self._f.flush()

    def add(self, rows: Iterable[dict[str, Any]]) -> None:
        for r in rows:
            self._w.writerow({k: _fmt(r.get(k)) for k in self.columns})
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()


class RunWriter:
    """Owns one run directory; `add_run`/`add_samples` append, `write_summary`/`write_meta` replace."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=False)
        self.runs: list[dict[str, Any]] = []
        self._runs = _Appender(run_dir / "runs.csv", RUN_COLUMNS)
        self._samples = _Appender(run_dir / "samples.csv", SAMPLE_COLUMNS)
        self.meta: dict[str, Any] = {}

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunWriter:
        """A new run directory `<output_dir>/<UTC stamp>-<name>`."""
        base = Path(output_dir) / f"{utc_stamp()}-{name}"
        path, i = base, 1
        while path.exists():
            i += 1
            path = base.with_name(f"{base.name}-{i}")
        return cls(path)

    def add_run(self, row: dict[str, Any]) -> None:
        """Append one repetition's row to runs.csv."""
        self.runs.append(row)
        self._runs.add([row])

    def add_samples(self, samples: Iterable[Any]) -> None:
        """Append sampler readings (dataclasses or dicts) to samples.csv."""
        rows = [s if isinstance(s, dict) else {k: getattr(s, k, None) for k in SAMPLE_COLUMNS} for s in samples]
        if rows:
            self._samples.add(rows)

    def write_summary(self, extra_rows: Sequence[dict[str, Any]] = ()) -> list[dict[str, Any]]:
        """(Re)write summary.csv from the runs so far; returns the summary rows."""
        rows = summarize(self.runs) + list(extra_rows)
        write_csv_atomic(self.dir / "summary.csv", SUMMARY_COLUMNS, rows)
        return rows

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Merge `meta` into meta.json (atomically)."""
        self.meta.update(meta)
        atomic_write_text(self.dir / "meta.json", json.dumps(self.meta, indent=2, default=str) + "\n")

    def close(self) -> None:
        self._runs.close()
        self._samples.close()




def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (backend, test, requested power limit), in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in runs:
        key = (str(r.get("backend")), str(r.get("test")), str(r.get("power_limit_req_w") or ""))
        groups.setdefault(key, []).append(r)
    out = []
    for (_backend, _test, _limit), rs in groups.items():
        valid = [r for r in rs if str(r.get("valid")).lower() in ("true", "1")]
        ts = describe([_num(r.get("avg_ts")) for r in rs])
        tpj = describe([_num(r.get("tok_per_j")) for r in valid])
        energy = sum(_num(r.get("energy_j")) for r in valid)
        tokens = sum(_num(r.get("n_tokens")) for r in valid)
        drift = [abs(_num(r.get("temp_end_c")) - _num(r.get("temp_start_c"))) for r in rs]
        flags = sorted({f for r in rs for f in str(r.get("verdict") or "").split(";") if f and f != "ok"})
        first = rs[0]
        out.append({
            "backend": first.get("backend"), "model": first.get("model"), "test": first.get("test"),
            "n_prompt": first.get("n_prompt"), "n_gen": first.get("n_gen"),
            "power_limit_req_w": first.get("power_limit_req_w"), "power_limit_w": first.get("power_limit_w"),
            "n": ts.n, "window_s": describe([_num(r.get("window_s")) for r in rs]).mean, "avg_ts": ts.mean, "stddev_ts": ts.std, "ts_ci95_lo": ts.ci95_lo, "ts_ci95_hi": ts.ci95_hi,
            "median_ts": median([_num(r.get("avg_ts")) for r in rs]),
            "timed_ts": describe([_num(r.get("timed_ts")) for r in rs]).mean,
            "tok_per_j": tpj.mean, "tok_per_j_std": tpj.std, "tok_per_j_ci95_lo": tpj.ci95_lo,
            "tok_per_j_ci95_hi": tpj.ci95_hi, "j_per_tok": energy / tokens if tokens > 0 and valid else math.nan,
            "mean_power_w": describe([_num(r.get("mean_power_w")) for r in valid]).mean,
            "idle_power_w": describe([_num(r.get("idle_power_w")) for r in rs]).mean,
            "net_tok_per_j": describe([_num(r.get("net_tok_per_j")) for r in valid]).mean,
            "mean_sm_mhz": describe([_num(r.get("mean_sm_mhz")) for r in rs]).mean,
            "throttled_share": describe([_num(r.get("throttled_share")) for r in rs]).mean,
            "max_counter_vs_sampled_pct": max((abs(_num(r.get("counter_vs_sampled_pct"))) for r in rs
                                               if math.isfinite(_num(r.get("counter_vs_sampled_pct")))), default=math.nan),
            "temp_drift_c": max((d for d in drift if math.isfinite(d)), default=math.nan),
            "valid_reps": len(valid), "device": first.get("device"), "gpu_simulated": first.get("gpu_simulated"),
            "verdict": ";".join(flags) if flags else ("ok" if valid else "no-energy"),
        })
    return out


def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV as dicts (empty list if the file is missing)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))
