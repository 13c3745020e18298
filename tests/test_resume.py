"""`sweep --resume RUN_DIR` in this process, in virtual time: what it continues, and what it refuses.

A sweep stopped after its 7th row (a full disk, faultkit.DiskFullAfter) is resumed: the 11 missing repetitions are
measured, the one trial cut short mid-way gets exactly its missing repetition indices, and nothing is measured twice.
Every refusal is one line and exit code 2, and leaves runs.csv and the card untouched.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from faultkit import DiskFullAfter, card, check_rows, isolate_fake_gpu, only_run_dir, status
from test_faults import VIRTUAL
from typer.testing import CliRunner

from luce_bench import appender
from luce_bench.backends.base import BackendUnavailable
from luce_bench.backends.sim import SimBackend
from luce_bench.cli import app
from luce_bench.results import read_meta, read_samples

runner = CliRunner()


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    isolate_fake_gpu(tmp_path, monkeypatch)
    (tmp_path / "v.yaml").write_text(VIRTUAL)
    return tmp_path


@pytest.fixture
def stopped(env, monkeypatch):
    """A sweep stopped by a full disk after 7 of its 18 rows."""
    with monkeypatch.context() as m:
        m.setattr(appender, "os", DiskFullAfter(rows=7))
        result = runner.invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs")])
    assert result.exit_code == 4, result.output
    return only_run_dir(env / "runs")


def test_a_run_begun_by_an_older_luce_bench_resumes_under_its_own_header(env, stopped):
    # the run's runs.csv as c0bc27a wrote it, before power_cap_pct and thermal_pct were added after clock_reasons
    import csv

    path = stopped / "runs.csv"
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    old = [c for c in rows[0] if c not in ("power_cap_pct", "thermal_pct")]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, old, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    result = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert result.exit_code == 0, result.output
    assert path.read_text().splitlines()[0] == ",".join(old)  # the file keeps its header; its new rows follow it
    resumed = check_rows(stopped)  # every cell parses where its column says (before: shifted by two from line 9)
    assert len(resumed) == 18 and all(r.valid and r.gpu_simulated for r in resumed)
    assert all(r.power_cap_pct is None for r in resumed)
    assert runner.invoke(app, ["report", str(stopped)]).exit_code == 0


def test_a_run_begun_before_a_config_key_existed_resumes_with_its_default(env, stopped):
    """A sweep begun by a luce-bench without `sweep.rounds` was refused: "sweep.rounds is 1 now, None in the run"."""
    meta = json.loads((stopped / "meta.json").read_text())
    del meta["config"]["sweep"]["rounds"]
    (stopped / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert result.exit_code == 0, result.output
    assert len(check_rows(stopped)) == 18


def test_resume_measures_exactly_the_missing_repetitions(env, stopped):
    spots = json.loads((stopped / "sweet_spot.json").read_text())  # after 7 of 18 rows: the limits not reached
    assert spots["complete"] is False and all(s["provisional"] for s in spots["sweet_spots"])  # may be better
    assert "provisional (the sweep did not finish)" in (stopped / "report.md").read_text()
    before = check_rows(stopped)
    samples_before = read_samples(stopped)
    result = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "11 repetitions to measure" in result.output
    said = " ".join(result.output.split())  # the settings keep the numbers the whole sweep gave them
    assert "limit 2/3: requested 300 W" in said and "limit 3/3:" in said and "limit 1/" not in said
    rows = check_rows(stopped)  # no repetition twice
    assert rows[:7] == before and len(rows) == 18
    times = [r.test_time for r in rows]  # virtual time: the wall clock goes on after the resume, as the timeline does
    assert times == sorted(times) and times[7] > times[6]
    cut_short = [r.rep for r in rows[7:] if (r.power_limit_req_w, r.test) == (300.0, "pp64")]
    assert cut_short == [1, 2]  # rep 0 of that trial was measured before the stop
    samples = read_samples(stopped)
    assert samples[: len(samples_before)] == samples_before
    assert samples[len(samples_before)].t_s > samples_before[-1].t_s  # the timeline goes on, it does not restart
    assert read_meta(stopped)["resumes"][0]["rows_before"] == 7
    doc = status(stopped)
    assert doc["state"] == "finished" and doc["rows"] == 18 and doc["attempts"][0]["exit_code"] == 4
    md = " ".join((stopped / "report.md").read_text().split())  # the reader is told the windows span two sittings
    assert f"run in 2 attempts ({doc['attempts'][0]['state']} with 7 rows so far (last written " in md
    idle_w = sorted({r.idle_power_w for r in rows if r.power_limit_req_w == 300.0})  # both sittings measured 300 W
    assert len(idle_w) == 2 and idle_w[1] - idle_w[0] < 0.02 * idle_w[0]  # (the simulated card's 30 W, twice)
    assert "idle baseline differs" not in md  # within 2 %: nothing to say (test_quality: a note where they differ)
    spots = json.loads((stopped / "sweet_spot.json").read_text())  # finished now: the sweet spots are final
    assert spots["complete"] is True and not any(s["provisional"] for s in spots["sweet_spots"])
    assert [(s["n"], s["test"]) for s in _summary(stopped)] == [("3", t) for _ in range(3) for t in ("pp64", "tg8")]
    again = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert again.exit_code == 0 and "nothing to resume" in again.output and len(check_rows(stopped)) == 18


def _summary(run_dir):
    import csv

    with (run_dir / "summary.csv").open() as f:
        return list(csv.DictReader(f))


def test_a_resumed_sweep_stopped_again_says_where_in_the_whole_plan(env, stopped, monkeypatch):
    assert (status(stopped)["where"]["trial"], status(stopped)["where"]["trials"]) == (3, 6)  # 7 rows: 3 + 3 + 1
    with monkeypatch.context() as m:
        m.setattr(appender, "os", DiskFullAfter(rows=9))  # the third trial's last two rows, then the fourth's first
        result = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert result.exit_code == 4, result.output
    assert (status(stopped)["where"]["trial"], status(stopped)["where"]["trials"]) == (4, 6)  # not "2 of 4"


def test_the_same_command_with_resume_is_accepted(env, stopped):
    args = ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--resume", str(stopped)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(check_rows(stopped)) == 18


def test_a_run_that_recorded_a_seed_without_a_shuffle_still_resumes(env, stopped):
    meta = json.loads((stopped / "meta.json").read_text())  # as a config file could give it before it was refused
    meta["config"]["sweep"] = {**meta["config"]["sweep"], "shuffle_seed": 5}
    (stopped / "meta.json").write_text(json.dumps(meta))
    result = runner.invoke(app, ["sweep", "--resume", str(stopped)])
    assert result.exit_code == 0, result.output
    assert len(check_rows(stopped)) == 18


def _edit_json(path, **changes):
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


def _add_foreign_row(run_dir):
    lines = (run_dir / "runs.csv").read_text().splitlines(keepends=True)
    (run_dir / "runs.csv").write_text("".join(lines) + lines[1].replace(",420,420,", ",999,999,"))


def _stale_journal(run_dir):
    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.journal import new_entry, write_journal

    write_journal(new_entry(open_gpu(fake_preset="rtx3090", read_only=True), "rtx3090"))  # as a killed sweep leaves


def _shuffled(run_dir):
    """The run's config as a shuffled sweep with seed 7 recorded it."""
    config = json.loads((run_dir / "meta.json").read_text())["config"]
    return {**config, "sweep": {**config["sweep"], "order": "shuffle", "shuffle_seed": 7}}


