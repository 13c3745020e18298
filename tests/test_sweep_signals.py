"""The sweep process killed mid-run: SIGTERM/SIGINT/SIGHUP restore at once; SIGKILL needs `luce-bench restore`.

After SIGKILL the journal is left behind; `luce-bench restore`, run as a second process, replays it to give back the
original limit. The grid tests sweep limits x locked SM clocks and are killed at seeded random moments inside chosen
cells: afterwards the original limit AND clock lock are back, and every repetition the sweep reported is in runs.csv,
complete (rows are appended and fsynced before they are reported).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.tries("fault", "sweep killed by SIGKILL, SIGTERM, SIGINT, SIGHUP (limits and grids), restore")

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "sweep",
    "--fake-gpu",
    "--limits",
    "420,300,220,150",
    "--tests",
    "pp64",
    "--reps",
    "4",
    "--window-s",
    "0.3",
    "--warmup-s",
    "0",
    "--settle-s",
    "0",
    "--idle-s",
    "0.1",
    "--cooldown-max-s",
    "0",
    "--rep-gap-max-s",
    "0",
]


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e.update(
        LUCE_BENCH_STATE_DIR=str(tmp_path / "state"),
        LUCE_BENCH_FAKE_GPU_STATE=str(tmp_path / "fake.json"),
        PYTHONPATH=str(ROOT),
    )
    e.pop("LUCE_BENCH_READONLY", None)
    e.pop("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", None)
    return e


def _card_state(env) -> dict:
    path = Path(env["LUCE_BENCH_FAKE_GPU_STATE"])
    try:
        return next(iter(json.loads(path.read_text()).values()))
    except (OSError, ValueError, StopIteration):
        return {}


def _limit_mw(env) -> int | None:
    return _card_state(env).get("limit_mw")


def _lock_mhz(env) -> list[int] | None:
    return _card_state(env).get("sm_lock_mhz")


def _start_and_wait_for(env, tmp_path, limit_mw, lock_mhz=None, args=ARGS, stdout=subprocess.DEVNULL, wait_s=0.5):
    proc = subprocess.Popen(
        [sys.executable, "-m", "luce_bench", *args, "-o", str(tmp_path / "runs")],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while _limit_mw(env) != limit_mw or (lock_mhz is not None and _lock_mhz(env) != [lock_mhz, lock_mhz]):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "sweep never reached the setting"
        time.sleep(0.05)
    time.sleep(wait_s)  # inside the measurement at that setting
    return proc


def _runs_rows(tmp_path) -> int:
    runs = list((tmp_path / "runs").glob("*/runs.csv"))
    return sum(len(p.read_text().splitlines()) - 1 for p in runs)


def test_sigkill_mid_sweep_then_restore_in_second_process(env, tmp_path):
    proc = _start_and_wait_for(env, tmp_path, 300_000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _limit_mw(env) == 300_000  # the card is still capped: nothing runs on SIGKILL
    assert list((tmp_path / "state").glob("power-limit-*.json"))
    assert _runs_rows(tmp_path) > 0  # finished repetitions survived
    again = subprocess.run(
        [sys.executable, "-m", "luce_bench", *ARGS], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert again.returncode == 2 and "luce-bench restore" in again.stderr
    res = subprocess.run(
        [sys.executable, "-m", "luce_bench", "restore"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    assert "300 W -> 420 W" in res.stdout
    assert _limit_mw(env) == 420_000
    assert not list((tmp_path / "state").glob("power-limit-*.json"))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_mid_sweep_restores(env, tmp_path, sig):
    proc = _start_and_wait_for(env, tmp_path, 300_000, stdout=subprocess.PIPE)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "restoring power limits" in err
    assert "power limit restored to 420 W" in out  # confirmed, as after a run that ends by itself
    assert _limit_mw(env) == 420_000
    assert not list((tmp_path / "state").glob("power-limit-*.json"))


def test_ctrl_c_with_the_consoles_reader_gone_still_writes_the_report(env, tmp_path):
    """`luce-bench sweep | tee log` and Ctrl-C: tee dies too, and the restore's confirmation met a closed pipe."""
    proc = _start_and_wait_for(env, tmp_path, 300_000, stdout=subprocess.PIPE)
    proc.send_signal(signal.SIGINT)
    assert proc.stdout is not None
    proc.stdout.close()  # (the reader goes with the signal, before the sweep says the limit is back)
    proc.wait(timeout=60)
    (run_dir,) = (tmp_path / "runs").iterdir()
    doc = json.loads((run_dir / "status.json").read_text())
    assert (doc["state"], doc["exit_code"], "render_pending" in doc) == ("interrupted", 130, False)
    assert (run_dir / "report.md").is_file() and _limit_mw(env) == 420_000


GRID = [*ARGS[:2], "--limits", "420,300", "--clocks", "1950,1200", *ARGS[4:], "--tests", "pp64,tg8", "--reps", "2"]


def _reported_and_written(out: str, tmp_path) -> tuple[int, list]:
    """(repetitions the sweep printed, rows of runs.csv read back: every cell typed, so none half-written)."""
    from luce_bench.results import read_runs

    (run_dir,) = (tmp_path / "runs").iterdir()
    reported = sum(1 for line in out.splitlines() if " rep " in line and "tok/s" in line)
    return reported, read_runs(run_dir)


