"""Measurement quality under stress: throttling and short windows in verdicts, summaries, tables and plots.

Known inputs with known outputs (quality.py, summary.py, plots.py), then whole runs on the simulated card.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from faultkit import check_rows, isolate_fake_gpu, only_run_dir
from test_faults import VIRTUAL
from typer.testing import CliRunner

from luce_bench import plots, quality, sweep_plots
from luce_bench.cli import app
from luce_bench.records import RunRecord
from luce_bench.summary import baseline_notes, stress_notes, summarize

CLEAN = {
    "n_samples": 20,
    "mean_power_w": 300.0,
    "temp_start_c": 40,
    "temp_end_c": 42,
    "thermal_share": 0.0,
    "power_cap_share": 0.0,
}


@pytest.mark.parametrize(
    ("sampled", "disagree_pct", "limit_set", "flags"),
    [
        pytest.param(CLEAN, 1.0, False, [], id="clean"),
        pytest.param({**CLEAN, "thermal_share": 0.05}, 1.0, True, ["thermal-throttle"], id="thermal-any-sample"),
        pytest.param({**CLEAN, "power_cap_share": 1.0}, 1.0, True, [], id="capped-at-the-sweeps-limit"),
        pytest.param({**CLEAN, "power_cap_share": 1.0}, 1.0, False, ["power-capped"], id="capped-limit-not-set"),
        pytest.param({**CLEAN, "power_cap_share": 0.05}, 1.0, False, [], id="capped-at-the-threshold"),
        pytest.param({**CLEAN, "temp_end_c": 46}, 6.0, False, ["power-disagree", "temp-drift"], id="drift"),
        pytest.param({**CLEAN, "n_samples": 0, "mean_power_w": None}, None, False, ["no-samples"], id="no-samples"),
        pytest.param({**CLEAN, "n_samples": 0}, 1.0, False, [], id="between-two-polls"),
    ],
)
def test_sampled_flags(sampled, disagree_pct, limit_set, flags):
    assert quality.sampled_flags(sampled, disagree_pct, limit_set) == flags


@pytest.mark.parametrize(
    ("window_s", "energy_j", "verdict"),
    [(10.0, 5.0, "ok"), (9.99, 5.0, "short-window"), (12.0, 0.0, "energy-invalid"), (12.0, -3.0, "counter-reset")],
)
def test_window_and_energy_flags(window_s, energy_j, verdict):
    flags = quality.window_flags(window_s) + [f for f in [quality.energy_flag(energy_j)] if f]
    assert quality.verdict(flags) == verdict


@pytest.mark.parametrize(
    ("verdicts", "marks"),
    [
        (["ok", "short-window", "ok"], [None, "short", None]),
        (["ok", "thermal-throttle", "short-window;power-capped"], [None, "stressed", "stressed"]),
        (["limit-mismatch", "temp-drift;no-samples"], ["stressed", None]),
    ],
)
def test_tables_and_plots_mark_stressed_and_short_windows(verdicts, marks):
    assert [quality.mark(v) for v in verdicts] == marks


def _row(rep: int, avg_ts: float, tok_per_j: float, verdict: str) -> RunRecord:
    return RunRecord(
        test_time="2027-01-01T00:00:00Z", backend="sim", model="tiny", model_type="t", model_n_params=1, n_prompt=0,
        n_gen=8, test="tg8", rep=rep, iterations=1, n_tokens=8, window_s=12.0, compute_s=12.0, avg_ts=avg_ts,
        energy_j=8 / tok_per_j, tok_per_j=tok_per_j, device="cuda", gpu_simulated=True, valid=True, verdict=verdict,
    )  # fmt: skip


def test_a_summary_averages_throttled_windows_with_the_rest_and_names_them():
    """Leaving a throttled window out would choose windows by their outcome: the row's mean would favour the setting."""
    runs = [_row(0, 100.0, 2.0, "ok"), _row(1, 60.0, 1.0, "thermal-throttle"), _row(2, 110.0, 2.2, "ok")]
    (row,) = summarize(runs)
    assert (row.n, row.avg_ts, row.tok_per_j, row.valid_reps) == (3, 90.0, pytest.approx(5.2 / 3), 3)
    assert row.verdict == "thermal-throttle;noisy"
    said = "sim tg8 @ current: 1 of 3 repetitions flagged thermal-throttle; the summary averages them with the rest"
    assert stress_notes(runs) == [said]
    every = [dataclasses.replace(r, verdict="power-capped") for r in runs]
    (all_capped,) = summarize(every)
    assert (all_capped.n, all_capped.avg_ts) == (3, 90.0) and all_capped.verdict == "power-capped;noisy"
    assert stress_notes(every) == [
        "sim tg8 @ current: all 3 repetitions flagged power-capped; the summary averages them"
    ]


