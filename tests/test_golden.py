"""Golden runs: a fake-GPU `compare` and `sweep` in virtual time give the CSVs recorded in tests/golden/.

Everything that could vary is fixed: the simulated GPU, the `sim` backend, seeded prompts and gaps, a seeded limit
order, and virtual time (`gpu.fake_clock: virtual`: one SimClock drives the GPU model, the sampler, the loop's
clock and sleeps, and the rows' `test_time`). The files were recorded before the pipeline refactor of issue 13, with
the old code's clocks routed through the same SimClock by monkeypatches (commit 8c9b0e9); the refactored pipeline
reproduces them cell for cell, except:
* 95 % CI bounds (`*_ci95_lo`, `*_ci95_hi`): the old code took Student-t quantiles from a table rounded to three
  decimals (4.303 for df = 2), scipy gives the exact one (4.30265); a bound may move by up to 1e-4 of the interval's
  width (plus the CSV's 6-digit rounding).
* standard deviations (`stddev_ts`, `tok_per_j_std`): the old hand formula left rounding noise where every
  repetition has the same value (3.48e-14 tok/s for three equal 246.594); `statistics.stdev` is exact (0). They agree
  within 1e-12 of the mean.
Issue 14 (locked SM clocks) added columns and changed no recorded cell: runs.csv gained `sm_clock_req_mhz`,
`sm_clock_mhz` (empty: these runs lock no clock) and `clock_reasons` ("sw_power_cap" exactly where
`throttled_share` is 1, else empty); summary.csv the same plus `mean_mem_mhz` (the simulated card's one memory clock,
9751); sweet_spot.csv `sm_clock_mhz` and `stock_sm_clock_mhz` (empty). They were inserted into the recorded files,
whose other bytes are unchanged; samples.csv is unchanged.
Issue 15 (depth tests) added `n_depth` after `n_gen` to runs.csv and summary.csv (0: these runs have no depth
tests), inserted the same way.
Session 49 re-recorded them: the sim backend no longer generates the 32 greedy tokens that a real backend records
for the token agreement (a simulation's pseudo tokens agree with nothing), so every later moment of virtual time moved
by those tokens' time, and with it the seeded power and temperature noise of the windows; speeds and plans unchanged.
Session 54 re-recorded the sweep: the idle baseline no longer starts at the settling's last iteration (a 0.25 s
drain, then edges on the counter's ticks: tests/test_idle_baseline.py), so each setting's idle W is the simulated
card's 30.0 W where it read 33.6, 48.7, 38.9 and 31.9 W, net tok/J follows, and every later moment of virtual time
moved by the tick waits (with it the seeded noise of the windows); speeds and plans unchanged.
Session 54 also added runs.csv's `power_cap_pct` and `thermal_pct` (NVML's violation counters over the window): 100
exactly where `throttled_share` is 1, else 0; no other cell moved.
Session 54 then re-recorded both: after each random gap, 0.2 s of unmeasured work (measure.PREROLL_S) precedes the
window, so its start edge's stale tick is load, not the gap; virtual time and the seeded noise moved with it.
Session 55 re-recorded both: a window's `temp_start_c` is its first sample 1 s in (sampler.TEMP_SETTLE_S), past the
die's rebound from the gap before it, so `temp_start_c` and with it `temp-drift` in the verdicts moved; no other cell.
Session 55 then re-recorded the sweep's samples.csv: the sampler reads the enforced limit at every poll (a window's
`limit-mismatch` flag reads it), where it read it once a second, so the `limit_w` of the samples in the second after a
limit change now shows the new limit (300 W where it still read 420); no other cell moved.
Session 55 then added runs.csv's `max_sample_gap_s` after `n_samples` (the window's longest unsampled stretch: 0.1 s,
the sampler's period, in every window here); no other cell moved.
`LUCE_BENCH_UPDATE_GOLDEN=1` rewrites the files (only when a change of the numbers is intended).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app

GOLDEN = Path(__file__).resolve().parent / "golden"
CONFIG = """\
gpu:
  fake_clock: virtual
tests: [pp512, tg32]
reps: 3
warmup_s: 0.5
window_s: 2.0
rep_gap_max_s: 0.4
cooldown:
  max_s: 3.0
  target_delta_c: 1.0
sweep:
  settle_s: 0.5
  idle_s: 1.0
"""
RUNS = {
    "compare": ["compare", "--no-megakernel", "--baselines", "sim", "--fake-gpu"],
    "sweep": ["sweep", "--fake-gpu", "--limits", "420,300,220,150", "--shuffle", "--seed", "5"],
}
FILES = {
    "compare": ("runs.csv", "summary.csv", "samples.csv"),
    "sweep": ("runs.csv", "summary.csv", "samples.csv", "sweet_spot.csv"),
}


@pytest.fixture
def isolated(monkeypatch, tmp_path):
    """A private journal directory and a simulated card with no state file, writable."""
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    for var in ("LUCE_BENCH_FAKE_GPU_STATE", "LUCE_BENCH_READONLY", "LUCE_BENCH_FAKE_GPU_NO_PERMISSION"):
        monkeypatch.delenv(var, raising=False)


def _run(kind: str, tmp_path: Path) -> Path:
    cfg = tmp_path / "golden.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, [*RUNS[kind], "-c", str(cfg), "-o", str(out), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


STD_OF = {"stddev_ts": "avg_ts", "tok_per_j_std": "tok_per_j"}


def _same(column: str, got: str, want: str, row: dict[str, str]) -> bool:
    if got == want:
        return True
    if column in STD_OF and "" not in (got, want):
        return abs(float(got) - float(want)) <= 1e-12 * abs(float(row[STD_OF[column]]))
    if not column.endswith(("_ci95_lo", "_ci95_hi")) or "" in (got, want):
        return False
    stem = column.rsplit("_", 1)[0]
    width = abs(float(row[f"{stem}_hi"]) - float(row[f"{stem}_lo"]))
    return math.isclose(float(got), float(want), rel_tol=1e-5, abs_tol=1e-4 * width)


@pytest.mark.parametrize("kind", ["compare", "sweep"])
def test_golden_csvs(kind, tmp_path, isolated, tiny_model):
    run_dir = _run(kind, tmp_path)
    for name in FILES[kind]:
        golden = GOLDEN / kind / name
        if os.environ.get("LUCE_BENCH_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes((run_dir / name).read_bytes())
        head, rows = _read(run_dir / name)
        want_head, want_rows = _read(golden)
        assert head == want_head, name
        assert len(rows) == len(want_rows), name
        for i, (got, want) in enumerate(zip(rows, want_rows, strict=True)):
            cells = dict(zip(want_head, want, strict=True))
            bad = [c for c, a, b in zip(head, got, want, strict=True) if not _same(c, a, b, cells)]
            assert not bad, f"{name} row {i + 1}: {bad}: {got} != {want}"
