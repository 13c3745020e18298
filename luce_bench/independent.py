"""`luce-bench report RUN --independent LOG`: every window's energy against an independent reader's log.

The log comes from `scripts/nvml_energy_log.py` (its own process, no luce-bench code): `unix_s,energy_mj,power_mw`
rows. A run's windows are on the sampler's monotonic clock; meta.json's `sampler.origin_unix_s` is the wall-clock time
of its zero, so a window [t_start_s, t_end_s] is [origin + t_start_s, origin + t_end_s] in the log's time. The log's
counter is interpolated linearly at both edges; the difference from the run's `energy_j` is reported per window and
summarised per backend and test. Two readers of one counter disagree only by their edges' timing (a 100 ms poll puts
each edge up to one tick off: about 2 % of a 10 s window at worst, far less on average).
"""

from __future__ import annotations

import bisect
import csv
import gzip
import math
import shutil
import statistics
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.files import atomic_path, atomic_write
from luce_bench.records import RunRecord, setting_text

LOG = "independent_log.csv.gz"  # the reader's log, kept in the run directory (and published with it)
REPORT = "independent.md"
MAX_PLAUSIBLE_W = 5000.0  # one GPU's energy counter, averaged over a log: the largest boards draw ~1,200 W


@dataclass(frozen=True)
class Comparison:
    """One window: the run's energy and the independent log's over the same wall-clock span."""

    backend: str
    test: str
    setting: str
    energy_j: float
    independent_j: float

    @property
    def diff_pct(self) -> float:
        """(independent - run) / run, in %."""
        return (self.independent_j / self.energy_j - 1.0) * 100.0


def read_log(path: Path) -> tuple[list[float], list[float]]:
    """(unix_s, energy_j) columns of a log, in time order (UserError for a file that is not one)."""
    try:
        with gzip.open(path, "rt", newline="") if path.suffix == ".gz" else path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        times = [float(r["unix_s"]) for r in rows]
        energy_j = [float(r["energy_mj"]) / 1000.0 for r in rows]
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except (KeyError, ValueError, TypeError, UnicodeDecodeError, OSError, EOFError, zlib.error, csv.Error):
        raise UserError(f"{path}: not an energy log (unix_s,energy_mj,power_mw rows)") from None
    if not all(math.isfinite(x) for x in (*times, *energy_j)):
        raise UserError(f"{path}: not an energy log (a reading that is not a number)")
    if len(times) < 2 or any(b <= a for a, b in zip(times, times[1:], strict=False)):
        raise UserError(f"{path}: needs at least two readings in time order")
    if back := next((i for i in range(1, len(energy_j)) if energy_j[i] < energy_j[i - 1]), None):
        # a window across the drop would read a negative or short energy: no comparison is worth showing
        raise UserError(
            f"{path} line {back + 2}: the energy counter goes backwards ({energy_j[back] * 1000:.0f} mJ after "
            f"{energy_j[back - 1] * 1000:.0f}): a counter reset or not one counter's log"
        )
    mean_w = (energy_j[-1] - energy_j[0]) / (times[-1] - times[0])
    if mean_w > MAX_PLAUSIBLE_W:
        said = f"{mean_w:,.0f}" if mean_w < 1e9 else f"{mean_w:.2e}"
        raise UserError(
            f"{path}: the counter rises by {said} W on average over the log, more than any one GPU draws "
            f"({MAX_PLAUSIBLE_W:,.0f} W): not one counter's log in mJ"
        )
    return times, energy_j


def _at(times: list[float], values: list[float], t: float) -> float | None:
    """`values` linearly interpolated at time `t`; None outside the log."""
    i = bisect.bisect_right(times, t)
    if i == 0 or i == len(times):
        return None
    t0, t1 = times[i - 1], times[i]
    return values[i - 1] + (values[i] - values[i - 1]) * (t - t0) / (t1 - t0)


def compare(runs: list[RunRecord], meta: dict[str, Any], log: Path) -> tuple[list[Comparison], int]:
    """Windows with energy that the log covers, compared; and how many windows it does not cover."""
    times, energy = read_log(log)
    if not any(r.energy_j is not None and r.energy_j > 0 for r in runs):
        raise UserError("the run measured no GPU energy (no energy counter was read): there is nothing to compare")
    origin = (meta.get("sampler") or {}).get("origin_unix_s")
    if origin is None:
        raise UserError("the run has no wall-clock anchor (meta.json sampler.origin_unix_s): measure it again")
    if meta.get("resumes"):
        raise UserError("a resumed run's windows come from several attempts; the anchor covers only the last")
    out, missing = [], 0
    for r in runs:
        if r.energy_j is None or r.energy_j <= 0 or r.t_start_s is None or r.t_end_s is None:
            continue
        e0, e1 = _at(times, energy, origin + r.t_start_s), _at(times, energy, origin + r.t_end_s)
        if e0 is None or e1 is None:
            missing += 1
            continue
        setting = setting_text(r.power_limit_req_w, r.sm_clock_mhz)
        out.append(Comparison(r.backend, r.test, setting, r.energy_j, e1 - e0))
    if not out:
        raise UserError(f"{log}: the log covers none of the run's windows (another run or machine?)")
    return out, missing


