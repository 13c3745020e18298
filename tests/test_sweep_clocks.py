"""`luce-bench sweep --clocks` (alone and as a grid with --limits) on the simulated GPU, end to end through the CLI.

The runs use virtual time (`gpu.fake_clock: virtual`), so every number is the FakeGPU model's (gpu/fake_model.py) and
the same every time. Expected sweet spots follow from that model on the rtx3090 preset (idle 30 W, decode 330 W at
1950 MHz, alpha 2.5, knee 0.8; sim backend: decode 70 % memory-bound, prefill 20 %):
* tg (decode): 1800 MHz keeps 1 / (0.7 + 0.3 * 1950 / 1800) = 97.6 % of the top speed at 276 W instead of 330 W;
  1200 MHz keeps 84 %; a 220 W limit holds the clock at ~1624 MHz, 94.3 %. So within 95 % of the fastest setting
  (420 W, 1950 MHz) the best tok/J is 420 W, 1800 MHz.
* pp (prefill): 1800 MHz keeps 1 / (0.2 + 0.8 * 1950 / 1800) = 93.8 %, below 95 %: the fastest setting itself wins.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.gpu import open_gpu
from luce_bench.gpu.journal import list_journals

VIRTUAL = """\
gpu:
  fake_clock: virtual
backends: [sim]
tests: [pp64, tg16]
reps: 2
warmup_s: 0.2
window_s: 1.0
rep_gap_max_s: 0.2
cooldown:
  max_s: 1.0
sweep:
  settle_s: 0.2
  idle_s: 0.5