@pytest.mark.parametrize(
    ("gap_s", "disagree_pct", "flags"),
    [
        pytest.param(0.1, 6.0, ["power-disagree"], id="sampled-throughout-disagrees"),
        pytest.param(0.1, 1.0, [], id="sampled-throughout-agrees"),
        pytest.param(0.83, 6.0, ["sampler-gap"], id="a-hole-the-integral-spans"),  # (the longest interval published)
        pytest.param(0.45, 6.0, ["power-disagree"], id="under-5-percent-of-10-s"),
    ],
)
def test_a_cross_check_across_a_hole_in_the_samples_is_not_judged(gap_s, disagree_pct, flags):
    sampled = {"mean_power_w": 250.0, "max_gap_s": gap_s}
    assert quality.sampled_flags(sampled, disagree_pct, True, window_s=10.0, period_s=0.1) == flags
    row = dataclasses.replace(
        _row(0, 100.0, 2.0, quality.verdict(flags)), counter_vs_sampled_pct=disagree_pct, max_sample_gap_s=gap_s
    )
    assert [p for p in row.problems() if "disagree" in p] == []  # (report --check: the verdict follows the row)


@pytest.mark.parametrize(
    ("expected_w", "enforced_w", "limits_w", "flagged"),
    [
        pytest.param(300.0, 300.0, (300.0, 300.0), False, id="as-set"),
        pytest.param(300.0, 300.4, (299.5, 300.9), False, id="within-1-W"),
        pytest.param(300.0, 250.0, (250.0, 250.0), True, id="capped-lower-at-set"),
        pytest.param(300.0, 300.0, (250.0, 300.0), True, id="changed-mid-window"),
        pytest.param(700.0, 700.0, (700.0, 650.0), True, id="compare-limit-changed"),
        pytest.param(None, 700.0, (650.0, 650.0), False, id="nothing-expected"),
        pytest.param(300.0, 300.0, (None, None), False, id="no-samples"),
    ],
)
def test_a_window_whose_enforced_limit_is_not_the_rows_is_flagged(expected_w, enforced_w, limits_w, flagged):
    if limits_w[0] is None:  # the sampler failed: the read-back alone is judged
        sampled: dict = {"mean_power_w": None}
    else:
        sampled = {"mean_power_w": 250.0, "limit_min_w": min(limits_w), "limit_max_w": max(limits_w)}
    flags = quality.sampled_flags(sampled, 0.0, True, expected_w, enforced_w)
    assert (quality.LIMIT_MISMATCH in flags) == flagged
    readback = quality.limit_flags(expected_w, enforced_w, {})  # without a sampler: the read-back alone
    assert readback == ([quality.LIMIT_MISMATCH] if expected_w is not None and abs(enforced_w - expected_w) > 1 else [])


def test_a_row_that_spends_over_2_percent_of_its_windows_outside_the_timed_calls_is_named():
    from luce_bench.summary import overhead_notes, summarize

    def rep(i: int, backend: str, compute_s: float, avg_ts: float = 100.0) -> RunRecord:  # 12 s windows
        r = dataclasses.replace(_row(i, avg_ts, 2.0, "ok"), backend=backend, n_tokens=1200, compute_s=compute_s)
        return dataclasses.replace(r, timed_ts=1200 / compute_s)

    runs = [rep(0, "llamacpp", 11.0), rep(1, "llamacpp", 10.0, 90.0), rep(0, "megakernel", 11.9)]
    runs.append(rep(1, "megakernel", 11.8))
    assert overhead_notes(runs) == [
        "llamacpp tg8 @ current: 17.1 % of its windows is outside the timed calls (each iteration's start, the "
        "harness); its tok/s and tok/J count that time, llama-bench's t/s would not (114.5 timed vs 95.0 tok/s)"
    ]  # the megakernel's 1.25 % is not said; the share is the line's own two numbers' (1 - 95 / 114.55)
    row = summarize(runs)[0]  # the line's tok/s are the summary row's (means over windows, not pooled: 114.3 / 100.0)
    assert (round(row.timed_ts, 1), round(row.avg_ts, 1)) == (114.5, 95.0)


