"""Every exit path restores the ORIGINAL limit and clock lock: normal, exception, signals, atexit, SIGKILL + restore.

Each case runs a child process on a FakeGPU whose state lives in a file, so this process can read the card afterwards.
The `clocks` variants also lock the SM clock (1200 MHz) after the limits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from luce_bench.gpu import open_gpu
from luce_bench.gpu.journal import list_journals

pytestmark = pytest.mark.tries("fault", "controller exit paths: exception, atexit, signals, SIGKILL + restore")

CHILD = textwrap.dedent(
    """
    import sys, time
    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.power_limit import PowerLimitController
    mode, clocks = sys.argv[1], sys.argv[2] == "clocks"
    gpu = open_gpu(fake_preset="rtx3090")
    if mode == "atexit":  # never leaves the with block normally: the atexit backstop must restore
        ctl = PowerLimitController(gpu, fake="rtx3090").__enter__()
        ctl.set_limit_mw(220000)
        if clocks:
            ctl.set_sm_clock_mhz(1200)
        sys.exit(3)
    with PowerLimitController(gpu, fake="rtx3090") as ctl:
        ctl.set_limit_mw(300000)
        ctl.set_limit_mw(220000)
        if clocks:
            ctl.set_sm_clock_mhz(1605)
            ctl.set_sm_clock_mhz(1200)
        print("READY", flush=True)
        if mode == "raise":
            raise RuntimeError("boom")
        if mode == "wait":
            time.sleep(60)
    """
)


@pytest.fixture
def env(tmp_path):
    e = dict(os.environ)
    e["LUCE_BENCH_STATE_DIR"] = str(tmp_path / "state")
    e["LUCE_BENCH_FAKE_GPU_STATE"] = str(tmp_path / "fake.json")
    e.pop("LUCE_BENCH_READONLY", None)
    e["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    return e


def _card(env):
    old = os.environ.get("LUCE_BENCH_FAKE_GPU_STATE")
    os.environ["LUCE_BENCH_FAKE_GPU_STATE"] = env["LUCE_BENCH_FAKE_GPU_STATE"]
    try:
        return open_gpu(fake_preset="rtx3090", read_only=True)
    finally:
        if old is None:
            del os.environ["LUCE_BENCH_FAKE_GPU_STATE"]
        else:
            os.environ["LUCE_BENCH_FAKE_GPU_STATE"] = old


def _start(env, mode, clocks=False):
    args = [sys.executable, "-c", CHILD, mode, "clocks" if clocks else "limits"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if mode == "wait":
        assert proc.stdout.readline().strip() == "READY"
    return proc


CLOCKS = pytest.mark.parametrize("clocks", [False, True], ids=["limits", "limits+clocks"])


@CLOCKS
@pytest.mark.parametrize("mode,rc", [("normal", 0), ("raise", 1), ("atexit", 3)])
def test_exit_paths_restore(env, mode, rc, clocks):
    proc = _start(env, mode, clocks)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    card = _card(env)
    assert card.power_limit_mw() == 420_000
    assert card.persistence_mode() is False
    assert [c[1] for c in card.persisted_set_calls() if c[0] == "power_limit_mw"][-1] == 420_000
    locks = [c[1] for c in card.persisted_set_calls() if c[0] == "sm_lock_mhz"]
    locked = [[1200, 1200]] if mode == "atexit" else [[1605, 1605], [1200, 1200]]
    assert card.locked_sm_clocks_mhz() is None and locks == ([*locked, None] if clocks else [])
    assert list_journals(Path(env["LUCE_BENCH_STATE_DIR"])) == []


@CLOCKS
@pytest.mark.parametrize(
    "sig,rc",
    [(signal.SIGINT, -2), (signal.SIGTERM, 128 + 15), (signal.SIGHUP, 128 + 1)],
    ids=["SIGINT", "SIGTERM", "SIGHUP"],
)
def test_signals_restore(env, sig, rc, clocks):
    proc = _start(env, "wait", clocks)
    assert _card(env).power_limit_mw() == 220_000
    assert _card(env).locked_sm_clocks_mhz() == ((1200, 1200) if clocks else None)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == rc, err
    assert ("restoring power limits and SM clocks" in err) is clocks and "restoring power limits" in err
    assert _card(env).power_limit_mw() == 420_000
    assert _card(env).locked_sm_clocks_mhz() is None
    assert list_journals(Path(env["LUCE_BENCH_STATE_DIR"])) == []


@CLOCKS
def test_sigkill_then_restore_in_another_process(env, clocks):
    proc = _start(env, "wait", clocks)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _card(env).power_limit_mw() == 220_000  # nothing could run on SIGKILL
    assert _card(env).locked_sm_clocks_mhz() == ((1200, 1200) if clocks else None)
    assert len(list_journals(Path(env["LUCE_BENCH_STATE_DIR"]))) == 1
    code = "from luce_bench.gpu.restore import restore_from_journals; print(restore_from_journals())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "220 W -> 420 W" in res.stdout
    assert ("SM clocks locked 1200 MHz -> unlocked" in res.stdout) is clocks
    assert _card(env).power_limit_mw() == 420_000 and _card(env).locked_sm_clocks_mhz() is None
    assert list_journals(Path(env["LUCE_BENCH_STATE_DIR"])) == []
