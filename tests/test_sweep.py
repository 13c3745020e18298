"""`luce-bench sweep` on the FakeGPU: rows per (limit, backend, test), validation before any change, sweet spot."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.cli.measure import sweep_backends
from luce_bench.errors import UserError
from luce_bench.gpu import open_gpu
from luce_bench.gpu.journal import list_journals, new_entry, write_journal
from luce_bench.plan import LimitTarget, order_targets
from luce_bench.records import SummaryRow
from luce_bench.summary import describe_spot, sweet_spots

FAST = [
    "--tests",
    "pp64,tg8",
    "--reps",
    "2",
    "--window-s",
    "0.2",
    "--warmup-s",
    "0",
    "--settle-s",
    "0",
    "--idle-s",
    "0.2",
    "--cooldown-max-s",
    "0",
    "--rep-gap-max-s",
    "0",
]


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    # set (not deleted) so monkeypatch restores them even after --read-only wrote the variable in-process
    monkeypatch.setenv("LUCE_BENCH_READONLY", "0")
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "0")
    return tmp_path


def _sweep(env, *args):
    result = CliRunner().invoke(app, ["sweep", "--fake-gpu", "-o", str(env / "runs"), *FAST, *args])
    runs = sorted((env / "runs").glob("*")) if (env / "runs").exists() else []
    return result, runs


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def _card(preset="rtx3090"):
    return open_gpu(fake_preset=preset, read_only=True)


def test_four_limit_sweep_writes_rows_plots_and_sweet_spot(env):
    result, runs = _sweep(env, "--limits", "420,300,220,150")
    assert result.exit_code == 0, result.output
    run = runs[0]
    summary = _rows(run / "summary.csv")
    assert len(summary) == 4 * 1 * 2  # limits x backends x tests
    assert {(r["power_limit_req_w"], r["backend"], r["test"]) for r in summary} == {
        (w, "sim", t) for w in ("420", "300", "220", "150") for t in ("pp64", "tg8")
    }
    assert len(_rows(run / "runs.csv")) == 4 * 2 * 2
    for r in summary:
        assert float(r["power_limit_w"]) == float(r["power_limit_req_w"])
        for col in (
            "mean_power_w",
            "mean_sm_mhz",
            "avg_ts",
            "tok_per_j",
            "net_tok_per_j",
            "throttled_share",
            "max_counter_vs_sampled_pct",
            "temp_drift_c",
            "verdict",
        ):
            assert r[col] != "", col
    for name in ("sweep_tok_s.png", "sweep_tok_j.png", "sweep_pareto.png", "report.md", "meta.json", "samples.csv"):
        assert (run / name).is_file(), name
    spots = json.loads((run / "sweet_spot.json").read_text())["sweet_spots"]
    assert {s["test"] for s in spots} == {"pp64", "tg8"}
    assert "sweet spot" in result.output and "Power-limit sweep" in (run / "report.md").read_text()
    report = (run / "report.md").read_text()  # llama-bench's layout names each row's limit: no look-alike rows
    assert "| model | size | params | backend | test | limit | t/s | W | tok/J |" in report
    assert sum(f"| sim | tg8 | {w} W |" in report for w in (420, 300, 220, 150)) == 4
    said = " ".join(result.output.split())
    assert "limit 1/4: requested 420 W, enforced 420 W idle baseline" in said  # no "(420)" repeating the number
    meta = json.loads((run / "meta.json").read_text())
    assert meta["sweep"]["limits_requested_w"] == [420.0, 300.0, 220.0, 150.0]
    assert _card().power_limit_mw() == 420_000  # original back
    assert list_journals() == []


def test_a_sweep_without_an_idle_baseline_writes_standard_json(env):
    result, runs = _sweep(env, "--limits", "300,220", "--idle-s", "0")  # no idle baseline: no net tok/J
    assert result.exit_code == 0, result.output
    text = (runs[0] / "sweet_spot.json").read_text()

    def refuse(constant):
        raise ValueError(f"not standard JSON: {constant}")

    spots = json.loads(text, parse_constant=refuse)["sweet_spots"]  # as JavaScript's JSON.parse or jq read it
    assert spots and all(s["net_tok_per_j"] is None for s in spots) and all(s["tok_per_j"] > 0 for s in spots)


def test_throughput_falls_with_the_limit(env):
    # virtual time: the sim backend's speed is the FakeGPU model's at each limit, not a 0.2 s real-time window that a
    # busy CI machine can stretch
    (env / "virtual.yaml").write_text("gpu:\n  fake_clock: virtual\n")
    result, runs = _sweep(env, "-c", str(env / "virtual.yaml"), "--limits", "420,150")
    assert result.exit_code == 0, result.output
    ts = {r["power_limit_req_w"]: float(r["avg_ts"]) for r in _rows(runs[0] / "summary.csv") if r["test"] == "pp64"}
    assert ts["150"] < 0.9 * ts["420"]


@pytest.mark.tries("bad input", "sweep preconditions: limit out of range, no permission, read-only, stale journal")
def test_out_of_range_refused_before_any_change(env):
    result, runs = _sweep(env, "--fake-preset", "h100-sxm", "--limits", "420,300,220,150")
    assert result.exit_code == 2
    assert "power limit 150 W outside the range" in result.output and "200-700 W" in result.output
    assert "--clamp" in result.output
    assert runs == [] and list_journals() == []
    assert _card("h100-sxm").persisted_set_calls() == []


@pytest.mark.parametrize(("preset", "watts"), [("h200", [280, 385, 525, 700]), ("rtx3090", [168, 231, 315, 420])])
def test_the_default_limits_are_shares_that_every_card_accepts(env, preset, watts):
    result, runs = _sweep(env, "--fake-preset", preset)
    assert result.exit_code == 0, result.output
    assert sorted({float(r["power_limit_req_w"]) for r in _rows(runs[0] / "summary.csv")}) == watts


def test_sweep_backends_all_is_the_megakernel_and_every_baseline_each_skipped_where_it_cannot_run():
    every = ["megakernel", "llamacpp", "hf", "hf-compiled"]
    assert (
        sweep_backends(("all",)) == sweep_backends(("all", "all")) == (every, every)
    )  # optional: skipped, not refused
    assert sweep_backends(("hf", "llamacpp")) == (["hf", "llamacpp"], [])  # named: each must run
    with pytest.raises(UserError, match="'all' stands alone, not beside hf"):
        sweep_backends(("all", "hf"))


def test_clamp_and_percent_limits(env):
    result, runs = _sweep(env, "--fake-preset", "h100-sxm", "--limits", "100%,50%,150", "--clamp")
    assert result.exit_code == 0, result.output
    got = sorted({float(r["power_limit_req_w"]) for r in _rows(runs[0] / "summary.csv")})
    assert got == [200.0, 350.0, 700.0]
    said = " ".join(result.output.split())  # the console wraps lines
    assert "limit 1/3: requested 100% (700 W), enforced 700 W" in said  # the request as written, then what it is
    assert "limit 2/3: requested 50% (350 W), enforced 350 W" in said
    assert "limit 3/3: requested 150 W (clamped to 200 W), enforced 200 W" in said
    assert _card("h100-sxm").power_limit_mw() == 700_000


@pytest.mark.tries("bad input", "sweep preconditions: limit out of range, no permission, read-only, stale journal")
def test_missing_permission_stops_before_first_test(env, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "1")
    result, runs = _sweep(env, "--limits", "420,300")
    assert result.exit_code == 2
    assert "CAP_SYS_ADMIN" in result.output and "--cap-add SYS_ADMIN" in result.output
    assert result.output.count("error:") == 1
    assert runs == [] and _card().persisted_set_calls() == []


@pytest.mark.tries("bad input", "sweep preconditions: limit out of range, no permission, read-only, stale journal")
@pytest.mark.parametrize("how", ["flag", "env"])
def test_read_only_refuses_sweep_and_restore(env, monkeypatch, how):
    if how == "env":
        monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    args = ["--read-only"] if how == "flag" else []
    result, runs = _sweep(env, "--limits", "300", *args)
    assert result.exit_code == 2 and "read-only" in result.output
    assert "this sweep changes power limits;" in " ".join(result.output.split())
    assert runs == [] and _card().persisted_set_calls() == []
    clocks, _ = _sweep(env, "--clocks", "90%", *args)  # (what it says it would change is what this sweep changes)
    said = " ".join(clocks.output.split())
    assert clocks.exit_code == 2 and "this sweep locks SM clocks;" in said and "power limit" not in said


@pytest.mark.tries("bad input", "sweep preconditions: limit out of range, no permission, read-only, stale journal")
def test_stale_journal_refused(env):
    gpu = _card()
    write_journal(new_entry(gpu, "rtx3090"))
    result, runs = _sweep(env, "--limits", "300")
    assert result.exit_code == 2
    assert "stale power-limit journal" in result.output and "luce-bench restore" in result.output
    assert runs == []
    restored = CliRunner().invoke(app, ["restore"])
    assert restored.exit_code == 0, restored.output
    assert "restored GPU 0" in restored.output and list_journals() == []
    assert "nothing to restore" in CliRunner().invoke(app, ["restore"]).output


def test_sim_needs_fake_gpu(env):
    result = CliRunner().invoke(app, ["sweep", "--backends", "sim", "--limits", "300"])
    assert result.exit_code == 2 and "--fake-gpu" in result.output


def test_bench_and_compare_never_set_a_limit(env):
    from luce_bench.gpu.testing import forbid_gpu_setters

    with forbid_gpu_setters() as calls:
        result = CliRunner().invoke(
            app,
            [
                "bench",
                "sim",
                "--fake-gpu",
                "-o",
                str(env / "runs"),
                "--tests",
                "pp16",
                "--reps",
                "1",
                "--window-s",
                "0.1",
                "--warmup-s",
                "0",
            ],
        )
    assert result.exit_code == 0, result.output
    assert calls == []
    assert _card("h100-sxm").persisted_set_calls() == [] and _card().persisted_set_calls() == []


def test_order_descending_by_default_and_seeded_shuffle():
    ts = [LimitTarget(str(w), w * 1000) for w in (220, 420, 150, 300)]
    assert [t.requested_mw // 1000 for t in order_targets(ts)] == [420, 300, 220, 150]
    assert [t.requested_mw // 1000 for t in order_targets(ts, "ascending")] == [150, 220, 300, 420]
    a, b = order_targets(ts, "shuffle", 7), order_targets(ts, "shuffle", 7)
    assert a == b and sorted(t.requested_mw for t in a) == sorted(t.requested_mw for t in ts)


def test_sweet_spot_rule():
    def row(limit, ts, tpj, w):
        return SummaryRow(
            backend="b",
            model="m",
            test="tg128",
            n_prompt=0,
            n_gen=128,
            power_limit_req_w=limit,
            power_limit_w=limit,
            n=5,
            avg_ts=ts,
            tok_per_j=tpj,
            mean_power_w=w,
            valid_reps=5,
            device="cuda",
            gpu_simulated=True,
            verdict="ok",
        )

    summary = [
        row(420, 100.0, 0.30, 330),
        row(300, 97.0, 0.40, 240),
        row(220, 95.5, 0.50, 190),
        row(150, 80.0, 0.60, 133),
    ]
    (spot,) = sweet_spots(summary, 0.95, default_limit_w=420)
    assert spot.limit_w == 220 and spot.speed_share == pytest.approx(0.955)
    assert spot.tok_per_j_gain_pct == pytest.approx(100 * (0.5 / 0.3 - 1))
    (spot,) = sweet_spots(summary, 0.97, default_limit_w=420)
    assert spot.limit_w == 300
    # stock itself is the sweet spot when nothing else keeps the speed: no gain is claimed, none is called significant
    (spot,) = sweet_spots(summary, 0.99, default_limit_w=420)
    assert spot.limit_w == 420 and spot.tok_per_j_gain_pct == 0.0 and spot.significant is None
    assert "significant" not in describe_spot(spot, 0.99) and not spot.provisional
    assert (
        "sweet spot 420 W (enforced 420 W), the reference itself (stock 420 W): 0.300 tok/J; no other setting "
        "kept >= 99 % of its tok/s with more tok/J" in describe_spot(spot, 0.99)
    )
    assert "+0.0 %" not in describe_spot(spot, 0.99) and spot.settings == 4
    # one setting: its numbers, no gain against itself
    (spot,) = sweet_spots(summary[1:2], 0.95, default_limit_w=420)
    assert spot.settings == 1 and describe_spot(spot, 0.95) == (
        "b tg128: one setting measured, 300 W (enforced 300 W): 0.400 tok/J at 97.0 tok/s; "
        "a sweet spot needs two or more"
    )
    (spot,) = sweet_spots(summary, 0.95, default_limit_w=420, provisional=True)
    assert describe_spot(spot, 0.95).startswith("provisional (the sweep did not finish): b tg128: sweet spot 220 W")
    # settings whose windows began far apart in temperature are not compared silently (measurement rule 7)
    key = ("b", "tg128")
    for ref_c, spot_c, said in ((40.0, 44.0, None), (40.0, 45.3, "5.3 °C hotter"), (55.0, 41.0, "14.0 °C cooler")):
        (spot,) = sweet_spots(summary, 0.95, 420, temps={(*key, 420, None): ref_c, (*key, 220, None): spot_c})
        assert spot.start_temp_diff_c == pytest.approx(spot_c - ref_c)
        text = describe_spot(spot, 0.95)
        assert ("than the reference's (a hotter card draws more" in text) == (said is not None)
        assert said is None or f"its windows started {said} than the reference's" in text
    (spot,) = sweet_spots(summary, 0.95, 420)
    assert spot.start_temp_diff_c is None  # (temperatures not known: nothing said)
    # one window per setting: no spread to test the gain against, and the sentence says so
    once = [dataclasses.replace(r, n=1, valid_reps=1) for r in summary]
    (spot,) = sweet_spots(once, 0.95, 420)
    assert spot.significant is None and describe_spot(spot, 0.95).endswith(
        "; not tested for significance (a setting with fewer than two windows with energy)"
    )


def test_start_temps_are_the_mean_of_each_groups_windows():
    from luce_bench.records import RunRecord
    from luce_bench.summary import start_temps

    def run(limit_w, temp_c):
        return RunRecord(
            test_time="2027-01-01T00:00:00Z", backend="b", model="m", model_type="t", model_n_params=1, n_prompt=0,
            n_gen=8, test="tg8", rep=0, iterations=1, n_tokens=8, window_s=10.0, compute_s=10.0, avg_ts=0.8,
            power_limit_req_w=limit_w, temp_start_c=temp_c, device="cuda", gpu_simulated=True, valid=True,
            verdict="ok",
        )  # fmt: skip

    hot = dataclasses.replace(run(220.0, 70.0), verdict="thermal-throttle")  # averaged in by the summary: here too
    temps = start_temps([run(420.0, 40.0), run(420.0, 44.0), run(300.0, None), run(220.0, 50.0), hot])
    assert temps == {("b", "tg8", 420.0, None): 42.0, ("b", "tg8", 220.0, None): 60.0}  # 300 W: none read


def test_a_timed_wait_shows_its_seconds_on_a_terminal_and_one_line_in_a_log():
    import io
    import time

    from rich.console import Console

    from luce_bench.cli.ui import ConsoleUI

    tty, log = io.StringIO(), io.StringIO()
    for file, terminal in ((tty, True), (log, False)):
        ui = ConsoleUI(Console(file=file, force_terminal=terminal, width=100), rows=True)
        with ui.waiting("  settling: sim tg8 under load", 0.3):
            time.sleep(0.4)
        with ui.waiting("  idle baseline", 0.0):  # no wait, no bar
            pass
    assert "settling: sim tg8 under load" in tty.getvalue() and "0.3/0.3 s" in tty.getvalue()
    assert "idle baseline" not in tty.getvalue()
    # the bar is transient: a log or a pipe gets a line when the wait starts, so a long one is not silent
    assert log.getvalue() == "  settling: sim tg8 under load, 0.3 s…\n"


def test_a_log_gets_a_line_per_repetition_and_a_terminal_its_bars():
    """A compare or bench (no `rows`) writing to a log or a pipe, as `make run > log` or CI, prints a line per rep.

    A bar there shows only when it is complete, so each repetition prints its line as a sweep's do.
    """
    import io
    from types import SimpleNamespace

    from rich.console import Console

    from luce_bench.cli.ui import ConsoleUI

    # the fields of a RunRecord that the line shows
    rows = [
        SimpleNamespace(backend="llamacpp", test="pp520", rep=r, avg_ts=43000.0 + r, tok_per_j=95.25) for r in (0, 1)
    ]
    tty, log = io.StringIO(), io.StringIO()
    for file, terminal in ((tty, True), (log, False)):
        ui = ConsoleUI(Console(file=file, force_terminal=terminal, width=100))
        for done, row in enumerate(rows, 1):
            ui.record(row)
            ui.progress("llamacpp pp520", done, 2)
        ui.backend_done("llamacpp")
    assert log.getvalue().splitlines() == [
        "  llamacpp pp520 rep 0: 43000.0 tok/s, 95.250 tok/J",
        "  llamacpp pp520 rep 1: 43001.0 tok/s, 95.250 tok/J",
    ]
    assert "rep 0:" not in tty.getvalue() and "llamacpp pp520 repetitions" in tty.getvalue()


@pytest.mark.tries("bad input", "compare/bench while a sweep changes the same GPU's power limits")
def test_a_compare_is_refused_while_a_sweep_holds_the_gpu(env):
    from luce_bench.gpu.journal import GpuLock

    uuid = _card().uuid()
    with GpuLock(uuid):  # as a sweep in another process holds it (flock: another open file description conflicts)
        args = ["compare", "--fake-gpu", "--baselines", "sim", "-o", str(env / "runs"), *FAST[:8]]  # tests .. warmup
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        said = " ".join(result.output.split())
        assert f"is sweeping power limits on {uuid}" in said and "wait for it to finish" in said
        assert not (env / "runs").exists()  # refused before any run directory
    result = CliRunner().invoke(app, args)  # the sweep is over: the same compare runs
    assert result.exit_code == 0, result.output


def test_a_simulated_card_of_its_own_is_measured_while_another_process_sweeps_one(env, monkeypatch):
    from luce_bench.gpu.journal import GpuLock

    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_STATE")  # no state file: each process simulates a card of its own
    with GpuLock(_card().uuid()):  # another process's sweep of its own simulated card of the same preset
        args = ["compare", "--fake-gpu", "--baselines", "sim", "-o", str(env / "runs"), *FAST[:8]]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output


@pytest.mark.tries("bad input", "a config's backends list with a repeat, under --fake-gpu")
def test_a_config_that_names_its_backends_is_kept_under_fake_gpu(env):
    (env / "dup.yaml").write_text("backends: [sim, sim]\n")
    result, runs = _sweep(env, "-c", str(env / "dup.yaml"), "--limits", "420")
    assert result.exit_code == 2 and "backend sim is given twice" in result.output and runs == []  # not dropped
    (env / "all.yaml").write_text("backends: all\n")  # `all` on the simulated card is its simulated backend
    result, runs = _sweep(env, "-c", str(env / "all.yaml"), "--limits", "420")
    assert result.exit_code == 0, result.output
    assert {r["backend"] for r in _rows(runs[0] / "summary.csv")} == {"sim"}
    (env / "fake.yaml").write_text("backends: all\ngpu:\n  fake: true\n")  # the config's own gpu.fake, no flag
    args = ["sweep", "-c", str(env / "fake.yaml"), "-o", str(env / "own"), *FAST, "--limits", "420"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (own,) = (env / "own").glob("*")
    assert {r["backend"] for r in _rows(own / "summary.csv")} == {"sim"}  # the same as under --fake-gpu


def test_a_gain_is_significant_only_when_both_rows_scatter_leaves_it_standing():
    from statistics import mean, stdev
    from types import SimpleNamespace

    from scipy.stats import ttest_ind

    from luce_bench.summary import gain_is_significant

    def row(mean, std, n, windows=None):  # n windows, `windows` of them with energy (all by default)
        return SimpleNamespace(tok_per_j=mean, tok_per_j_std=std, n=n, valid_reps=n if windows is None else windows)

    assert gain_is_significant(row(10.0, 0.1, 5), row(5.0, 0.1, 5)) is True
    assert gain_is_significant(row(10.0, 1.0, 3), row(9.9, 1.0, 3)) is False
    # the old rule (the sweet spot's CI above the reference's mean) called this one significant: 10 - 2.262 x 0.1 /
    # sqrt(10) = 9.93 > 9.9; the reference's own scatter (std 1.0 over 3 windows) explains the 0.1
    assert gain_is_significant(row(10.0, 0.1, 10), row(9.9, 1.0, 3)) is False
    assert gain_is_significant(row(10.0, 0.5, 1), row(5.0, 0.1, 5)) is None  # one window: nothing to test
    assert gain_is_significant(row(10.0, 0.0, 3), row(9.0, 0.0, 3)) is True  # no scatter: the means decide
    # the same as the test on the windows themselves
    a, b = [3.1, 3.3, 3.2, 3.25], [3.0, 3.15, 3.05]
    expect = bool(ttest_ind(a, b, equal_var=False, alternative="greater").pvalue < 0.05)
    assert gain_is_significant(row(mean(a), stdev(a), 4), row(mean(b), stdev(b), 3)) is expect
    # the tok/J statistics come from the windows with energy: a window whose energy was refused adds no freedom
    assert gain_is_significant(row(10.0, 0.5, 3, windows=1), row(5.0, 0.1, 5)) is None
    # chosen as the best of several settings, it must clear p < 0.05 / m (here p = 0.033: 1 setting yes, 2 no)
    assert gain_is_significant(row(mean(a), stdev(a), 4), row(mean(b), stdev(b), 3), candidates=1) is True
    assert gain_is_significant(row(mean(a), stdev(a), 4), row(mean(b), stdev(b), 3), candidates=2) is False


def test_the_sweet_spots_test_counts_every_setting_measured_the_slow_ones_too():
    """A setting the speed threshold drops was still a candidate: the level is 0.05 / 2 here, not 0.05 / 1."""
    from statistics import mean, stdev

    a, b = [3.1, 3.3, 3.2, 3.25], [3.0, 3.15, 3.05]  # p = 0.033 (the test above)

    def row(limit, ts, tpj, sd, n):
        return SummaryRow(
            backend="b", model="m", test="tg128", n_prompt=0, n_gen=128, power_limit_req_w=limit, power_limit_w=limit,
            n=n, avg_ts=ts, tok_per_j=tpj, tok_per_j_std=sd, mean_power_w=100.0, valid_reps=n, device="cuda",
            gpu_simulated=True, verdict="ok",
        )  # fmt: skip

    stock, best = row(420, 100.0, mean(b), stdev(b), 3), row(300, 97.0, mean(a), stdev(a), 4)
    slow = row(150, 60.0, 2.0, 0.1, 3)  # below 95 % of stock's tok/s: never the sweet spot, still tried
    (alone,) = sweet_spots([stock, best], 0.95, default_limit_w=420)
    (both,) = sweet_spots([stock, best, slow], 0.95, default_limit_w=420)
    assert alone.limit_w == both.limit_w == 300
    assert alone.significant is True and both.significant is False


@pytest.mark.tries("bad input", "a config file's sweep limits or clocks: repeated, or outside the card's range")
def test_a_refused_setting_from_a_config_file_names_the_file(env):
    (env / "dup.yaml").write_text("sweep:\n  limits: [300, 300]\n")
    (env / "far.yaml").write_text("sweep:\n  limits: [300, 99999]\n")
    (env / "clk.yaml").write_text("sweep:\n  clocks: [1500, 1500]\n")
    for name, said in (
        ("dup", "power limit 300 W is given twice (300 and 300) in sweep.limits in config {}: give each once"),
        ("far", "fix sweep.limits in config {} or pass --clamp"),
        ("clk", "SM clock 1500 MHz is given twice (1500 and 1500) in sweep.clocks in config {}: give each once"),
    ):
        result, runs = _sweep(env, "-c", str(env / f"{name}.yaml"))
        assert result.exit_code == 2 and runs == [], result.output
        assert said.format(env / f"{name}.yaml") in " ".join(result.output.split())
    result, runs = _sweep(env, "-c", str(env / "dup.yaml"), "--limits", "300,300")  # the flag's values: no file named
    assert result.exit_code == 2 and "is given twice (300 and 300): give each once" in " ".join(result.output.split())


def test_an_axis_the_config_file_leaves_unset_is_named_as_the_default(env):
    from luce_bench.cli.measure import _axis_sources
    from luce_bench.cli.options import load_config

    (env / "lim.yaml").write_text("sweep:\n  limits: [300, 220]\n")
    params = {"config": [env / "lim.yaml"]}
    in_file = load_config(params).sweep.model_fields_set
    assert "limits" in in_file and "clocks" not in in_file
    assert _axis_sources(params, {"limits": None, "clocks": None}, None, in_file) == {
        "limits": f"sweep.limits in config {env / 'lim.yaml'}",
        "clocks": "sweep.clocks (the default)",
    }
    assert _axis_sources(params, {"limits": "300", "clocks": None}, env / "run", in_file) == {
        "limits": "--limits",
        "clocks": f"sweep.clocks of the resumed run ({env / 'run'})",
    }


@pytest.mark.tries("bad input", "an output folder whose name holds rich markup ([/], [b])")
def test_paths_with_brackets_are_printed_as_they_are(env):
    for name in ("x_[/]x", "x_[b]y"):
        out = env / name
        args = ["sweep", "--fake-gpu", "-o", str(out), *FAST, "--limits", "420"]
        result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})  # (a long tmp path is not folded)
        assert result.exit_code == 0, result.output
        (run,) = out.glob("*")
        assert f"results: {run}" in result.output


def test_rounds_interleave_the_settings_repetition_r_in_round_r_mod_rounds(env):
    """`--rounds 2`: every setting twice, each time half of its repetitions, so drift spreads over all settings."""
    result, runs = _sweep(env, "--limits", "420,300", "--reps", "4", "--rounds", "2", "--tests", "tg8")
    assert result.exit_code == 0, result.output
    (run,) = runs
    rows = sorted(_rows(run / "runs.csv"), key=lambda r: float(r["t_start_s"]))
    assert [(r["power_limit_req_w"], int(r["rep"])) for r in rows] == [
        ("420", 0), ("420", 2), ("300", 0), ("300", 2), ("420", 1), ("420", 3), ("300", 1), ("300", 3),
    ]  # fmt: skip
    said = " ".join(result.output.split())
    assert "round 1/2, limit 1/2: requested 420 W" in said and "round 2/2, limit 2/2: requested 300 W" in said
    applied = json.loads((run / "meta.json").read_text())["sweep_limits"]
    assert [(a["requested_w"], a["round"]) for a in applied] == [(420.0, 0), (300.0, 0), (420.0, 1), (300.0, 1)]
    summary = {r["power_limit_req_w"]: r for r in _rows(run / "summary.csv")}
    assert summary["420"]["n"] == summary["300"]["n"] == "4"  # one row per setting, over both rounds


@pytest.mark.tries("bad input", "more sweep rounds than repetitions")
def test_more_rounds_than_repetitions_is_refused_in_one_line(env):
    result, runs = _sweep(env, "--limits", "420", "--rounds", "3")  # FAST: 2 repetitions
    assert result.exit_code == 2 and runs == []
    assert result.output.strip().splitlines() == [
        "error: sweep.rounds (--rounds) = 3 exceeds reps (--reps) = 2: each round measures at least one repetition "
        "of every setting; raise reps or lower rounds"
    ]
    (env / "r.yaml").write_text("sweep:\n  rounds: 3\n")  # a sweep's rule: compare takes the same config
    args = ["compare", "-c", str(env / "r.yaml"), "--fake-gpu", "--baselines", "sim", "--no-megakernel", "-o"]
    compared = CliRunner().invoke(app, [*args, str(env / "cmp"), *FAST[:8]])  # (no sweep flags)
    assert compared.exit_code == 0, compared.output