def test_a_summary_writes_its_flags_in_a_windows_order_then_noisy():
    runs = [_row(0, 100.0, 2.0, "short-window;power-disagree"), _row(1, 60.0, 1.0, "temp-drift")]
    runs.append(_row(2, 110.0, 2.2, "ok"))
    (row,) = summarize(runs)  # tok/s 100, 60, 110: a 33 % spread
    assert row.verdict == "short-window;power-disagree;temp-drift;noisy"  # as runs.csv writes them, not A to Z
    assert quality.ordered({"zz-hand-edited", "noisy", "no-energy"}) == ["no-energy", "noisy", "zz-hand-edited"]


def test_a_setting_measured_under_two_idle_baselines_is_named_with_both():
    first = [
        dataclasses.replace(_row(i, 100.0, 2.0, "ok"), power_limit_req_w=300.0, idle_power_w=85.04) for i in (0, 1)
    ]
    resumed = dataclasses.replace(_row(2, 100.0, 2.0, "ok"), power_limit_req_w=300.0, idle_power_w=88.0)
    other = dataclasses.replace(_row(0, 90.0, 2.4, "ok"), power_limit_req_w=220.0, idle_power_w=80.0)
    assert baseline_notes([*first, other]) == []  # one baseline per setting: nothing to say
    close = dataclasses.replace(other, rep=1, idle_power_w=81.5)  # 1.9 % apart: within the counter's own scatter
    assert baseline_notes([*first, resumed, other, close, dataclasses.replace(other, idle_power_w=None)]) == [
        "300 W: the idle baseline differs between its measurements (85.0, 88.0 W; 3.0 W apart): net tok/J averages "
        "windows over all of them"
    ]


def test_flagged_points_and_bars_are_marked_in_the_plots(monkeypatch, tmp_path):
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    plots.mark_flagged(ax, [(1.0, 2.0, "thermal-throttle"), (3.0, 4.0, "short-window"), (5.0, 6.0, "ok")])
    rings = {line.get_label(): (list(line.get_xdata()), line.get_markeredgecolor()) for line in ax.lines}
    assert rings == {
        plots.MARKS["stressed"][2]: ([1.0], "red"),
        plots.MARKS["short"][2]: ([3.0], "orange"),
    }
    plt.close(fig)
    kept = []
    monkeypatch.setattr(plots, "save", lambda plt, fig, title, out: kept.append(fig) or out)
    runs = [_row(0, 100.0, 2.0, "thermal-throttle"), _row(0, 90.0, 2.0, "ok")]
    summary = summarize([runs[0], dataclasses.replace(runs[1], backend="other")])
    plots.bar_chart(summary, "avg_ts", "stddev_ts", "tok/s", "t", tmp_path / "x.png")
    hatches = [p.get_hatch() for p in kept[0].axes[0].patches]
    assert hatches == ["//", None]  # the throttled backend's bar is hatched, the clean one not


def test_a_setting_measured_once_gets_a_square_not_a_bar_that_reads_as_exact(monkeypatch, tmp_path):
    import matplotlib.colors

    kept = []
    monkeypatch.setattr(sweep_plots, "save", lambda plt, fig, title, out: kept.append(fig) or out)

    def at(rep: int, limit_w: float, ts: float) -> RunRecord:
        return dataclasses.replace(_row(rep, ts, ts / 50, "ok"), power_limit_req_w=limit_w, power_limit_w=limit_w)

    no_energy = dataclasses.replace(at(1, 150.0, 80.0), valid=False, energy_j=None, tok_per_j=None, verdict="no-energy")
    runs = [at(0, 300.0, 100.0), at(1, 300.0, 102.0), at(0, 220.0, 95.0), at(0, 150.0, 81.0), no_energy]
    # 300 W: two windows and their intervals; 220 W: one window; 150 W: two for tok/s, one of them without energy
    for metric, single in (("avg_ts", [220.0]), ("tok_per_j", [220.0, 150.0])):
        sweep_plots.vs_setting_plot(summarize(runs), metric, tmp_path / f"{metric}.png")
        (square,) = [ln for ln in kept[-1].axes[0].lines if ln.get_label() == sweep_plots.SINGLE]
        assert list(square.get_xdata()) == single
        # drawn in its own grey: the backend's line keeps the first colour of the cycle, squares or not
        line = kept[-1].axes[0].containers[0].lines[0]
        assert matplotlib.colors.to_hex(line.get_color()) == "#1f77b4"
    plots.pyplot().close("all")


