"""The plan -> run pipeline through its API, on the simulated GPU in virtual time: rules, order, failures, the load.

The `crash` backend below is a test backend (a `sim` that breaks on a chosen call), registered only in these tests.
"""

from __future__ import annotations

import re
import time

import pytest

from luce_bench import backends, config
from luce_bench.backends.base import UnavailableAndBadInput
from luce_bench.backends.sim import SimBackend, SimulatedLoad
from luce_bench.clock import SimClock
from luce_bench.context import open_context
from luce_bench.errors import UserError
from luce_bench.gpu.fake import FakeGPU
from luce_bench.plan import TINY_NOTE, Setting, limit_settings, plan
from luce_bench.records import RunRecord
from luce_bench.results import read_meta, read_runs
from luce_bench.runner import run


class CrashOnDecode(SimBackend):
    """A simulated backend whose decode steps raise (tg tests fail, pp tests run)."""

    name = "crash"

    def decode(self, n, logits=False, inputs=None):
        raise RuntimeError("simulated crash in decode")

    def generate(self, seed, n):  # a tg iteration's steps
        raise RuntimeError("simulated crash in decode")


class WrongBuild(SimBackend):
    """A simulated backend that finds the wrong build of itself while loading (as a CPU-only llama.cpp on a GPU)."""

    name = "wrongbuild"

    def load(self, model, device):
        raise UnavailableAndBadInput("wrongbuild: a CPU-only build on a GPU machine (fix: rebuild it)")


