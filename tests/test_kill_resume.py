"""A real sweep process stopped at seeded random points (SIGINT, SIGTERM, SIGKILL, a file-size limit), then resumed.

After each stop: every finished row intact and none half written, status.json saying how and where it stopped, the
exit code telling what happened, and the original limit back (after SIGKILL: once `luce-bench restore` has run).
Then `sweep --resume` finishes the sweep, and runs.csv holds every planned repetition exactly once.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from faultkit import card, check_rows, only_run_dir, status

from luce_bench.gpu.journal import list_journals

ROOT = Path(__file__).resolve().parents[1]
LIMITS = (420, 300, 220)
TESTS = ("pp64", "tg8")
REPS = 3
ARGS = [
    "sweep", "--fake-gpu", "--limits", ",".join(map(str, LIMITS)), "--tests", ",".join(TESTS), "--reps", str(REPS),
    "--window-s", "0.2", "--warmup-s", "0", "--settle-s", "0", "--idle-s", "0.1", "--cooldown-max-s", "0",
    "--rep-gap-max-s", "0",
]  # fmt: skip
PLANNED = {("sim", t, float(w), r) for w in LIMITS for t in TESTS for r in range(REPS)}


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    e = {k: v for k, v in os.environ.items() if not k.startswith("LUCE_BENCH_FAKE_GPU")}
    e.update(
        LUCE_BENCH_STATE_DIR=str(tmp_path / "state"),
        LUCE_BENCH_FAKE_GPU_STATE=str(tmp_path / "card.json"),
        LUCE_BENCH_READONLY="0",
        PYTHONPATH=str(ROOT),
    )
    for key in ("LUCE_BENCH_STATE_DIR", "LUCE_BENCH_FAKE_GPU_STATE"):  # this process reads the same card
        monkeypatch.setenv(key, e[key])
    return e


def luce(env, *args, **kwargs) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "luce_bench", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, cwd=ROOT, **kwargs)


def start(env, out: Path, preexec=None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "luce_bench", *ARGS, "-o", str(out)]
    return subprocess.Popen(
        cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )


def stop_at_random(proc: subprocess.Popen, out: Path, sig: int, seed: int) -> float:
    """Wait until the run directory has a status file, then send `sig` after a seeded random 0.2-2.5 s."""
    deadline = time.monotonic() + 60
    while not list(out.glob("*/status.json")):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.02)
    delay_s = random.Random(seed).uniform(0.2, 2.5)
    time.sleep(delay_s)
    proc.send_signal(sig)
    proc.wait(timeout=60)
    return delay_s


def finish_by_resuming(env, run_dir: Path) -> None:
    resumed = luce(env, "sweep", "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    rows = check_rows(run_dir)
    assert {(r.backend, r.test, r.power_limit_req_w, r.rep) for r in rows} == PLANNED and len(rows) == len(PLANNED)
    assert status(run_dir)["state"] == "finished" and status(run_dir)["rows"] == len(PLANNED)
    assert card(env["LUCE_BENCH_FAKE_GPU_STATE"])["limit_mw"] == 420_000


@pytest.mark.tries("fault", "SIGINT / SIGTERM at random points, then --resume")
@pytest.mark.parametrize(
    "sig,code,seed",
    [(signal.SIGINT, 130, 11), (signal.SIGTERM, 143, 12)],
    ids=["SIGINT-seed11", "SIGTERM-seed12"],
)
def test_signal_at_a_random_point_restores_records_and_resumes(env, tmp_path, sig, code, seed):
    proc = start(env, tmp_path / "runs")
    stop_at_random(proc, tmp_path / "runs", sig, seed)
    err = proc.stderr.read()
    run_dir = only_run_dir(tmp_path / "runs")
    rows = check_rows(run_dir)
    doc = status(run_dir)
    if proc.returncode == 0:  # the sweep finished before the signal came
        assert doc["state"] == "finished" and len(rows) == len(PLANNED)
        return
    assert proc.returncode == code, err
    assert doc["state"] == "interrupted" and doc["exit_code"] == code and doc["rows"] == len(rows)
    assert doc["reason"] == f"interrupted by {signal.Signals(sig).name}" and doc["where"]["phase"]
    assert card(env["LUCE_BENCH_FAKE_GPU_STATE"]).get("limit_mw", 420_000) == 420_000 and not list_journals()
    finish_by_resuming(env, run_dir)


@pytest.mark.tries("fault", "SIGKILL at random points, restore, then --resume")
@pytest.mark.parametrize("seed", [21, 22])
def test_sigkill_at_a_random_point_then_restore_and_resume(env, tmp_path, seed):
    proc = start(env, tmp_path / "runs")
    stop_at_random(proc, tmp_path / "runs", signal.SIGKILL, seed)
    run_dir = only_run_dir(tmp_path / "runs")
    rows = check_rows(run_dir)
    if proc.returncode == 0:
        assert len(rows) == len(PLANNED)
        return
    assert proc.returncode == -signal.SIGKILL
    doc = status(run_dir)
    assert doc["state"] == "running" and doc["rows"] in (len(rows), len(rows) - 1)  # no word from a killed process
    refused = luce(env, "sweep", "--resume", str(run_dir))
    if list_journals():  # killed after the first change: the card is still capped until `restore`
        assert refused.returncode == 2 and "luce-bench restore" in refused.stderr
        assert "resuming" not in refused.stdout  # refused before the run started: it does not say it resumes
        restored = luce(env, "restore")
        assert restored.returncode == 0 and "sweep --resume" in restored.stdout, restored.stderr
        assert status(run_dir)["state"] == "killed" and "luce-bench restore" in status(run_dir)["reason"]
    assert card(env["LUCE_BENCH_FAKE_GPU_STATE"]).get("limit_mw", 420_000) == 420_000
    finish_by_resuming(env, run_dir)


@pytest.mark.tries("fault", "SIGKILL after the last row, while the report is written")
def test_a_run_killed_while_writing_its_report_reads_as_killed_until_report_writes_it(env, tmp_path):
    """status.json once said "finished" (exit 0) of a run killed before its report: a reader took it as complete."""
    cli = Path(__file__).resolve().parent / "fault_cli.py"
    args = ["compare", "--fake-gpu", "--baselines", "sim", "--no-megakernel", "--tests", "tg8", "--reps", "2"]
    args += ["--window-s", "0.2", "--warmup-s", "0", "--rep-gap-max-s", "0", "-o", str(tmp_path / "runs")]
    proc = subprocess.run(
        [sys.executable, str(cli), *args], env={**env, "FAULTKIT_KILL_IN_RENDER": "1"}, capture_output=True, timeout=120
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    run_dir = only_run_dir(tmp_path / "runs")
    assert len(check_rows(run_dir)) == 2 and not (run_dir / "report.md").exists()
    doc = status(run_dir)
    assert doc["state"] == "running" and doc["render_pending"]["state"] == "finished"  # not "finished" yet
    from luce_bench.status import describe

    told = describe(doc, run_dir)
    assert told.startswith("killed: 2 of 2 repetitions") and told.endswith(f"`luce-bench report {run_dir}` writes it")
    assert "--resume" not in told  # a compare, and its rows are all there: nothing to resume
    again = luce(env, "report", str(run_dir))
    assert again.returncode == 0, again.stderr
    doc = status(run_dir)
    assert (doc["state"], doc["exit_code"]) == ("finished", 0) and "render_pending" not in doc
    assert (run_dir / "report.md").is_file()


def _small_files() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (4_600, 4_600))  # writing past 4.6 kB fails: EFBIG


@pytest.mark.tries("fault", "full disk while appending a row (a real write error: file-size limit)")
def test_a_write_error_in_a_real_process_stops_with_code_4_and_resumes(env, tmp_path):
    proc = start(env, tmp_path / "runs", preexec=_small_files)
    proc.wait(timeout=120)
    err = proc.stderr.read()
    assert proc.returncode == 4, err
    run_dir = only_run_dir(tmp_path / "runs")
    doc = status(run_dir)
    assert doc["state"] == "stopped" and "File too large" in doc["reason"] and doc["settings_restored"] is True
    for name in ("runs.csv", "samples.csv"):
        assert (run_dir / name).read_bytes().endswith(b"\n"), name
    assert len(check_rows(run_dir)) == doc["rows"] < len(PLANNED)
    assert card(env["LUCE_BENCH_FAKE_GPU_STATE"])["limit_mw"] == 420_000 and not list_journals()
    finish_by_resuming(env, run_dir)


@pytest.mark.tries("fault", "SIGINT / SIGTERM at random points, then --resume")
def test_sigterm_stops_a_compare_too_with_its_status(env, tmp_path):
    common = [*ARGS[4:10], "--warmup-s", "0", "--cooldown-max-s", "0", "--rep-gap-max-s", "0"]
    args = ["compare", "--fake-gpu", "--no-megakernel", "--baselines", "sim", *common, "-o", str(tmp_path / "runs")]
    proc = subprocess.Popen([sys.executable, "-m", "luce_bench", *args], env=env, cwd=ROOT, stderr=subprocess.PIPE)
    stop_at_random(proc, tmp_path / "runs", signal.SIGTERM, seed=31)
    run_dir = only_run_dir(tmp_path / "runs")
    rows = check_rows(run_dir)
    doc = status(run_dir)
    if proc.returncode == 0:
        assert doc["state"] == "finished" and len(rows) == len(TESTS) * REPS
        return
    assert proc.returncode == 143 and doc["state"] == "interrupted" and doc["rows"] == len(rows)
    assert doc["settings_restored"] is None and "set_calls" not in card(env["LUCE_BENCH_FAKE_GPU_STATE"])
