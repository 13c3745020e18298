"""A run directory: runs.csv and samples.csv grow row by row; meta.json and the derived files are replaced whole.

Rows are appended whole and fsynced as they finish, so an interrupted run keeps every finished repetition and never a
half-written one (appender.py); meta.json, summary.csv and the other derived files are replaced atomically.
A write that fails (a full disk) raises RunDirError: the run stops with its finished rows intact. `RunWriter.reopen`
continues an interrupted run directory (`sweep --resume`).
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from luce_bench.appender import CsvAppender, RunDirError, signals_deferred
from luce_bench.errors import UserError, WriteError, reason_of
from luce_bench.files import atomic_write
from luce_bench.records import RunRecord, read_csv
from luce_bench.sampler import Sample

RUNS, SAMPLES, SUMMARY, META = "runs.csv", "samples.csv", "summary.csv", "meta.json"


def utc_stamp() -> str:
    """Compact UTC timestamp for directory names."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _why(exc: BaseException) -> str:
    """The reason of an OSError, or of the one behind a RunDirError (whose own message names the CSV again)."""
    return reason_of(exc.__cause__ if isinstance(exc, RunDirError) and exc.__cause__ is not None else exc)


class RunWriter:
    """Owns one new run directory: appends rows and samples, merges meta.json."""

    def __init__(self, run_dir: Path, existing: bool = False) -> None:
        """Start runs.csv and samples.csv in the new, empty `run_dir`; `existing`: append to a run's directory."""
        self.dir = run_dir
        self.made: list[Path] = []  # the folders made for a new run directory, deepest first (`discard`)
        self.meta: dict[str, Any] = read_meta(run_dir) if existing else {}
        self.n_runs = 0
        self._runs = CsvAppender(run_dir / RUNS, RunRecord)
        try:
            self._samples = CsvAppender(run_dir / SAMPLES, Sample)
        except BaseException:
            self._runs.close()
            raise

    @classmethod
    def reopen(cls, run_dir: Path) -> RunWriter:
        """Append to the interrupted run directory `run_dir` (a partial last line is cut off first)."""
        try:
            writer = cls(Path(run_dir), existing=True)
        except (OSError, RunDirError) as exc:  # (RunDirError: an empty runs.csv's header could not be written)
            raise WriteError(f"cannot append to {run_dir}: {_why(exc)}") from exc
        writer.n_runs = len(read_runs(writer.dir))  # after the cut
        return writer

    @classmethod
    def create(cls, output_dir: str | Path, name: str) -> RunWriter:
        """A new run directory `<output_dir>/<UTC stamp>-<name>`.

        UserError if `output_dir` is a file; WriteError (exit 4) if the directory or its CSV headers cannot be written
        (a read-only or full disk, no permission), and then no half-made directory is left behind.
        """
        out = Path(output_dir)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out}: exists and is not a directory")
        made = [d for d in (out, *out.parents) if not d.exists()]  # the folders mkdir will make, deepest first
        base = out / f"{utc_stamp()}-{name}"
        path, i = base, 1
        while True:
            try:
                path.mkdir(parents=True, exist_ok=False)
                break
            except OSError as exc:
                if isinstance(exc, FileExistsError) and path.is_dir():  # another run took the name this second
                    i += 1
                    path = base.with_name(f"{base.name}-{i}")
                    continue
                if isinstance(exc, (FileExistsError, NotADirectoryError)):  # a file in --out's path: bad input
                    raise UserError(f"cannot create a run directory under {out}: a file is in its path") from exc
                raise WriteError(f"cannot create a run directory under {out}: {reason_of(exc)}") from exc
        try:
            writer = cls(path)
        except (OSError, RunDirError) as exc:  # (RunDirError: a CSV's header could not be written)
            _discard(path, made)
            raise WriteError(f"cannot start a run directory in {out}: {_why(exc)}") from exc
        writer.made = made
        return writer

    def discard(self) -> None:
        """Remove the new run directory (closed, nothing measured in it) and the folders made for it."""
        self.close()
        _discard(self.dir, self.made)

    def add_run(self, record: RunRecord) -> None:
        """Append one repetition's row to runs.csv (a signal lands before or after the row and its count)."""
        with signals_deferred():
            self._runs.add([record])
            self.n_runs += 1

    def add_samples(self, samples: Sequence[Sample]) -> None:
        """Append sampler readings to samples.csv."""
        self._samples.add(samples)

    def write_meta(self, meta: dict[str, Any]) -> None:
        """Merge `meta` into meta.json (atomically); RunDirError if it cannot be written."""
        self.meta.update(meta)
        try:
            atomic_write(self.dir / META, json.dumps(self.meta, indent=2, default=str) + "\n")
        except OSError as exc:
            raise RunDirError(f"cannot write {self.dir / META}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the CSV files."""
        self._runs.close()
        self._samples.close()


def _discard(run_dir: Path, made: Sequence[Path]) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)  # made by this run: it holds only what the run began
    for folder in made:  # and the folders made for it (each left where something else appeared in it)
        with contextlib.suppress(OSError):
            folder.rmdir()


def read_runs(run_dir: Path) -> list[RunRecord]:
    """The repetitions of `run_dir`; UserError if it is not a run directory, or if a repetition is there twice."""
    if not (run_dir / RUNS).is_file():
        raise UserError(f"{run_dir} is not a luce-bench run directory (no runs.csv)")
    rows = read_csv(run_dir / RUNS, RunRecord)
    repeated = repeated_row(rows)
    if repeated:
        raise UserError(f"{run_dir / RUNS}: {repeated}")
    return rows


def repeated_row(rows: Sequence[RunRecord]) -> str | None:
    """Where a repetition (backend, test, setting, rep) is in `rows` twice, or None.

    A run writes each once, so a second one is a copy (an edit, a merge of two files): a mean would count it twice.
    """
    seen: dict[tuple[Any, ...], int] = {}
    for line, r in enumerate(rows, start=2):
        limit_mw = round((r.power_limit_req_w or 0.0) * 1000.0)
        key = (r.backend, r.test, limit_mw, r.sm_clock_mhz or 0, r.rep)
        if key in seen:
            where = f"{r.power_limit_req_w:g} W" if r.power_limit_req_w is not None else "the limit in force"
            clock = f", SM clock {r.sm_clock_mhz} MHz" if r.sm_clock_mhz else ""
            return (
                f"line {line} repeats line {seen[key]} ({r.backend} {r.test} at {where}{clock}, repetition {r.rep}): "
                "a run has one row per repetition"
            )
        seen[key] = line
    return None


def read_samples(run_dir: Path) -> list[Sample]:
    """The sampler timeline of `run_dir` (empty without samples.csv)."""
    return read_csv(run_dir / SAMPLES, Sample)


def read_meta(run_dir: Path) -> dict[str, Any]:
    """meta.json of `run_dir` ({} if missing); UserError if it is not valid JSON."""
    path = run_dir / META
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (not UTF-8 text, byte {exc.start})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path} is not a luce-bench meta.json (expected an object)")
    return meta


def ran_simulated(meta: dict[str, Any], runs: Sequence[RunRecord] = ()) -> bool:
    """Whether a run measured the simulated GPU (--fake-gpu): its meta.json says so, or any of its rows."""
    return bool((meta.get("energy") or {}).get("simulated")) or any(r.gpu_simulated for r in runs)