@pytest.mark.parametrize(
    "limit_mw,lock_mhz,seed",
    [(420_000, 1200, 1), (300_000, 1950, 2), (300_000, 1200, 3)],
    ids=["420W-1200MHz", "300W-1950MHz", "300W-1200MHz"],
)
def test_grid_sigkill_at_random_points_then_restore(env, tmp_path, limit_mw, lock_mhz, seed):
    env = {**env, "PYTHONUNBUFFERED": "1"}  # every reported repetition reaches the pipe before the kill
    wait_s = random.Random(seed).uniform(0.0, 1.0)
    proc = _start_and_wait_for(env, tmp_path, limit_mw, lock_mhz, GRID, subprocess.PIPE, wait_s)
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    # nothing ran on SIGKILL: the card keeps a cell's setting (this one, or the next if the kill came later)
    lock_before = _lock_mhz(env)
    assert _limit_mw(env) in (420_000, 300_000) and lock_before in ([1950, 1950], [1200, 1200])
    reported, rows = _reported_and_written(out, tmp_path)
    assert reported > 0 and reported <= len(rows) <= reported + 1  # no reported row lost; at most one unreported
    assert all(r.sm_clock_mhz in (1950, 1200) and r.power_limit_req_w in (420, 300) for r in rows)
    again = subprocess.run(
        [sys.executable, "-m", "luce_bench", *GRID], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert again.returncode == 2 and "luce-bench restore" in again.stderr
    res = subprocess.run(
        [sys.executable, "-m", "luce_bench", "restore"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    assert f"SM clocks locked {lock_before[0]} MHz -> unlocked" in res.stdout
    assert (_limit_mw(env), _lock_mhz(env)) == (420_000, None)
    assert _card_state(env)["persistence"] is False
    assert not list((tmp_path / "state").glob("power-limit-*.json"))


@pytest.mark.parametrize(
    "sig,limit_mw,lock_mhz",
    [(signal.SIGTERM, 300_000, 1950), (signal.SIGINT, 420_000, 1200)],
    ids=["SIGTERM", "SIGINT"],
)
def test_grid_signal_restores_limit_and_clocks(env, tmp_path, sig, limit_mw, lock_mhz):
    proc = _start_and_wait_for(env, tmp_path, limit_mw, lock_mhz, GRID)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "restoring power limits and SM clocks" in err
    assert (_limit_mw(env), _lock_mhz(env)) == (420_000, None)
    assert not list((tmp_path / "state").glob("power-limit-*.json"))


_SIGNAL_IN_RENDER = """
import os, signal, sys, time
import luce_bench.report as report
import luce_bench.runner as runner
def signalled(*args, **kwargs):  # the signal lands while the report is being written, or just before
    os.kill(os.getpid(), int(os.environ["SIG"]))
    time.sleep(30)
if os.environ["WHERE"] == "render":
    report.render = signalled
else:  # as the run says its settings are restored: its ending is written, its report not yet begun
    runner._say_restored = signalled
sys.argv[0] = "luce-bench"
from luce_bench.entry import main
main()
"""


@pytest.mark.parametrize("where", ["render", "restored"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_the_report_is_written_says_so_and_resume_renders_it(env, tmp_path, sig, where):
    args = [*ARGS[:2], "--limits", "420", *ARGS[4:], "--reps", "1", "-o", str(tmp_path / "runs")]
    done = subprocess.run([sys.executable, "-c", _SIGNAL_IN_RENDER, *args], env={**env, "SIG": str(int(sig)),
                          "WHERE": where}, capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert done.returncode == 128 + sig, done.stderr
    assert "while the summary, report and plots were written" in done.stderr and "Traceback" not in done.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    doc = json.loads((run_dir / "status.json").read_text())
    assert (doc["state"], doc["exit_code"]) == ("interrupted", 128 + sig)  # not "finished" without a report
    assert not (run_dir / "report.md").exists()
    again = subprocess.run([sys.executable, "-m", "luce_bench", *args[:-2], "--resume", str(run_dir)], env=env,
                           capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "were missing and are written" in again.stdout and (run_dir / "report.md").is_file()
    doc = json.loads((run_dir / "status.json").read_text())  # the run's own ending is back, and the report says it
    assert (doc["state"], doc["exit_code"], "render_pending" in doc) == ("finished", 0, False)
    assert "interrupted" not in (run_dir / "report.md").read_text()
    assert json.loads((run_dir / "sweet_spot.json").read_text())["complete"] is True


def test_a_second_signal_while_a_stopped_sweeps_report_is_written_keeps_the_resume_hint(tmp_path, capsys):
    import typer

    from luce_bench.cli.measure import _render_interrupted

    status = {"format": 1, "state": "interrupted", "exit_code": 130, "reason": "interrupted by SIGINT"}
    (tmp_path / "status.json").write_text(json.dumps(status))
    with pytest.raises(typer.Exit) as stop:
        _render_interrupted(tmp_path, KeyboardInterrupt(), False, ("interrupted", 130, "interrupted by SIGINT"), True)
    assert stop.value.exit_code == 130
    said = capsys.readouterr().err
    assert said == (
        "error: interrupted by SIGINT; a second signal (SIGINT) came while the summary, report and plots were "
        f"written; the repetitions measured are in runs.csv: `luce-bench sweep --resume {tmp_path}` continues the "
        "sweep and writes them\n"
    )
    assert json.loads((tmp_path / "status.json").read_text())["reason"] == said.removeprefix("error: ").strip()