def _old_tg_iteration(run_dir):
    """meta.json as a sweep of before 2026-12-06 wrote it: no method.tg_iteration (a seed step ran before the N)."""
    meta = json.loads((run_dir / "meta.json").read_text())
    del meta["method"]["tg_iteration"]
    (run_dir / "meta.json").write_text(json.dumps(meta))


REFUSALS = {
    "flag-differs": (["--reps", "4"], None, "reps is 4 now, 3 in the run"),
    "order-differs": (["--order", "ascending"], None, "sweep.order is 'ascending' now, 'descending' in the run"),
    "order-differs-from-a-shuffle": (
        ["--order", "ascending"],
        lambda d: _edit_json(d / "meta.json", config=_shuffled(d)),
        "sweep.order is 'ascending' now, 'shuffle' in the run",
    ),
    "config-file-differs": (["-c", "{env}/other.yaml"], None, "window_s is 2.0 now, 1.0 in the run"),
    "not-a-sweep": ([], lambda d: _edit_json(d / "status.json", command="compare"), "only sweeps can be resumed"),
    "still-running": ([], lambda d: _edit_json(d / "status.json", state="running", pid=os.getpid()), "still going"),
    "no-status": ([], lambda d: (d / "status.json").unlink(), "no status.json"),
    "corrupt-status": ([], lambda d: (d / "status.json").write_text("{nope"), "status.json is unreadable"),
    "foreign-row": ([], _add_foreign_row, "is not part of this sweep's plan"),
    "other-plan": ([], lambda d: _edit_json(d / "status.json", plan_sha256="0" * 64), "plan"),
    "other-gpu": ([], lambda d: _edit_json(d / "status.json", gpu_uuid="GPU-other"), "measured on GPU-other, not GPU-"),
    "missing": ([], lambda d: shutil.rmtree(d), "run directory (--resume) not found"),
    "other-out": (["-o", "{env}/elsewhere"], None, "the run continues in its own folder, not under -o"),
    "stale-journal": ([], _stale_journal, "stale power-limit journal"),
    "old-tg-iteration": ([], _old_tg_iteration, "its tg iterations ran a seed step, then N steps (before 2026-12-06)"),
    "method-not-a-map": ([], lambda d: _edit_json(d / "meta.json", method="fast"), "its tg iterations ran a seed"),
}


