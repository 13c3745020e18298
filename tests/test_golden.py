"""Golden runs: a fake-GPU `compare` and `sweep` in virtual time give exactly the CSVs recorded in tests/golden/.

Everything that could vary is fixed: the simulated GPU, the `sim` backend, seeded prompts and gaps, a seeded limit
order, and virtual time (luce_bench.clock.SimClock) for the GPU model, the sampler, the runner's clock and sleeps and
the rows' `test_time`. Recorded before the pipeline refactor (issue 13); the refactor must reproduce them.
`LUCE_BENCH_UPDATE_GOLDEN=1` rewrites the files (only when a change of the numbers is intended).
"""

from __future__ import annotations

import csv
import functools
import os
import types
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.clock import SimClock, rfc3339

GOLDEN = Path(__file__).resolve().parent / "golden"
CONFIG = """\
tests: [pp512, tg32]
reps: 3
warmup_s: 0.5
window_s: 2.0
rep_gap_max_s: 0.4
cooldown:
  max_s: 3.0
  target_delta_c: 1.0
sweep:
  settle_s: 0.5
  idle_s: 1.0
"""
RUNS = {
    "compare": ["compare", "--no-megakernel", "--baselines", "sim", "--fake-gpu"],
    "sweep": ["sweep", "--fake-gpu", "--limits", "420,300,220,150", "--shuffle", "--seed", "5"],
}
FILES = {"compare": ("runs.csv", "summary.csv", "samples.csv"),
         "sweep": ("runs.csv", "summary.csv", "samples.csv", "sweet_spot.csv")}


@pytest.fixture
def virtual_time(monkeypatch, tmp_path):
    """Route every clock of the pre-refactor pipeline through one SimClock (the harness of the recording)."""
    import luce_bench.gpu as gpu_pkg
    from luce_bench import cpu_energy, runner, sampler, session, sweep
    from luce_bench.backends import sim

    clock = SimClock()
    open_gpu = gpu_pkg.open_gpu

    def open_virtual_gpu(*args, **kwargs):
        gpu = open_gpu(*args, **kwargs)
        if getattr(gpu, "preset", None) is not None:
            gpu.clock = clock
            gpu.__post_init__()
        return gpu

    class VirtualSampler(sampler.Sampler):
        def __init__(self, gpu, period_s=0.1, clock_=None, read_average=True):
            super().__init__(gpu, period_s, clock=clock, read_average=read_average)

        def start(self):
            self._cancel = clock.every(self.period_s, self.poll_once)
            self.ready.set()
            return self

        def stop(self):
            if getattr(self, "_cancel", None):
                self._cancel()

    monkeypatch.setattr(gpu_pkg, "open_gpu", open_virtual_gpu)
    monkeypatch.setattr(sampler, "Sampler", VirtualSampler)
    measure = functools.partial(runner.Measure, clock=clock, sleep=clock.sleep)
    monkeypatch.setattr(session, "Measure", measure)
    monkeypatch.setattr(sweep, "Measure", measure)
    monkeypatch.setattr(sim, "time", types.SimpleNamespace(perf_counter=clock, sleep=clock.sleep))
    monkeypatch.setattr(runner, "rfc3339", lambda: rfc3339(clock.unix_s()))
    monkeypatch.setattr(cpu_energy.Rapl, "available", classmethod(lambda cls, root=None: "off in virtual time"))
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_STATE", raising=False)
    monkeypatch.delenv("LUCE_BENCH_READONLY", raising=False)
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_NO_PERMISSION", raising=False)
    return clock


def _run(kind: str, tmp_path: Path) -> Path:
    cfg = tmp_path / "golden.yaml"
    cfg.write_text(CONFIG)
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, [*RUNS[kind], "-c", str(cfg), "-o", str(out), "--model", "tiny"])
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    return run_dir


def _read(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


@pytest.mark.parametrize("kind", ["compare", "sweep"])
def test_golden_csvs(kind, tmp_path, virtual_time, tiny_model):
    run_dir = _run(kind, tmp_path)
    for name in FILES[kind]:
        golden = GOLDEN / kind / name
        if os.environ.get("LUCE_BENCH_UPDATE_GOLDEN") == "1":
            golden.parent.mkdir(parents=True, exist_ok=True)
            golden.write_bytes((run_dir / name).read_bytes())
        head, rows = _read(run_dir / name)
        want_head, want_rows = _read(golden)
        assert head == want_head, name
        assert len(rows) == len(want_rows), name
        for i, (got, want) in enumerate(zip(rows, want_rows, strict=True)):
            assert got == want, f"{name} row {i + 1}"