def summary_lines(comparisons: list[Comparison], missing: int) -> list[str]:
    """A markdown table per backend, test and setting: windows, median and largest |difference|; then all windows."""
    groups: dict[tuple[str, str, str], list[float]] = {}
    for c in comparisons:
        groups.setdefault((c.backend, c.test, c.setting), []).append(c.diff_pct)
    lines = [
        "| backend | test | setting | windows | median difference | largest difference |",
        "|---|---|---|---:|---:|---:|",
    ]
    for (backend, test, setting), diffs in groups.items():
        worst = max(diffs, key=abs)
        lines.append(
            f"| {backend} | {test} | {setting} | {len(diffs)} | {statistics.median(diffs):+.2f} % | {worst:+.2f} % |"
        )
    n, median, largest = overall(comparisons)
    lines.append("")
    outside = "1 window lies" if missing == 1 else f"{missing} windows lie"
    lines.append(
        f"All {n} windows: independent reader vs the run's counter, median {median:+.2f} %, "
        f"largest |difference| {largest:.2f} %" + (f"; {outside} outside the log" if missing else "")
    )
    return lines


def overall(comparisons: list[Comparison]) -> tuple[int, float, float]:
    """(windows, median difference %, largest |difference| %) over every window."""
    every = [c.diff_pct for c in comparisons]
    return len(every), statistics.median(every), max(abs(d) for d in every)


SIMULATED_NOTE = (
    "> SIMULATED GPU (--fake-gpu): the run's energy comes from a model, not from hardware; this compares the tool's "
    "bookkeeping with the log, not a card.\n"
)


def _compare_run(run_dir: Path, log: Path) -> tuple[list[Comparison], int, bool]:
    """`compare` of the run in `run_dir` with `log`, and whether the run's GPU was simulated."""
    from luce_bench.results import ran_simulated, read_meta, read_runs

    runs, meta = read_runs(run_dir), read_meta(run_dir)
    return (*compare(runs, meta, log), ran_simulated(meta, runs))


def _document(comparisons: list[Comparison], missing: int, simulated: bool) -> tuple[str, list[str]]:
    """independent.md's text and its summary lines."""
    lines = summary_lines(comparisons, missing)
    head = (
        f"# Energy against an independent reader\n\nEvery window's energy (the run's NVML counter) against `{LOG}`, "
        "taken beside the run by `scripts/nvml_energy_log.py` in its own process (no luce-bench code); "
        "regenerated by `luce-bench report RUN --independent LOG` and checked by `luce-bench report --check`.\n"
    )
    return "\n".join([head, *([SIMULATED_NOTE] if simulated else []), *lines, ""]), lines


def report_text(run_dir: Path) -> tuple[str, list[str]]:
    """independent.md of `run_dir` from its kept log (LOG), and its summary lines."""
    return _document(*_compare_run(run_dir, run_dir / LOG))


def keep(run_dir: Path, log: Path) -> list[str]:
    """Compare `log` with the run in `run_dir`, keep it there (gzipped, as LOG) and write REPORT; the summary lines."""
    if not (run_dir / "runs.csv").is_file():
        raise UserError(f"{run_dir} is not a luce-bench run directory (no runs.csv)")
    found = _compare_run(run_dir, log)  # a log that is not this run's is refused before any write
    kept = run_dir / LOG
    if log.resolve() != kept.resolve():
        with atomic_path(kept) as tmp:
            if log.suffix == ".gz":
                shutil.copyfile(log, tmp)
            else:
                # no file name or time in the gzip header: the same log keeps the same bytes
                with log.open("rb") as src, tmp.open("wb") as raw, gzip.GzipFile("", "wb", fileobj=raw, mtime=0) as out:
                    shutil.copyfileobj(src, out)
    text, lines = _document(*found)
    atomic_write(run_dir / REPORT, text)
    return lines


def agreement(run_dir: Path) -> tuple[int, float, float] | None:
    """`overall` of the run against its kept log (LOG); None when the run has none."""
    if not (run_dir / LOG).is_file():
        return None
    return overall(_compare_run(run_dir, run_dir / LOG)[0])