def test_a_backend_that_ran_on_the_cpu_is_named_so_on_its_bars(monkeypatch, tmp_path):
    kept = []
    monkeypatch.setattr(plots, "save", lambda plt, fig, title, out: kept.append(fig) or out)
    gpu, cpu = _row(0, 100.0, 2.0, "ok"), dataclasses.replace(_row(0, 9.0, 0.2, "ok"), backend="hf", device="cpu")
    plots.bar_chart(summarize([gpu, cpu]), "avg_ts", "stddev_ts", "tok/s", "t", tmp_path / "x.png")
    ax = kept[0].axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["sim", "hf (CPU)"]
    assert [b.get_label() for b in ax.containers] == ["sim", "hf (CPU)"]
    plots.pyplot().close("all")


def test_an_error_bar_stops_at_zero_and_the_label_sits_above_its_cap(monkeypatch, tmp_path):
    """A std larger than the mean drew the bar's error below 0 (report.md clips at 0), and the cap struck the label."""
    kept = []
    monkeypatch.setattr(plots, "save", lambda plt, fig, title, out: kept.append(fig) or out)
    runs = [_row(0, 10.0, 2.0, "ok"), _row(1, 100.0, 2.0, "ok")]  # tok/s 55 ± 63.6
    (row,) = summarize(runs)
    assert row.stddev_ts > row.avg_ts
    plots.bar_chart([row], "avg_ts", "stddev_ts", "tok/s", "t", tmp_path / "x.png")
    ax = kept[0].axes[0]
    (errors,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
    (segment,) = errors.lines[2][0].get_segments()
    assert segment[0][1] == pytest.approx(0.0) and segment[1][1] == pytest.approx(row.avg_ts + row.stddev_ts)
    (label,) = ax.texts
    assert label.get_text() == "55" and label.xy[1] == pytest.approx(row.avg_ts + row.stddev_ts)
    assert label.xyann[1] > 0  # points above the cap
    plots.pyplot().close("all")
    # the sweep plots' intervals stop at 0 the same way
    assert sweep_plots._from_zero([5.0, 1.0, math.nan], [2.0, 3.0, 1.0]) == [[2.0, 1.0, 1.0], [2.0, 3.0, 1.0]]


def test_bar_labels_read_as_numbers_not_exponents():
    assert [plots.bar_label(v) for v in (14625.6, 1636.2, 271.0, 28.24, 3.0912, 0.01234)] == [
        "14,626",
        "1,636",
        "271",
        "28.2",
        "3.09",
        "0.0123",
    ]


def test_a_plot_is_written_whole_or_not_at_all(monkeypatch, tmp_path):
    plt = plots.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2], [3, 4])
    assert plots.save(plt, fig, "ok", tmp_path / "ok.png").read_bytes().startswith(b"\x89PNG")

    def full_disk(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"\x89PNG")  # a few bytes land, then the disk is full
        raise OSError(28, "No space left on device")

    fig, ax = plt.subplots()
    opened = fig.number
    monkeypatch.setattr(type(fig), "savefig", full_disk)
    with pytest.raises(OSError, match="No space left"):
        plots.save(plt, fig, "full", tmp_path / "full.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.png"]  # no partial image, no temp file
    assert opened not in plt.get_fignums()  # the figure is closed either way


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    isolate_fake_gpu(tmp_path, monkeypatch)
    (tmp_path / "v.yaml").write_text(VIRTUAL.replace("window_s: 1.0", "window_s: 10.0"))
    return tmp_path


def _faulted(env, monkeypatch, faults: str, command: str, *args: str, config: str = "v.yaml"):
    """`command` on the simulated card with `faults` scripted (LUCE_BENCH_FAKE_GPU_FAULTS): (its result, run dir)."""
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_FAULTS", faults)
    result = CliRunner().invoke(app, [command, "-c", str(env / config), "-o", str(env / "runs"), *args])
    assert result.exit_code == 0, result.output
    return result, only_run_dir(env / "runs")


