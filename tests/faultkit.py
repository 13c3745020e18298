"""Test backends that fail on purpose, and the checks every fault test makes afterwards.

The backends are registered by the tests that use them (`register`, or `tests/fault_cli.py` for a child process);
nothing in the package knows about them:
* `CrashSim`: the simulated backend, raising RuntimeError from its Nth decode call on;
* `HangSim`: the simulated backend whose Nth decode call takes a virtual hour;
* `HangReal`: a real-time backend (no model) whose Nth decode call sleeps for an hour of wall time;
* `HangIsolated`: `HangReal` in a child process of its own (as llama.cpp runs), hung inside the child;
* `UncompilableHF`: the real `hf-compiled`, allowed on the CPU, whose torch.compile names a compiler torch lacks;
* `CtrlCInLoad`: the simulated backend, whose load gets a SIGINT in the middle of an import that swallows it and
  raises ImportError instead (as transformers' lazy imports did), and whose close then fails (a half-imported module).
After a fault, `check_rows` reads runs.csv back cell by cell (a half-written row fails to parse) and `card` reads the
simulated card's state file (the limit and clock lock another process left).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from luce_bench.backends.base import Backend, ModelSpec, StepResult
from luce_bench.backends.hf import HFBackend
from luce_bench.backends.hf_compiled import HFCompiledBackend
from luce_bench.backends.sim import SimBackend

FAIL_AT_ENV = "FAULTKIT_FAIL_AT"  # the decode call (1-based) that fails or hangs (sim's generate is a decode call)


def _fail_at() -> int:
    return int(os.environ.get(FAIL_AT_ENV, "5"))


class CrashSim(SimBackend):
    """`sim`, whose decode (and so generate) raises from call FAULTKIT_FAIL_AT on."""

    name: ClassVar[str] = "crashsim"

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls >= _fail_at():
            raise RuntimeError(f"simulated backend crash at decode call {self._calls}")
        return super().decode(n, logits, inputs)


class HangSim(SimBackend):
    """`sim`, whose decode (and so generate) call FAULTKIT_FAIL_AT takes an hour of virtual time."""

    name: ClassVar[str] = "hangsim"

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        self._calls = getattr(self, "_calls", 0) + 1
        if self._calls == _fail_at():
            self.clock.sleep(3600.0)
        return super().decode(n, logits, inputs)


class HangReal(Backend):
    """A backend that computes nothing in real time; decode call FAULTKIT_FAIL_AT never comes back (an hour)."""

    name: ClassVar[str] = "hangreal"

    def __init__(self, **_: Any) -> None:
        self._calls = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        self._device_kind = "cpu"

    def reset(self) -> None:
        pass

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        time.sleep(0.001)
        return StepResult((1,), 0.001)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        self._calls += 1
        if self._calls == _fail_at():
            time.sleep(3600.0)
        time.sleep(0.002)
        return StepResult(tuple(range(n)), 0.002)


class HangIsolated(HangReal):
    """`HangReal` run in a child process (the hang is in the child; the parent waits on the pipe)."""

    name: ClassVar[str] = "hangiso"
    isolate: ClassVar[bool] = True


class UncompilableHF(HFCompiledBackend):
    """`hf-compiled` on any machine with torch and transformers; compiling its decode step fails (no such compiler)."""

    name: ClassVar[str] = "hf-compiled"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs, compile_backend="no-such-compiler", allow_cpu=True)

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return HFBackend.unavailable_reason()  # the CPU is allowed


class CtrlCInLoad(SimBackend):
    """`sim`, whose load is interrupted by a SIGINT that the code it interrupts turns into an ImportError."""

    name: ClassVar[str] = "ctrlcload"

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)  # the handler runs here: it restores the limits and raises
            time.sleep(5.0)  # (not reached: the handler raises at once)
        except BaseException as exc:  # noqa: BLE001 - what a lazy import does with anything its import raises
            raise ImportError(
                "Could not import module 'Qwen3_5ForCausalLM'. Are this object's requirements defined correctly?"
            ) from exc
        super().load(model, device)

    def close(self) -> None:
        raise NameError("name 'base_events' is not defined")


TEST_BACKENDS = {
    cls.name: f"faultkit:{cls.__name__}" for cls in (CrashSim, HangSim, HangReal, HangIsolated, CtrlCInLoad)
}


def register(monkeypatch: Any) -> None:
    """Add the test backends to the registry for one test."""
    from luce_bench import backends

    for name, target in TEST_BACKENDS.items():
        monkeypatch.setitem(backends.REGISTRY, name, target)


class DiskFullAfter:
    """Stands in for `os` in luce_bench.appender: a disk that fills up in the middle of runs.csv row `rows` + 1.

    Once runs.csv holds `rows` rows, a write to it writes half of its data, then fails with ENOSPC.
    """

    def __init__(self, rows: int) -> None:
        self.rows = rows

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith("runs.csv") and Path(path).read_bytes().count(b"\n") > self.rows:
            os.write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)


def card(state_file: Path) -> dict[str, Any]:
    """The simulated card's shared state (limit_mw, sm_lock_mhz, persistence, set_calls); {} before any write."""
    try:
        return next(iter(json.loads(Path(state_file).read_text()).values()))
    except (OSError, ValueError, StopIteration):
        return {}


def check_rows(run_dir: Path) -> list[Any]:
    """Every row of runs.csv, parsed cell by cell; the file ends with a complete line (no half-written row)."""
    from luce_bench.results import read_runs

    text = (run_dir / "runs.csv").read_bytes()
    assert text.endswith(b"\n"), "runs.csv ends in a half-written row"
    rows = read_runs(run_dir)
    keys = [(r.backend, r.test, r.power_limit_req_w, r.sm_clock_mhz, r.rep) for r in rows]
    assert len(keys) == len(set(keys)), "a repetition is in runs.csv twice"
    return rows


def status(run_dir: Path) -> dict[str, Any]:
    """status.json of `run_dir`."""
    return json.loads((run_dir / "status.json").read_text())


def only_run_dir(out: Path) -> Path:
    """The one run directory under `out`."""
    (run_dir,) = [p for p in Path(out).iterdir() if p.is_dir()]
    return run_dir


def isolate_fake_gpu(tmp_path: Path, monkeypatch: Any) -> None:
    """A private journal directory and simulated-card state for one test, with no faults or refusals switched on."""
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "card.json"))
    for var in ("LUCE_BENCH_READONLY", "LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "LUCE_BENCH_FAKE_GPU_FAULTS"):
        monkeypatch.delenv(var, raising=False)
