"""Faults during a run, injected through the simulated GPU's scripted faults and the test backends of faultkit.py.

Each test runs `luce-bench sweep` (or `bench`) in this process on the simulated card, in virtual time where it can
(so a fault lands at the same point of the sweep every time), then checks what the issue asks for: every finished
row intact and none half written (`faultkit.check_rows`), status.json saying where the run stopped and why, the
original power limit back on the card (its state file), and the exit code.

The virtual sweep below takes 21.7 s of simulated time: 420 W holds rows 1-6 (t = 0.9-7.3 s), 300 W rows 7-12
(pp64 8.2-11.2 s, tg8 11.4-14.5 s), 220 W rows 13-18 (15.4-21.7 s). A fault at t = 12 s lands inside the 10th
window (tg8 rep 0 at 300 W).
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from pathlib import Path

import pytest
from faultkit import DiskFullAfter, card, check_rows, isolate_fake_gpu, only_run_dir, register, status
from typer.testing import CliRunner

from luce_bench import appender
from luce_bench.cli import app
from luce_bench.gpu.journal import list_journals

VIRTUAL = """\
backends: [sim]
gpu:
  fake: true
  fake_clock: virtual
tests: [pp64, tg8]
reps: 3
warmup_s: 0.2
window_s: 1.0
rep_gap_max_s: 0.0
cooldown:
  max_s: 0.0
sweep:
  limits: ["420", "300", "220"]
  settle_s: 0.2
  idle_s: 0.5