@pytest.mark.tries("fault", "thermal throttling mid-sweep (quality flag)")
def test_thermal_throttling_is_flagged_averaged_in_and_reported(env, monkeypatch):
    thermal = '[{"kind": "thermal", "at_s": 12.0, "until_s": 25.0}]'
    _, run_dir = _faulted(env, monkeypatch, thermal, "sweep", "--limits", "420", "--reps", "4")
    rows = check_rows(run_dir)
    hot = [r.rep for r in rows if "thermal-throttle" in r.verdict]
    assert hot and all("thermal-throttle" not in r.verdict for r in rows if r.t_end_s < 12.0 or r.t_start_s > 25.0)
    assert all(r.t_end_s >= 12.0 and r.t_start_s <= 25.0 for r in rows if r.rep in hot and r.test == rows[0].test)
    # the violation counter agrees with the reasons: time under thermal slowdown only where the fault was on
    assert all(r.thermal_pct > 0 for r in rows if "thermal-throttle" in r.verdict)
    assert all(r.thermal_pct == 0 for r in rows if r.t_end_s < 12.0 or r.t_start_s > 25.0)
    assert sum(r.thermal_pct * r.window_s for r in rows) / 100 == pytest.approx(13.0, abs=0.5)  # 12-25 s, in windows
    report = (run_dir / "report.md").read_text()
    assert "2 of 4 repetitions flagged thermal-throttle; the summary averages them with the rest" in report
    assert hot == [1, 2]
    (line,) = [ln for ln in report.splitlines() if ln.startswith("| sim | pp64 | 420 W |")]
    assert line.endswith("| 4 | ⚠ temp-drift;thermal-throttle |")  # n = every window; the flag is marked


@pytest.mark.tries("fault", "power-cap throttling at a limit the run did not set (quality flag)")
def test_power_capping_is_flagged_only_where_the_run_did_not_set_the_limit(env):
    from luce_bench.gpu import open_gpu

    open_gpu(fake_preset="rtx3090").set_power_limit_mw(150_000)  # someone capped the card before the run
    args = ["compare", "-c", str(env / "v.yaml"), "-o", str(env / "cmp"), "--no-megakernel", "--baselines", "sim"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    rows = check_rows(only_run_dir(env / "cmp"))
    assert rows and all("power-capped" in r.verdict and r.throttled_share == 1.0 for r in rows)
    assert all(r.power_cap_pct == pytest.approx(100.0) for r in rows)  # NVML's counter: the whole window capped
    swept = CliRunner().invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "sw"), "--limits", "150"])
    assert swept.exit_code == 0, swept.output
    rows = check_rows(only_run_dir(env / "sw"))
    assert rows and all("power-capped" not in r.verdict and r.throttled_share == 1.0 for r in rows)


@pytest.mark.tries("fault", "enforced power limit held below the row's by an outside cap (quality flag)")
@pytest.mark.parametrize("command", ["sweep", "compare"])
def test_a_limit_capped_from_outside_mid_run_flags_its_windows(env, monkeypatch, command):
    """A BMC's cap (or another tool) holds the enforced limit at 250 W from 12 to 25 s: the rows there say so."""
    capped = '[{"kind": "capped", "at_s": 12.0, "until_s": 25.0, "limit_w": 250}]'
    how = ["--limits", "420"] if command == "sweep" else ["--no-megakernel", "--baselines", "sim"]
    _, run_dir = _faulted(env, monkeypatch, capped, command, "--reps", "4", *how)
    rows = check_rows(run_dir)
    capped = [r for r in rows if "limit-mismatch" in r.verdict]
    assert capped and all(r.t_end_s >= 12.0 and r.t_start_s <= 25.0 for r in capped)
    assert all("limit-mismatch" in r.verdict for r in rows if r.t_start_s < 24.0 and r.t_end_s > 13.0)
    assert all("limit-mismatch" not in r.verdict for r in rows if r.t_end_s < 12.0 or r.t_start_s > 25.0)
    assert (
        "repetitions flagged limit-mismatch; the summary averages them with the rest"
        in (run_dir / "report.md").read_text()
    )


