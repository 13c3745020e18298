"""The sweep process killed mid-run: SIGTERM/SIGINT/SIGHUP restore at once; SIGKILL needs `luce-bench restore`.

After SIGKILL the journal is left behind; `luce-bench restore`, run as a second process, replays it to give back the
original limit.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def _limit_mw(env) -> int | None:
    path = Path(env["LUCE_BENCH_FAKE_GPU_STATE"])
    try:
        return next(iter(json.loads(path.read_text()).values()))["limit_mw"]
    except (OSError, ValueError, StopIteration):
        return None


def _start_and_wait_for(env, tmp_path, limit_mw):
    proc = subprocess.Popen(
        [sys.executable, "-m", "luce_bench", *ARGS, "-o", str(tmp_path / "runs")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while _limit_mw(env) != limit_mw:
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "sweep never reached the limit"
        time.sleep(0.05)
    time.sleep(0.5)  # inside the measurement at that limit
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
    proc = _start_and_wait_for(env, tmp_path, 300_000)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0
    assert "restoring power limits" in err
    assert _limit_mw(env) == 420_000
    assert not list((tmp_path / "state").glob("power-limit-*.json"))