"""


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    monkeypatch.setenv("LUCE_BENCH_READONLY", "0")  # set, so monkeypatch restores it after --read-only
    for var in ("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "LUCE_BENCH_FAKE_GPU_NO_CLOCK_LOCKS"):
        monkeypatch.setenv(var, "0")
    (tmp_path / "virtual.yaml").write_text(VIRTUAL)
    return tmp_path


def _sweep(env: Path, *args: str, config: str = "virtual.yaml"):
    cli = ["sweep", "--fake-gpu", "--model", "tiny", "-c", str(env / config), "-o", str(env / "runs"), *args]
    result = CliRunner().invoke(app, cli)
    runs = sorted((env / "runs").glob("*")) if (env / "runs").exists() else []
    return result, runs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _card():
    return open_gpu(fake_preset="rtx3090", read_only=True)


def _png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def _untouched(result, runs) -> None:
    """Bad input: one line, exit 2, no run directory, no journal, no setter call on the card."""
    assert result.exit_code == 2, result.output
    assert result.output.count("error:") == 1 and "Traceback" not in result.output
    assert runs == [] and list_journals() == [] and _card().persisted_set_calls() == []


def test_grid_sweep_rows_sweet_spot_plots_and_restore(env):
    result, runs = _sweep(env, "--limits", "420,220", "--clocks", "1950,1800,60%")
    assert result.exit_code == 0, result.output
    (run,) = runs
    summary = _rows(run / "summary.csv")
    cells = {(r["power_limit_req_w"], r["sm_clock_req_mhz"], r["sm_clock_mhz"]) for r in summary}
    # 60 % of 1950 MHz = 1170 MHz, a supported clock; 1800 MHz too
    assert cells == {(w, f, f) for w in ("420", "220") for f in ("1950", "1800", "1170")}
    assert len(summary) == 6 * 2 and len(_rows(run / "runs.csv")) == 6 * 2 * 2
    for r in summary:
        lock, limit = float(r["sm_clock_mhz"]), float(r["power_limit_req_w"])
        assert float(r["power_limit_w"]) == limit and r["mean_mem_mhz"] == "9751"
        if limit == 220 and lock > 1624:  # the limit holds the clock below the lock
            assert float(r["mean_sm_mhz"]) < lock and r["clock_reasons"] == "sw_power_cap"
        elif lock < 1950:  # the lock holds it
            assert float(r["mean_sm_mhz"]) == lock and r["clock_reasons"] == "clock_setting"
    spots = {s["test"]: s for s in _rows(run / "sweet_spot.csv")}
    for test, rows in ((t, [r for r in summary if r["test"] == t]) for t in ("pp64", "tg16")):
        fastest = max(rows, key=lambda r: float(r["avg_ts"]))
        keep = [r for r in rows if float(r["avg_ts"]) >= 0.95 * float(fastest["avg_ts"])]
        best = max(keep, key=lambda r: float(r["tok_per_j"]))
        spot = spots[test]
        assert (spot["limit_w"], spot["sm_clock_mhz"]) == (best["power_limit_req_w"], best["sm_clock_mhz"])
        assert (spot["stock_limit_w"], spot["stock_sm_clock_mhz"]) == ("420", "1950")
    assert (spots["tg16"]["limit_w"], spots["tg16"]["sm_clock_mhz"]) == ("420", "1800")  # see the module docstring
    assert (spots["pp64"]["limit_w"], spots["pp64"]["sm_clock_mhz"]) == ("420", "1950")
    assert float(spots["tg16"]["tok_per_j_gain_pct"]) > 10
    for name in (
        "sweep_pareto_tok_j.png",
        "sweep_heatmap.png",
        "sweep_tok_s.png",
        "sweep_tok_j.png",
        "sweep_pareto.png",
    ):
        assert _png(run / name), name
    report = (run / "report.md").read_text()
    assert "## Power-limit x SM-clock sweep (grid)" in report and "![sweep_heatmap](sweep_heatmap.png)" in report
    assert "sweet spot 420 W, 1800 MHz" in report and "vs the fastest setting, 420 W, 1950 MHz" in report
    assert "| backend | test | limit | SM clock | t/s |" in report and "| sim | tg16 | 420 W | 1800 MHz |" in report
    meta = json.loads((run / "meta.json").read_text())
    assert meta["sweep"]["clocks_locked_mhz"] == [1950, 1800, 1170] and meta["sweep"]["grid"] is True
    assert meta["sweep"]["original_sm_lock_mhz"] is None
    card = _card()
    assert card.power_limit_mw() == 420_000 and card.locked_sm_clocks_mhz() is None
    assert "power limit restored to 420 W" in result.output and "SM clocks restored (unlocked)" in result.output
    assert list_journals() == []


def test_clocks_alone_run_at_the_limit_in_force_and_snap(env):
    result, runs = _sweep(env, "--clocks", "1600,1200")  # the config's limits (defaults) are not swept
    assert result.exit_code == 0, result.output
    summary = _rows(runs[0] / "summary.csv")
    assert {(r["power_limit_req_w"], r["power_limit_w"]) for r in summary} == {("", "420")}
    assert {(r["sm_clock_req_mhz"], r["sm_clock_mhz"]) for r in summary} == {("1600", "1605"), ("1200", "1200")}
    said = " ".join(result.output.split())  # the console wraps lines
    assert "SM clock requested 1600 MHz, locked 1605 MHz (snapped to a supported clock)" in said
    assert "## SM-clock sweep" in (runs[0] / "report.md").read_text()
    assert not (runs[0] / "sweep_heatmap.png").exists()  # one axis: no grid to map
    assert _png(runs[0] / "sweep_pareto_tok_j.png")
    # a heatmap of an earlier render (the grid since cut to one axis) is not left to show rows runs.csv lacks
    (runs[0] / "sweep_heatmap.png").write_bytes((runs[0] / "sweep_pareto_tok_j.png").read_bytes())
    assert CliRunner().invoke(app, ["report", str(runs[0])]).exit_code == 0
    assert not (runs[0] / "sweep_heatmap.png").exists() and _png(runs[0] / "sweep_pareto_tok_j.png")
    calls = _card().persisted_set_calls()
    assert [c[1] for c in calls if c[0] == "sm_lock_mhz"] == [[1605, 1605], [1200, 1200], None]  # unlocked at the end
    assert [c for c in calls if c[0] == "power_limit_mw"] == []
    assert "SM clocks restored (unlocked)" in said and "power limit restored" not in said  # it set no limit


def test_yaml_clocks_alone_and_grid(env):
    (env / "clocks.yaml").write_text(VIRTUAL + "  clocks: [1950, '60%']\n")
    result, runs = _sweep(env, config="clocks.yaml")
    assert result.exit_code == 0, result.output
    rows = _rows(runs[-1] / "summary.csv")
    assert {r["power_limit_req_w"] for r in rows} == {""} and {r["sm_clock_mhz"] for r in rows} == {"1950", "1170"}
    (env / "grid.yaml").write_text(VIRTUAL + "  clocks: [1950, '60%']\n  limits: [420, 300]\n")
    result, runs = _sweep(env, config="grid.yaml")
    assert result.exit_code == 0, result.output
    rows = _rows(runs[-1] / "summary.csv")
    assert {(r["power_limit_req_w"], r["sm_clock_mhz"]) for r in rows} == {
        (w, f) for w in ("420", "300") for f in ("1950", "1170")
    }


def test_a_limits_only_sweep_touches_no_clock(env):
    result, runs = _sweep(env, "--limits", "420,300")
    assert result.exit_code == 0, result.output
    assert {r["sm_clock_mhz"] for r in _rows(runs[0] / "summary.csv")} == {""}
    assert [c for c in _card().persisted_set_calls() if c and c[0] == "sm_lock_mhz"] == []
    assert "## Power-limit sweep" in (runs[0] / "report.md").read_text()


@pytest.mark.tries("bad input", "clock sweeps: bad clocks, no clock locks, no permission, read-only")
@pytest.mark.parametrize(
    "args,words",
    [
        pytest.param(["--clocks", "2100"], "SM clock 2100 MHz not supported by", id="above-range"),
        pytest.param(["--clocks", "1200,100"], "it locks 210-1950 MHz", id="below-range"),
        pytest.param(["--clocks", "120%"], "SM clock 120% out of range", id="percent-over-100"),
        pytest.param(["--clocks", "0%"], "--clocks: an SM clock must be positive, got '0%'", id="percent-zero"),
        pytest.param(["--clocks", "fast"], "--clocks: expected MHz (1600) or a share", id="malformed"),
        pytest.param(["--limits", "420,50", "--clocks", "1200"], "outside the range", id="bad-limit-in-grid"),
    ],
)
def test_bad_clocks_are_one_line_before_anything_changes(env, args, words):
    result, runs = _sweep(env, *args)
    assert words in " ".join(result.output.split())
    _untouched(result, runs)


def test_clamp_moves_clocks_into_range(env):
    result, runs = _sweep(env, "--clocks", "2100,1200", "--clamp")
    assert result.exit_code == 0, result.output
    got = {(r["sm_clock_req_mhz"], r["sm_clock_mhz"]) for r in _rows(runs[0] / "summary.csv")}
    assert got == {("1950", "1950"), ("1200", "1200")}


@pytest.mark.tries("bad input", "clock sweeps: bad clocks, no clock locks, no permission, read-only")
def test_read_only_refuses_a_clock_sweep(env):
    result, runs = _sweep(env, "--clocks", "1200", "--read-only")
    said = " ".join(result.output.split())
    assert "read-only" in said and "locks SM clocks" in said
    _untouched(result, runs)


@pytest.mark.tries("bad input", "clock sweeps: bad clocks, no clock locks, no permission, read-only")
def test_missing_permission_names_root_and_clock_support(env, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "1")
    result, runs = _sweep(env, "--clocks", "1200")
    said = " ".join(result.output.split())
    assert "CAP_SYS_ADMIN" in said and "some cards and drivers do not support locked clocks" in said
    # a clocks-only sweep runs at the limit in force: the clock lock is the cause named, not the power limits
    assert "no permission to lock the SM clocks of GPU 0" in said and "power limits" not in said
    _untouched(result, runs)
    result, runs = _sweep(env, "--limits", "300", "--clocks", "1200")  # a grid: both
    said = " ".join(result.output.split())
    assert "no permission to change power limits of GPU 0" in said and "Also, locking SM clocks needs root" in said
    _untouched(result, runs)


@pytest.mark.tries("bad input", "clock sweeps: bad clocks, no clock locks, no permission, read-only")
def test_a_card_without_clock_locks_is_refused_before_anything_changes(env, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_NO_CLOCK_LOCKS", "1")
    result, runs = _sweep(env, "--clocks", "1200")
    said = " ".join(result.output.split())
    assert "cannot sweep SM clocks on NVIDIA GeForce RTX 3090 (simulated)" in said and "sweep --limits only" in said
    _untouched(result, runs)


def test_report_rebuilds_a_grid_from_its_files(env):
    result, runs = _sweep(env, "--limits", "420,220", "--clocks", "1950,1200")
    assert result.exit_code == 0, result.output
    for name in ("sweep_heatmap.png", "sweet_spot.csv", "report.md"):
        (runs[0] / name).unlink()
    rebuilt = CliRunner().invoke(app, ["report", str(runs[0])])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert _png(runs[0] / "sweep_heatmap.png") and (runs[0] / "sweet_spot.csv").is_file()
    assert "SM clock" in rebuilt.output  # the summary table's clock column


def test_h200_decode_sweep_finds_the_clock_not_the_limit(env):
    """On the h200 preset decode draws 529 W of 700: limits above that change nothing; a lock saves energy.

    90 % (1782 -> 1785 MHz) keeps 96.8 % of the speed at ~427 W; 75 % (1485 MHz) keeps 90 %, too slow. Both limits
    give the same row at a lock (the lock holds the clock below what either limit allows), so only the clock is pinned.
    """
    (env / "h200.yaml").write_text(VIRTUAL.replace("tests: [pp64, tg16]", "tests: [tg16]"))
    args = ["--fake-preset", "h200", "--limits", "700,600", "--clocks", "100%,90%,75%"]
    result, runs = _sweep(env, *args, config="h200.yaml")
    assert result.exit_code == 0, result.output
    rows = {(r["power_limit_req_w"], r["sm_clock_mhz"]): r for r in _rows(runs[0] / "summary.csv")}
    top = rows[("700", "1980")]
    assert math.isclose(float(top["avg_ts"]), 1636, rel_tol=0.01)  # the megakernel's measured decode at stock
    assert math.isclose(float(rows[("600", "1980")]["avg_ts"]), float(top["avg_ts"]), rel_tol=1e-3)  # flat
    (spot,) = _rows(runs[0] / "sweet_spot.csv")
    assert spot["sm_clock_mhz"] == "1785" and float(spot["tok_per_j_gain_pct"]) > 15


def test_info_shows_the_supported_clocks_read_only(env):
    from luce_bench.gpu.testing import forbid_gpu_setters

    with forbid_gpu_setters() as calls:
        result = CliRunner().invoke(app, ["info", "--fake-gpu", "--fake-preset", "h200"])
    assert result.exit_code == 0, result.output
    assert "345-1980 MHz, 110 clocks every 15 MHz" in result.output and "3201 MHz" in result.output
    assert "SM clock lock" in result.output and calls == []