"""
PLANNED = 18


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    isolate_fake_gpu(tmp_path, monkeypatch)
    register(monkeypatch)
    (tmp_path / "v.yaml").write_text(VIRTUAL)
    return tmp_path


def sweep(env, *args: str, faults: str | None = None, monkeypatch=None):
    if faults is not None:
        monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_FAULTS", faults)
    result = CliRunner().invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), *args])
    return result, only_run_dir(env / "runs")


@pytest.mark.tries("fault", "NVML error mid-window: energy counter not supported")
def test_energy_counter_not_supported_mid_window_stops_with_code_3(env, monkeypatch):
    faults = '[{"kind": "not-supported", "at_s": 12.0, "calls": ["total_energy_mj"]}]'
    result, run_dir = sweep(env, faults=faults, monkeypatch=monkeypatch)
    assert result.exit_code == 3, result.output
    rows = check_rows(run_dir)
    assert len(rows) == 9  # the 10th window was open at t = 12 s: it is not written at all
    doc = status(run_dir)
    assert doc["state"] == "stopped" and doc["exit_code"] == 3 and doc["rows"] == 9
    assert "GPU error" in doc["reason"] and "not supported" in doc["reason"]
    assert doc["where"] == {**doc["where"], "phase": "measuring", "setting": "300W", "test": "tg8", "rep": 0}
    assert doc["settings_restored"] is True and card(env / "card.json")["limit_mw"] == 420_000
    assert not list_journals()
    assert "sweep --resume" in result.output
    # the wall-clock anchor is written at the start: the stopped run's windows still line up with an outside log
    assert json.loads((run_dir / "meta.json").read_text())["sampler"]["origin_unix_s"] > 1.7e9


@pytest.mark.tries("fault", "NVML or binding error mid-run on the violation counters only (their shares left empty)")
@pytest.mark.parametrize("kind", ["not-supported", "crash"])
def test_violation_counters_that_fail_leave_their_shares_empty_and_the_run_goes_on(env, monkeypatch, kind):
    faults = f'[{{"kind": "{kind}", "at_s": 12.0, "calls": ["violation_ns"]}}]'
    result, run_dir = sweep(env, faults=faults, monkeypatch=monkeypatch)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert said.count("NVML's violation counters could not be read") == 1  # said once, not at every edge
    rows = check_rows(run_dir)
    assert len(rows) == PLANNED
    assert rows[0].power_cap_pct == 0.0 and rows[0].thermal_pct == 0.0  # read at both edges before the fault
    assert all(r.power_cap_pct is None and r.thermal_pct is None for r in rows[9:])  # a window open at 12 s on
    assert all(r.valid for r in rows)


def test_the_resume_command_printed_for_a_folder_with_spaces_and_brackets_pastes_back(env, monkeypatch):

    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_FAULTS", '[{"kind": "not-supported", "at_s": 12.0}]')
    out = env / "my runs [1]"
    args = ["sweep", "-c", str(env / "v.yaml"), "-o", str(out)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "1000"})  # (a long tmp path is not folded)
    assert result.exit_code == 3, result.output
    (line,) = [t for t in result.output.splitlines() if t.startswith("continue it with: ")]
    assert shlex.split(line.removeprefix("continue it with: ")) == [
        "luce-bench",
        "sweep",
        "--resume",
        str(only_run_dir(out)),
    ]


@pytest.mark.tries("fault", "NVML error mid-window: GPU lost (restore after it returns)")
def test_gpu_lost_mid_window_keeps_the_journal_then_restore_and_resume(env, monkeypatch):
    result, run_dir = sweep(env, faults='[{"kind": "lost", "at_s": 12.0}]', monkeypatch=monkeypatch)
    assert result.exit_code == 5, result.output  # stopped, and the limit could not be put back
    assert len(check_rows(run_dir)) == 9
    doc = status(run_dir)
    assert doc["state"] == "stopped" and doc["exit_code"] == 5 and doc["settings_restored"] is False
    assert "GPU is lost" in doc["reason"] and "luce-bench restore" in doc["reason"]
    assert card(env / "card.json")["limit_mw"] == 300_000 and list_journals()  # capped, journal kept
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_FAULTS")  # the GPU is back (a reboot, a driver reload)
    restored = CliRunner().invoke(app, ["restore"])
    assert restored.exit_code == 0 and "300 W -> 420 W" in restored.output
    assert card(env / "card.json")["limit_mw"] == 420_000 and not list_journals()
    resumed = CliRunner().invoke(app, ["sweep", "--resume", str(run_dir)])
    assert resumed.exit_code == 0, resumed.output
    rows = check_rows(run_dir)
    assert len(rows) == PLANNED and status(run_dir)["attempts"][0]["exit_code"] == 5


@pytest.mark.tries("fault", "energy counter going backwards (driver reload)")
def test_counter_reset_flags_its_window_and_the_run_goes_on(env, monkeypatch):
    result, run_dir = sweep(env, faults='[{"kind": "counter-reset", "at_s": 12.0}]', monkeypatch=monkeypatch)
    assert result.exit_code == 1, result.output
    rows = check_rows(run_dir)
    assert len(rows) == PLANNED
    hit = [r for r in rows if "counter-reset" in r.verdict]
    assert [(r.power_limit_req_w, r.test, r.rep) for r in hit] == [(300.0, "tg8", 0)]
    assert hit[0].energy_j < 0 and not hit[0].valid and hit[0].tok_per_j is None
    assert all(r.valid for r in rows if r not in hit)
    doc = status(run_dir)
    assert doc["state"] == "finished-with-failures" and "went backwards" in " ".join(doc["warnings"])
    assert card(env / "card.json")["limit_mw"] == 420_000


@pytest.mark.tries("fault", "sampler thread raising")
def test_a_sampler_that_raises_stops_alone_and_later_windows_are_flagged(env, monkeypatch):
    faults = '[{"kind": "crash", "at_s": 12.0, "calls": ["clock_event_reasons"]}]'
    result, run_dir = sweep(env, faults=faults, monkeypatch=monkeypatch)
    assert result.exit_code == 1, result.output
    rows = check_rows(run_dir)
    assert len(rows) == PLANNED  # the measurement itself needs only the counter
    late = [r for r in rows if r.t_start_s > 12.0]
    assert late and all("no-samples" in r.verdict and r.n_samples == 0 and r.valid for r in late)
    # the last sample before the failure, held, is no cross-check
    assert all(r.sampled_energy_j is None and r.counter_vs_sampled_pct is None for r in late)
    assert all("no-samples" not in r.verdict for r in rows if r.t_end_s < 12.0)
    doc = status(run_dir)
    assert doc["state"] == "finished-with-failures" and "sampler stopped: RuntimeError" in doc["reason"]
    assert card(env / "card.json")["limit_mw"] == 420_000


@pytest.mark.tries("fault", "backend crashing partway through a test")
def test_a_backend_crashing_partway_fails_its_trials_and_the_others_run(env, monkeypatch):
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "3")
    result, run_dir = sweep(env, "--backends", "crashsim,sim")
    assert result.exit_code == 1, result.output
    rows = check_rows(run_dir)
    assert len([r for r in rows if r.backend == "sim"]) == PLANNED
    crashed = [r for r in rows if r.backend == "crashsim"]
    assert {r.test for r in crashed} == {"pp64"}  # its decode crashes from the third call on: no tg row
    doc = status(run_dir)
    assert doc["exit_code"] == 1 and any("crashsim@420W failed: RuntimeError" in f for f in doc["failed"])
    assert card(env / "card.json")["limit_mw"] == 420_000


def test_a_backend_failing_in_every_round_is_named_once_per_setting(env, monkeypatch):
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "3")
    result, run_dir = sweep(env, "--backends", "crashsim,sim", "--rounds", "3")
    assert result.exit_code == 1, result.output
    doc = status(run_dir)
    labels = [f.split(" failed:")[0] for f in doc["failed"]]
    assert sorted(labels) == ["crashsim@220W", "crashsim@300W", "crashsim@420W"]  # 3 settings, each tried 3 times
    said = result.output.strip().splitlines()[-1]
    assert said.startswith("error: backends failed or unavailable: ") and said.count("crashsim@300W") == 1


@pytest.mark.tries("fault", "backend hanging partway through a test (virtual time deadline)")
def test_a_backend_hanging_in_virtual_time_hits_the_test_deadline(env, monkeypatch):
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "4")
    result, run_dir = sweep(env, "--backends", "hangsim,sim", "--test-timeout-s", "60")
    assert result.exit_code == 1, result.output
    rows = check_rows(run_dir)
    assert len([r for r in rows if r.backend == "sim"]) == PLANNED
    assert not [r for r in rows if r.backend == "hangsim" and r.test == "tg8"]  # the hung test left no row
    doc = status(run_dir)
    assert any("hangsim@420W timed out" in f and "60 s" in f for f in doc["failed"])
    assert card(env / "card.json")["limit_mw"] == 420_000


REAL = ["--fake-gpu", "--model", "tiny", "--tests", "tg8", "--reps", "2", "--window-s", "0.2", "--warmup-s", "0"]


@pytest.mark.tries("fault", "backend hanging partway through a test (wall-clock deadline)")
@pytest.mark.parametrize("backend", ["hangreal", "hangiso"], ids=["in-process", "child-process"])
def test_a_backend_hanging_in_real_time_is_interrupted_at_the_deadline(env, monkeypatch, backend):
    monkeypatch.setenv("FAULTKIT_FAIL_AT", "6")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(env.parent), os.path.dirname(__file__), os.getcwd()]))
    out = env / "runs"
    args = ["bench", backend, *REAL, "--test-timeout-s", "2", "-o", str(out), "--cooldown-max-s", "0"]
    t0 = time.monotonic()
    result = CliRunner().invoke(app, args)
    assert time.monotonic() - t0 < 30  # not the hour the backend sleeps: the call is interrupted, a child killed
    assert result.exit_code == 1, result.output
    run_dir = only_run_dir(out)
    doc = status(run_dir)
    assert any(f"{backend} timed out" in f and "after 2 s" in f for f in doc["failed"])
    assert doc["state"] == "finished-with-failures" and len(check_rows(run_dir)) <= 1


@pytest.mark.tries("fault", "full disk while appending a row")
def test_a_full_disk_mid_row_leaves_whole_rows_and_stops_with_code_4(env, monkeypatch):
    monkeypatch.setattr(appender, "os", DiskFullAfter(rows=7))
    result, run_dir = sweep(env)
    assert result.exit_code == 4, result.output
    rows = check_rows(run_dir)  # the half row was cut off again
    assert len(rows) == 7
    doc = status(run_dir)
    assert doc["state"] == "stopped" and doc["exit_code"] == 4 and doc["rows"] == 7
    assert "No space left on device" in doc["reason"] and doc["where"]["setting"] == "300W"
    assert card(env / "card.json")["limit_mw"] == 420_000 and not list_journals()


@pytest.mark.tries("fault", "full disk or read-only folder when the run directory is made")
@pytest.mark.parametrize("where", ["header", "mkdir", "first-row"])
def test_a_run_directory_that_cannot_be_started_is_one_line_code_4_and_leaves_nothing(env, monkeypatch, where):
    import errno
    from pathlib import Path

    if where == "header":  # the disk is full from the first byte: runs.csv's header fails
        monkeypatch.setattr(appender, "os", DiskFullAfter(rows=-1))
        said = f"error: cannot start a run directory in {env / 'runs'}: No space left on device"
    elif where == "first-row":  # the headers fit, the first row does not: nothing was measured
        monkeypatch.setattr(appender, "os", DiskFullAfter(rows=0))
        said = "No space left on device; nothing was measured, and the run directory was removed"
    else:
        real_mkdir = Path.mkdir

        def read_only(path, *args, **kwargs):
            if path.parent == env / "runs":
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real_mkdir(path, *args, **kwargs)

        (env / "runs").mkdir()
        monkeypatch.setattr(Path, "mkdir", read_only)
        said = f"error: cannot create a run directory under {env / 'runs'}: Read-only file system"
    out = env / "runs" if where == "mkdir" else env / "new" / "runs"  # (two folders made for the run)
    said = said.replace(str(env / "runs"), str(out))
    limits = ["--limits", "300"] if where == "first-row" else []  # (first-row: a limit is set, then restored)
    result = CliRunner().invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(out), *limits])
    assert result.exit_code == 4, result.output
    if where == "first-row":  # the run began (its notes, the limit set and restored); its last line says why it ended
        *before, last = [ln for ln in result.output.splitlines() if ln.strip()]
        assert last.startswith(f"error: cannot append to {out}/") and last.endswith(f"runs.csv: {said}"), last
        assert "power limit restored to 420 W" in before
    else:
        assert [ln for ln in result.output.splitlines() if ln.strip()] == [said]
    if where == "mkdir":
        assert not list(out.iterdir())  # --out existed: it stays, empty
    else:
        assert not (env / "new").exists()  # nothing of what the run made is left
    assert card(env / "card.json").get("limit_mw", 420_000) == 420_000 and not list_journals()


@pytest.mark.tries("fault", "full disk while writing the report")
def test_a_report_that_cannot_be_written_is_one_line_and_code_4(env, monkeypatch):
    import errno

    from luce_bench import records

    result, run_dir = sweep(env, "--limits", "420")
    assert result.exit_code == 0, result.output

    def full(path, data, durable=False):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(records, "atomic_write", full)
    rebuilt = CliRunner().invoke(app, ["report", str(run_dir)])
    assert rebuilt.exit_code == 4
    (line,) = [ln for ln in rebuilt.output.splitlines() if ln.strip()]
    assert line == f"error: cannot write {run_dir / 'summary.csv'}: No space left on device"


def test_the_automatic_deadline_grows_for_a_backend_that_is_slow_not_hung(env, monkeypatch):
    from luce_bench.backends.sim import SimBackend

    monkeypatch.setattr(SimBackend, "generate", _slow_generate(SimBackend.generate))  # each tg8 iteration: 200 s
    result, run_dir = sweep(env, "--limits", "420", "--tests", "tg8", "--reps", "2")
    assert result.exit_code == 0, result.output  # 3 x 200 s plus windows: far past the 60 s + 3x plan base
    rows = check_rows(run_dir)
    assert len(rows) == 2 and all(r.window_s >= 200.0 for r in rows)


def _slow_generate(generate):
    def slow(self, seed, n):
        self.clock.sleep(200.0)
        return generate(self, seed, n)

    return slow


def _failing_writes(monkeypatch, module, names: tuple[str, ...], err: int) -> None:
    """`module.atomic_write` fails with OSError `err` for files named `names`, and writes every other file."""
    real = module.atomic_write

    def write(path, data, durable=False):
        if Path(path).name in names:
            raise OSError(err, os.strerror(err), str(path))
        return real(path, data, durable)

    monkeypatch.setattr(module, "atomic_write", write)


@pytest.mark.tries("fault", "full disk after the measuring, while the run writes its own report")
def test_a_run_whose_report_cannot_be_written_ends_with_code_4_and_says_so(env, monkeypatch):
    import errno

    from luce_bench import records

    writes = records.atomic_write
    _failing_writes(monkeypatch, records, ("summary.csv", "report.md"), errno.ENOSPC)
    result, run_dir = sweep(env, "--limits", "420")
    assert result.exit_code == 4, result.output
    assert "No space left on device" in result.output and "luce-bench report" in result.output
    assert len(check_rows(run_dir)) > 0  # the measured rows are kept
    doc = status(run_dir)
    assert doc["state"] == "stopped" and doc["exit_code"] == 4 and "could not all be written" in doc["reason"]
    assert f"luce-bench report {shlex.quote(str(run_dir))}" in doc["reason"]
    assert not (run_dir / "report.md").exists()

    # space again: the report renders, and the run is the finished run it was (not "stopped" for good)
    monkeypatch.setattr(records, "atomic_write", writes)
    again = CliRunner().invoke(app, ["report", str(run_dir)])
    assert again.exit_code == 0, again.output
    doc = status(run_dir)
    assert (doc["state"], doc["exit_code"], doc["reason"]) == ("finished", 0, "") and "render_pending" not in doc
    assert "stopped" not in (run_dir / "report.md").read_text()


@pytest.mark.tries("fault", "standard output full or closed while a run measures (luce-bench sweep > /dev/full)")
def test_a_console_that_cannot_be_written_stops_the_run_with_code_4_and_says_so_in_status(env, monkeypatch):
    import errno

    from luce_bench.cli.ui import ConsoleUI

    said = []

    def full(self, msg, lead="", style=""):
        if len(said) >= 2:  # the first lines go out, then the console fails (stdout is /dev/full)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        said.append(msg)

    monkeypatch.setattr(ConsoleUI, "status", full)
    result, run_dir = sweep(env, "--limits", "420,300")
    assert result.exit_code == 4, result.output
    assert result.output.strip().splitlines()[-1] == "error: cannot write: No space left on device"
    doc = status(run_dir)  # not left "running": the run says how it ended
    assert doc["state"] == "stopped" and doc["exit_code"] == 4 and "No space left on device" in doc["reason"]
    assert card(env / "card.json")["limit_mw"] == 420_000 and not list_journals()  # the limit is back


def _cli_into_a_closed_pipe(*args: str, lines: int, merged: bool = False) -> tuple[int, str]:
    """Run the CLI in a process whose stdout reader stops after `lines` lines (`luce-bench ... | head -N`).

    `merged`: stderr goes into the same pipe (`2>&1 | head -N`), so nothing can be said at all; returns err "".
    """
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from luce_bench.entry import main; main()", *args]
    stderr = subprocess.STDOUT if merged else subprocess.PIPE
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True)
    assert proc.stdout is not None
    try:
        for _ in range(lines):
            proc.stdout.readline()
        proc.stdout.close()
        err = proc.stderr.read() if proc.stderr is not None else ""
        return proc.wait(timeout=120), err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.tries("fault", "standard output closed while a run measures (luce-bench sweep | head -1)")
@pytest.mark.parametrize("lines", [1, 6], ids=["before-a-test", "inside-a-test"])
def test_a_closed_pipe_stops_a_run_with_code_4_and_says_so_in_status(env, lines):
    # rich exited 1 on it (the run read "stopped: exit requested (1)"); inside a test, the closed console must not
    # read as the backend failing. 12 repetitions a test: the run writes long after the reader is gone
    (env / "long.yaml").write_text(VIRTUAL.replace("reps: 3", "reps: 12"))
    code, err = _cli_into_a_closed_pipe("sweep", "-c", str(env / "long.yaml"), "-o", str(env / "runs"), lines=lines)
    assert code == 4, err
    assert err.strip().splitlines()[-1] == "error: cannot write: standard output closed (broken pipe)", err
    doc = status(only_run_dir(env / "runs"))
    assert (doc["state"], doc["exit_code"]) == ("stopped", 4) and "standard output closed" in doc["reason"]
    assert not doc.get("failed") and doc["rows"] < 72
    assert card(env / "card.json")["limit_mw"] == 420_000 and not list_journals()  # the limit is back


@pytest.mark.tries("fault", "standard output and error closed while a run measures (luce-bench sweep 2>&1 | head -1)")
def test_a_closed_pipe_for_both_streams_still_exits_4(env):
    # the error line itself then met the closed pipe: a second BrokenPipeError, and click exited 1 ("a backend failed")
    (env / "long.yaml").write_text(VIRTUAL.replace("reps: 3", "reps: 12"))
    code, _ = _cli_into_a_closed_pipe(
        "sweep", "-c", str(env / "long.yaml"), "-o", str(env / "runs"), lines=1, merged=True
    )
    assert code == 4
    doc = status(only_run_dir(env / "runs"))
    assert (doc["state"], doc["exit_code"]) == ("stopped", 4) and "standard output closed" in doc["reason"]
    assert card(env / "card.json")["limit_mw"] == 420_000 and not list_journals()  # the limit is back


def test_a_line_to_a_closed_stderr_is_dropped_and_stderr_pointed_at_devnull(monkeypatch):
    """The run's last error line (cli/measure.py) and handle_errors' go through `tell`: a closed stderr is no crash."""
    import os

    import typer

    from luce_bench.cli import options

    def closed(*args, **kwargs):
        raise BrokenPipeError(32, "Broken pipe")

    moved = []
    monkeypatch.setattr(typer, "echo", closed)
    monkeypatch.setattr(os, "dup2", lambda fd, to: moved.append(to))  # (not this test process's own stderr)
    options.tell("error: backends failed or unavailable: crashsim")  # raises nothing: the exit code still tells
    assert moved == [sys.stderr.fileno()]  # so Python's own flush at exit has nowhere to fail either


def test_a_closed_pipe_ends_other_commands_quietly(capsys):
    import typer

    from luce_bench.cli.options import handle_errors

    @handle_errors
    def info() -> None:  # (`luce-bench info | head -1`: the reader is gone before the last lines)
        raise BrokenPipeError(32, "standard output closed (broken pipe)")

    with pytest.raises(typer.Exit) as exc:
        info()
    assert exc.value.exit_code == 141 and capsys.readouterr().err == ""  # as SIGPIPE would end it: no error line


@pytest.mark.tries("fault", "--help or --version into a full standard output (luce-bench --help > /dev/full)")
@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("args", [["--help"], ["--version"], ["kernel", "--help"]])
def test_help_into_a_full_disk_is_one_line_and_exit_code_4(args):
    import subprocess

    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "luce_bench", *args], stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert done.returncode == 4
    assert done.stderr == "error: cannot write standard output: No space left on device\n"


@pytest.mark.tries("fault", "--help into a pipe whose reader is gone (luce-bench --help | true)")
@pytest.mark.parametrize("args", [["--help"], ["sweep", "--help"], ["--version"]])
def test_help_into_a_closed_pipe_ends_quietly_as_sigpipe_would(args):
    import subprocess

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write is EPIPE
    try:
        done = subprocess.run(
            [sys.executable, "-m", "luce_bench", *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60
        )
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_full_disk_before_the_first_row_and_a_failed_restore_is_exit_5_with_the_journal_kept(env, monkeypatch):
    from luce_bench.gpu import power_limit
    from luce_bench.gpu.base import GPUError

    def stuck(gpu, entry):
        raise GPUError("the limit will not move")

    monkeypatch.setattr(appender, "os", DiskFullAfter(rows=0))
    monkeypatch.setattr(power_limit, "apply_entry", stuck)
    out = env / "runs"
    result = CliRunner().invoke(app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(out), "--limits", "300"])
    assert result.exit_code == 5, result.output  # not 4: the card is still capped
    said = " ".join(result.output.split())
    assert "nothing was measured, and the run directory was removed" in said and "luce-bench restore" in said
    assert "power limit restored" not in said and list_journals()  # the journal stays for `luce-bench restore`
    assert card(env / "card.json")["limit_mw"] == 300_000


@pytest.mark.tries("fault", "full disk before the run's meta.json exists: nothing left, nothing said restored")
def test_a_sweep_stopped_before_its_meta_json_leaves_no_run_directory(env, monkeypatch):
    import errno

    from luce_bench import results

    _failing_writes(monkeypatch, results, ("meta.json",), errno.EFBIG)
    result = CliRunner().invoke(
        app, ["sweep", "-c", str(env / "v.yaml"), "-o", str(env / "runs"), "--limits", "420,300"]
    )
    assert result.exit_code == 4, result.output
    said = " ".join(result.output.split())
    assert "nothing was measured, and the run directory was removed" in said and "--resume" not in said
    assert "restored" not in said and "limit 1/2" not in said  # no limit was ever set
    assert not (env / "runs").exists()  # (--out, made for the run, goes with it)
    assert card(env / "card.json").get("limit_mw", 420_000) == 420_000 and not list_journals()


@pytest.mark.tries("fault", "SIGINT during a backend's load, swallowed by an import")
def test_a_ctrl_c_that_a_backends_imports_swallow_still_interrupts_the_run(env, monkeypatch):
    """A Ctrl-C in a backend's load ends the run as interrupted, not as a backend that failed to load.

    The handler restores the limits and raises; an import turns that into ImportError and the backend's close fails
    too: the run still ends as interrupted (exit 130, resumable).
    """
    (env / "v.yaml").write_text(VIRTUAL.replace("backends: [sim]", "backends: [ctrlcload]"))
    result, run_dir = sweep(env)
    assert result.exit_code == 130, result.output
    assert "failed to load" not in result.output and "NameError" not in result.output
    doc = status(run_dir)
    assert doc["state"] == "interrupted" and doc["exit_code"] == 130 and doc["rows"] == 0, doc
    assert card(env / "card.json").get("limit_mw", 420_000) == 420_000 and not list_journals()  # (none set yet)
    assert "sweep --resume" in result.output