@pytest.mark.tries("bad input", "sweep --resume of a run directory it must refuse")
@pytest.mark.parametrize("case", list(REFUSALS))
def test_resume_refusals_are_one_line_and_change_nothing(env, stopped, case):
    args, tamper, message = REFUSALS[case]
    (env / "other.yaml").write_text(VIRTUAL.replace("window_s: 1.0", "window_s: 2.0"))
    if tamper is not None:
        tamper(stopped)
    runs_before = (stopped / "runs.csv").read_bytes() if stopped.exists() else None
    calls_before = card(env / "card.json").get("set_calls")
    result = runner.invoke(app, ["sweep", "--resume", str(stopped), *[a.format(env=env) for a in args]])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in result.output
    assert "resuming" not in result.output  # it does not say it resumes a run it then refuses
    assert (stopped / "runs.csv").read_bytes() == runs_before if runs_before is not None else not stopped.exists()
    assert card(env / "card.json").get("set_calls") == calls_before  # no setting touched


def test_a_grid_sweep_resumes_by_limit_and_clock(env, monkeypatch):
    grid = ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--limits", "420,300", "--clocks", "1950,1200"]
    with monkeypatch.context() as m:
        m.setattr(appender, "os", DiskFullAfter(rows=9))
        assert runner.invoke(app, grid).exit_code == 4
    run_dir = only_run_dir(env / "runs")
    result = runner.invoke(app, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = check_rows(run_dir)
    cells = {(r.power_limit_req_w, r.sm_clock_mhz, r.test, r.rep) for r in rows}
    assert len(rows) == 24 and cells == {
        (w, c, t, rep) for w in (420.0, 300.0) for c in (1950, 1200) for t in ("pp64", "tg8") for rep in range(3)
    }
    assert card(env / "card.json")["limit_mw"] == 420_000 and card(env / "card.json")["sm_lock_mhz"] is None


def test_resume_measures_the_trials_a_backend_failed_before(env, monkeypatch):
    from faultkit import register

    register(monkeypatch)
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "3")
    first = runner.invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--backends", "crashsim"])
    assert first.exit_code == 1, first.output
    run_dir = only_run_dir(env / "runs")
    assert {r.test for r in check_rows(run_dir)} == {"pp64"}  # every tg8 trial crashed
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "1000")  # the backend works now
    result = runner.invoke(app, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = check_rows(run_dir)
    assert len(rows) == 18 and {r.test for r in rows[9:]} == {"tg8"}
    assert status(run_dir)["attempts"][0]["state"] == "finished-with-failures"


class Unavailable(SimBackend):
    """A simulated backend that turns out unavailable while loading (as hf-compiled when its compile fails)."""

    name = "unavail"

    def load(self, model, device):
        raise BackendUnavailable("unavail: its compile failed")


def test_a_finished_sweep_that_skipped_an_offered_backend_has_nothing_to_resume(env, monkeypatch):
    from luce_bench import backends
    from luce_bench.cli import measure

    monkeypatch.setitem(backends.REGISTRY, "unavail", f"{__name__}:Unavailable")
    monkeypatch.setattr(measure, "sweep_backends", lambda names: (["sim", "unavail"], ["unavail"]))  # as `all` offers
    first = runner.invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--backends", "all"])
    assert first.exit_code == 0, first.output
    run_dir = only_run_dir(env / "runs")
    assert read_meta(run_dir)["backends"]["unavail"] == {"skipped": "unavail: its compile failed"}
    assert {r.backend for r in check_rows(run_dir)} == {"sim"}
    again = runner.invoke(app, ["sweep", "--resume", str(run_dir)])
    assert again.exit_code == 0 and "nothing to resume" in again.output, again.output


def test_a_finished_sweep_in_a_read_only_folder_has_nothing_to_resume(env, monkeypatch):
    first = runner.invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--limits", "420"])
    assert first.exit_code == 0, first.output
    run_dir = only_run_dir(env / "runs")

    def read_only(self, path, cls):  # (chmod would not stop a root user: the CSV files may not be opened for writing)
        raise OSError(30, "Read-only file system", str(path))

    monkeypatch.setattr(appender.CsvAppender, "__init__", read_only)
    again = runner.invoke(app, ["sweep", "--resume", str(run_dir)])
    assert again.exit_code == 0 and "nothing to resume" in again.output, again.output


def test_an_unwritten_report_takes_the_runs_ending_from_the_caller_where_status_json_lacks_it(tmp_path):
    # status.json still "running" (its last write failed: EIO, a read-only remount) or missing: no int(None) traceback,
    # and a worse ending the caller knows (settings not restored, exit 5) is not lost to "stopped, 4"
    from luce_bench.status import mark_render_unwritten, read_status, write_status

    restore = ("stopped", 5, "run `luce-bench restore`")
    state, code, reason = mark_render_unwritten(tmp_path, "stopped", 4, "report unwritten", restore)
    assert (state, code, reason) == ("stopped", 5, "run `luce-bench restore`; report unwritten")
    write_status(tmp_path, {"format": 1, "state": "running", "exit_code": None, "reason": "", "rows": 3})
    state, code, reason = mark_render_unwritten(tmp_path, "stopped", 4, "report unwritten", ("finished", 0, ""))
    assert (state, code, reason) == ("stopped", 4, "report unwritten")
    assert read_status(tmp_path)["render_pending"] == {"state": "finished", "exit_code": 0, "reason": ""}


def test_a_signal_while_the_report_is_written_keeps_a_worse_ending(tmp_path):
    # a run that could not put the power limit back (exit 5) must keep saying so, and `luce-bench restore`
    from luce_bench.status import as_ended, mark_render_unwritten, read_status, render_done, write_status

    doc = {"format": 1, "state": "stopped", "exit_code": 5, "reason": "run `luce-bench restore`", "rows": 3}
    write_status(tmp_path, doc)
    note = "interrupted while the report was written"
    state, code, reason = mark_render_unwritten(tmp_path, "interrupted", 130, note)
    assert (state, code) == ("stopped", 5) and reason.startswith("run `luce-bench restore`; interrupted while")
    assert as_ended(read_status(tmp_path))["reason"] == "run `luce-bench restore`"
    render_done(tmp_path)
    after = read_status(tmp_path)
    assert (after["state"], after["exit_code"], after["reason"]) == ("stopped", 5, "run `luce-bench restore`")
    assert "render_pending" not in after


def test_a_sweep_in_rounds_resumes_its_rounds_where_it_stopped(env, monkeypatch):
    """Stopped in round 1 of 2: the resume finishes round 1's repetitions, then measures round 2's, each once."""
    (env / "r.yaml").write_text(VIRTUAL.replace("sweep:\n", "sweep:\n  rounds: 2\n"))
    with monkeypatch.context() as m:
        m.setattr(appender, "os", DiskFullAfter(rows=5))
        stopped = runner.invoke(app, ["sweep", "-c", str(env / "r.yaml"), "-o", str(env / "runs")])
    assert stopped.exit_code == 4, stopped.output
    run_dir = only_run_dir(env / "runs")
    result = runner.invoke(app, ["sweep", "--resume", str(run_dir)])
    assert result.exit_code == 0, result.output
    rows = check_rows(run_dir)
    got = [(int(r.power_limit_req_w), r.test, r.rep) for r in rows]
    first = [(420, "pp64", 0), (420, "pp64", 2), (420, "tg8", 0), (420, "tg8", 2), (300, "pp64", 0)]
    rest_of_round_1 = [(300, "pp64", 2), (300, "tg8", 0), (300, "tg8", 2)]
    rest_of_round_1 += [(220, t, r) for t in ("pp64", "tg8") for r in (0, 2)]
    round_2 = [(w, t, 1) for w in (420, 300, 220) for t in ("pp64", "tg8")]
    assert got == first + rest_of_round_1 + round_2
    said = " ".join(result.output.split())
    assert "round 1/2, limit 2/3: requested 300 W" in said and "round 2/2, limit 1/3: requested 420 W" in said