class QuietUI:
    """Collects what the loop reports."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.records: list[RunRecord] = []

    def status(self, msg: str, lead: str = "", style: str = "") -> None:
        self.lines.append(f"{lead} {msg}" if lead else msg)

    def loading(self, backend: str, model: str):
        import contextlib

        return contextlib.nullcontext()

    def waiting(self, label: str, total_s: float):
        import contextlib

        self.lines.append(f"{label} ({total_s:g} s)")
        return contextlib.nullcontext()

    def progress(self, label: str, done: int, total: int) -> None:
        pass

    def record(self, record: RunRecord) -> None:
        self.records.append(record)

    def backend_done(self, backend: str) -> None:
        pass


@pytest.fixture
def env(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    for var in ("LUCE_BENCH_FAKE_GPU_STATE", "LUCE_BENCH_READONLY", "LUCE_BENCH_FAKE_GPU_NO_PERMISSION"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(backends.REGISTRY, "crash", f"{__name__}:CrashOnDecode")
    monkeypatch.setitem(backends.REGISTRY, "wrongbuild", f"{__name__}:WrongBuild")
    return tmp_path


def _cfg(tmp_path, **over):
    base = {
        "gpu.fake": True, "gpu.fake_clock": "virtual", "tests": "pp64,tg8", "reps": 2, "window_s": 1.0,
        "warmup_s": 0.2, "rep_gap_max_s": 0.0, "cooldown.max_s": 0.0, "sweep.settle_s": 0.2, "sweep.idle_s": 0.5,
        "output_dir": str(tmp_path / "runs"), "model": "auto",
    }  # fmt: skip
    return config.load(None, {**base, **over})


def test_trials_are_setting_then_backend_then_test(env):
    cfg = _cfg(env, **{"sweep.limits": "300,420", "sweep.order": "ascending"})
    with open_context(cfg, for_settings=True) as ctx:
        p = plan(cfg, ctx, name="sweep", backends=["sim", "crash", "sim"], settings=limit_settings(cfg, ctx.gpu))
    got = [(t.setting.label, t.backend, t.test.name) for t in p.trials]
    assert got == [(w, b, t) for w in ("300W", "420W") for b in ("sim", "crash") for t in ("pp64", "tg8")]
    assert p.changes_gpu and p.backends == ["sim", "crash"]
    assert p.model.name == "tiny" and p.notes == ()  # auto on a simulated GPU; the simulated backends run no model


def test_the_tiny_model_note_comes_with_a_backend_that_runs_the_model(env):
    cfg = _cfg(env, **{"gpu.fake_clock": "real"})
    with open_context(cfg) as ctx:
        p = plan(cfg, ctx, name="compare", backends=["sim", "hf"])
    assert p.model.name == "tiny" and p.notes == (TINY_NOTE,)


def test_bad_plans_are_refused_before_anything_exists(env):
    cfg = _cfg(env)
    with open_context(cfg) as ctx:
        with pytest.raises(UserError, match="unknown backend 'nope'"):
            plan(cfg, ctx, name="x", backends=["sim", "nope"])
        with pytest.raises(UserError, match="virtual runs only simulated backends .* hf runs in real time"):
            plan(cfg, ctx, name="x", backends=["hf"])
        # `all` (optional backends) skips them with their reasons, as what cannot run here; none left: refused so
        with pytest.raises(UserError, match="no backend can run here: .*hf: it runs in real time, and gpu.fake_clock"):
            plan(cfg, ctx, name="x", backends=["hf", "llamacpp"], optional=["hf", "llamacpp"])
        with pytest.raises(UserError, match=r"\(on the simulated GPU its own backend runs: compare --baselines sim, "):
            plan(cfg, ctx, name="x", backends=["hf", "llamacpp"], optional=["hf", "llamacpp"])
        p = plan(cfg, ctx, name="x", backends=["sim", "hf"], optional=["hf"])
        assert p.backends == ["sim"] and "gpu.fake_clock: virtual" in " ".join(p.notes + tuple(p.skipped.values()))
        long = _cfg(env, tests="pp5000")
        with pytest.raises(UserError, match="test pp5000 needs 5000 positions; tiny allows at most 4096"):
            plan(long, ctx, name="x", backends=["sim"])
    with (
        pytest.raises(UserError, match="virtual needs a simulated GPU"),
        open_context(_cfg(env, **{"gpu.fake": False})),
    ):
        pass
    assert not (env / "runs").exists()


def test_an_optional_backend_that_cannot_run_is_skipped_with_its_reason(env):
    cfg = _cfg(env, **{"gpu.fake_clock": "real"})
    with open_context(cfg) as ctx:
        p = plan(cfg, ctx, name="x", backends=["megakernel", "sim"], optional=["megakernel"])
        if not p.skipped:
            pytest.skip("the megakernel can run here")
        assert "megakernel" in p.skipped and p.backends == ["sim"]
        # named, it is refused for the same reason: no CUDA GPU (CI), or not its model's shapes (a GPU machine)
        with pytest.raises(UserError, match=re.escape(p.skipped["megakernel"])):
            plan(cfg, ctx, name="x", backends=["megakernel"])


def test_a_wrong_build_is_skipped_where_offered_and_refused_where_named(env):
    cfg = _cfg(env)
    ui = QuietUI()
    with open_context(cfg) as ctx:
        outcome = run(plan(cfg, ctx, name="sweep", backends=["wrongbuild", "sim"], optional=["wrongbuild"]), ctx, ui)
    assert outcome.failed == [] and {r.backend for r in read_runs(outcome.run_dir)} == {"sim"}
    assert read_meta(outcome.run_dir)["backends"]["wrongbuild"] == {
        "skipped": "wrongbuild: a CPU-only build on a GPU machine (fix: rebuild it)"
    }
    with open_context(cfg) as ctx, pytest.raises(UserError, match="a CPU-only build on a GPU machine"):
        run(plan(cfg, ctx, name="sweep", backends=["wrongbuild", "sim"]), ctx, QuietUI())


@pytest.mark.tries("fault", "backend crashing partway through a test")
def test_a_crashing_backend_is_recorded_and_the_run_goes_on(env):
    cfg = _cfg(env)
    ui = QuietUI()
    with open_context(cfg) as ctx:
        outcome = run(plan(cfg, ctx, name="compare", backends=["crash", "sim"]), ctx, ui)
    assert outcome.failed == ["crash"] and not outcome.interrupted
    rows = read_runs(outcome.run_dir)
    assert [(r.backend, r.test) for r in rows] == [("crash", "pp64")] * 2 + [("sim", "pp64")] * 2 + [("sim", "tg8")] * 2
    assert read_meta(outcome.run_dir)["backends"]["crash"]["error"] == "RuntimeError: simulated crash in decode"
    assert any("crash failed" in line for line in ui.lines)
    assert not any(TINY_NOTE in line for line in ui.lines)  # simulated backends only: no model note


@pytest.mark.tries("fault", "backend crashing partway through a test")
def test_a_sweep_keeps_backends_resident_and_retries_after_a_crash(env):
    cfg = _cfg(env, **{"sweep.limits": "420,220"})
    with open_context(cfg, for_settings=True) as ctx:
        p = plan(cfg, ctx, name="sweep", backends=["crash"], settings=limit_settings(cfg, ctx.gpu))
        ui = QuietUI()
        outcome = run(p, ctx, ui)
        assert ctx.gpu.power_limit_mw() == 420_000  # the original limit is back
    waits = [line for line in ui.lines if line.endswith(" s)")]  # each setting's timed waits show a bar
    assert waits == ["  settling: crash pp64 under load (0.2 s)", "  idle baseline (models resident) (0.5 s)"] * 2
    assert outcome.failed == ["crash@420W", "crash@220W"]  # tried again at the next limit
    assert {(r.power_limit_req_w, r.test) for r in read_runs(outcome.run_dir)} == {(420.0, "pp64"), (220.0, "pp64")}


def test_virtual_time_takes_no_wall_time_and_repeats_exactly(env):
    cfg = _cfg(env, window_s=30.0, reps=2, tests="tg32")
    dirs = []
    for _ in range(2):
        t0 = time.monotonic()
        with open_context(cfg) as ctx:
            dirs.append(run(plan(cfg, ctx, name="bench-sim", backends=["sim"]), ctx, QuietUI()).run_dir)
        assert time.monotonic() - t0 < 10.0  # two 30 s windows of simulated time
    a, b = (read_runs(d) for d in dirs)
    assert a == b and a[0].window_s >= 30.0 and a[0].test_time.startswith("2027-01-01T00:00:")


def test_simulated_load_loads_the_card_only_while_a_backend_computes():
    clock = SimClock()
    gpu = FakeGPU(clock=clock, counter_tick_s=0)
    inner = SimBackend(gpu, clock)
    backend = SimulatedLoad(inner, gpu)
    assert backend.name == "sim" and gpu.power_usage_mw() == 30_000  # idle
    e0 = gpu.total_energy_mj()
    result = backend.prefill(list(range(90)))  # 90 tokens at 9000 tok/s: 10 ms at the 330 W full load
    assert result.elapsed_s == pytest.approx(0.01)
    assert gpu.total_energy_mj() - e0 == pytest.approx(3_300, abs=1)
    assert gpu.power_usage_mw() == 30_000  # idle again
    inner.prefill([1])  # unwrapped: the card never sees it
    assert gpu.total_energy_mj() - e0 == pytest.approx(3_300 + 30 * 1 / 9000 * 1000, abs=1)


def test_a_setting_labels_its_limit():
    assert Setting().label == "" and not Setting().changes_gpu