def test_a_clocks_only_sweep_names_the_limit_the_run_began_under(env, monkeypatch):
    """The cap in force as a later block began once became that block's reference: its clean windows were flagged."""
    config = VIRTUAL.replace('  limits: ["420", "300", "220"]\n', "").replace("window_s: 1.0", "window_s: 2.0")
    (env / "clocks.yaml").write_text(config)
    capped = '[{"kind": "capped", "at_s": 9, "until_s": 30, "limit_w": 250}]'
    args = ["--clocks", "100%,70%", "--reps", "2", "--rounds", "2", "--tests", "tg8"]
    _, run_dir = _faulted(env, monkeypatch, capped, "sweep", *args, config="clocks.yaml")
    rows = check_rows(run_dir)
    inside = [r for r in rows if r.t_start_s > 9.5 and r.t_end_s < 29.5]
    outside = [r for r in rows if r.t_end_s < 8.5 or r.t_start_s > 30.5]
    assert inside and outside
    assert all("limit-mismatch" in r.verdict for r in inside)
    assert all("limit-mismatch" not in r.verdict for r in outside)


@pytest.mark.tries("fault", "an outside cap on the enforced limit for the whole sweep: the limit set is restored")
def test_a_sweep_under_an_outside_cap_restores_the_limit_set_not_the_caps(env, monkeypatch):
    """The journal once kept the enforced limit (the cap's 250 W) as the original: the card stayed at the last limit."""
    from luce_bench.gpu import open_gpu

    capped = '[{"kind": "capped", "limit_w": 250}]'
    result, run_dir = _faulted(env, monkeypatch, capped, "sweep", "--limits", "420,300", "--reps", "1")
    said = " ".join(result.output.split())
    assert "power limit restored to 420 W (enforced 250 W: another cap holds the card lower)" in said
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_FAULTS")
    assert open_gpu(fake_preset="rtx3090").management_limit_mw() == 420_000  # the card's own limit is back
    rows = check_rows(run_dir)
    assert rows and all("limit-mismatch" in r.verdict and r.power_limit_w == 250.0 for r in rows)


@pytest.mark.tries("fault", "windows shorter than 10 s (quality flag)")
def test_short_windows_are_flagged_and_marked(env):
    (env / "short.yaml").write_text(VIRTUAL)  # 1 s windows
    args = ["sweep", "-c", str(env / "short.yaml"), "-o", str(env / "runs"), "--limits", "420"]
    assert CliRunner().invoke(app, args).exit_code == 0
    run_dir = only_run_dir(env / "runs")
    assert all(r.verdict.startswith("short-window") for r in check_rows(run_dir))
    assert "⚠ short-window" in (run_dir / "report.md").read_text()


def test_every_plot_of_a_simulated_run_is_stamped_and_a_real_runs_are_not(monkeypatch, tmp_path):
    from conftest import simulated_compare

    from luce_bench import report

    plt = plots.pyplot()
    fig, ax = plt.subplots()
    seen = {}
    monkeypatch.setattr(
        plt, "close", lambda f: seen.update(title=f._suptitle.get_text(), texts=[t.get_text() for t in f.texts])
    )
    with plots.stamped(plots.SIMULATED_STAMP):
        plots.save(plt, fig, "Throughput", tmp_path / "a.png")
    assert seen["title"] == "SIMULATED GPU: Throughput" and "SIMULATED GPU" in seen["texts"]
    fig, ax = plt.subplots()
    plots.save(plt, fig, "Throughput", tmp_path / "b.png")  # outside the block: no stamp
    assert seen == {"title": "Throughput", "texts": ["Throughput"]}  # (the title is one of the texts)
    monkeypatch.undo()
    plt.close("all")

    run = simulated_compare(tmp_path, "gpu:\n  fake_clock: virtual\ntests: [tg8]\nreps: 1\nwarmup_s: 0\nwindow_s: 1\n")
    stamps = []
    real_save = plots.save
    monkeypatch.setattr(plots, "save", lambda *a: stamps.append(plots._stamp.get()) or real_save(*a))
    report.render(run)
    assert len(stamps) >= 2 and set(stamps) == {"SIMULATED GPU"}  # tok_s, tok_j (and the timeline)
    meta = json.loads((run / "meta.json").read_text())
    meta["energy"]["simulated"] = False  # as a real card's run says
    (run / "meta.json").write_text(json.dumps(meta))
    stamps.clear()
    report.render(run)
    assert stamps and set(stamps) == {""}


def test_a_simulated_sweeps_plots_are_stamped_too(tmp_path, monkeypatch, tiny_model):
    from pathlib import Path

    from luce_bench import report, sweep_plots

    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_STATE", raising=False)
    smoke = Path(__file__).resolve().parent.parent / "configs" / "smoke.yaml"
    result = CliRunner().invoke(app, ["sweep", "-c", str(smoke), "--limits", "420,300", "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    seen = []
    for module in (plots, sweep_plots):  # sweep_plots has its own name for save
        real = module.save
        monkeypatch.setattr(
            module, "save", lambda *a, real=real: seen.append((a[3].name, plots._stamp.get())) or real(*a)
        )
    report.render(run)
    names = {name for name, _ in seen}
    assert {"tok_s.png", "sweep_tok_j.png", "sweep_pareto_tok_j.png"} <= names
    assert {stamp for _, stamp in seen} == {"SIMULATED GPU"}


@pytest.mark.parametrize(
    ("verdict", "window_s", "pct", "temps", "energy_j", "problem"),
    [
        pytest.param("ok", 10.5, 1.0, (40, 42), 500.0, None, id="clean"),
        pytest.param("short-window", 9.5, 1.0, (40, 42), 500.0, None, id="short"),
        pytest.param("ok", 9.5, 1.0, (40, 42), 500.0, "short-window missing, with a window of 9.5 s", id="short-lost"),
        pytest.param("ok", 10.0, 1.0, (40, 42), 500.0, None, id="at-the-threshold"),  # (6 digits: not judged)
        pytest.param("temp-drift", 10.5, 1.0, (40, 42), 500.0, "temp-drift without a drift of 2 C", id="drift-made-up"),
        pytest.param("temp-drift", 10.5, None, None, 500.0, "temp-drift without the numbers", id="drift-no-temps"),
        pytest.param("power-disagree", 10.5, None, None, 500.0, "without the numbers it is read from", id="no-pct"),
        pytest.param("counter-reset", 10.5, None, None, -3.0, None, id="reset"),
        pytest.param("energy-invalid", 10.5, None, None, -3.0, None, id="reset-as-older-runs-wrote-it"),
        pytest.param("ok", 10.5, None, None, -3.0, "counter-reset missing, with energy_j = -3", id="reset-lost"),
        pytest.param("no-samples;counter-reset", 10.5, None, None, 5.0, "counter-reset without energy_j = 5", id="nr"),
        pytest.param("banana", 10.5, 1.0, (40, 42), 500.0, "'banana' is not a window's flag", id="unknown"),
    ],
)
def test_a_verdict_that_contradicts_its_row_is_named(verdict, window_s, pct, temps, energy_j, problem):
    ts, te = temps or (None, None)
    got = quality.verdict_problems(verdict, window_s, pct, ts, te, energy_j)
    assert (got == []) if problem is None else (len(got) == 1 and problem in got[0]), got


def test_a_long_title_is_wrapped_to_a_one_panel_figure_and_a_grids_bar_labels_take_two_lines(monkeypatch, tmp_path):
    plt = plots.pyplot()
    inside = {}

    def measure(fig):  # (before the figure closes: where its title landed)
        fig.canvas.draw()
        box = fig._suptitle.get_window_extent()
        inside.update(ok=box.x0 >= 0 and box.x1 <= fig.bbox.width, lines=fig._suptitle.get_text().count("\n") + 1)

    monkeypatch.setattr(plt, "close", measure)
    fig, _ = plt.subplots(figsize=(4.5, 4))
    with plots.stamped(plots.SIMULATED_STAMP):  # the longest title a run plot has, on one 4.5-inch panel
        plots.save(plt, fig, "Throughput (mean ± std; ⚠ hatched: flagged windows, see verdict)", tmp_path / "a.png")
    assert inside == {"ok": True, "lines": 2}  # it ran off both edges on one line
    monkeypatch.undo()
    plt.close("all")

    kept = []
    monkeypatch.setattr(plots, "save", lambda plt, fig, title, out: kept.append(fig) or out)

    def cell(limit_w: float, clock_mhz: int) -> RunRecord:
        r = _row(0, 100.0, 2.0, "ok")
        return dataclasses.replace(r, power_limit_req_w=limit_w, power_limit_w=limit_w, sm_clock_mhz=clock_mhz)

    rows = summarize([cell(700.0, 1980), cell(700.0, 1500), cell(400.0, 1980), cell(400.0, 1500)])
    plots.bar_chart(rows, "avg_ts", "stddev_ts", "tok/s", "t", tmp_path / "x.png")
    labels = [t.get_text() for t in kept[0].axes[0].get_xticklabels()]
    assert labels == ["sim\n700 W\n1980 MHz", "sim\n700 W\n1500 MHz", "sim\n400 W\n1980 MHz", "sim\n400 W\n1500 MHz"]
    plt.close("all")
