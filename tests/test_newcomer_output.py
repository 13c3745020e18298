"""What a newcomer sees: the run's output, `make test`'s GPU line and `info`'s missing pieces.

`compare` skips default baselines that cannot run (with the reason) instead of refusing, library warnings land in the
run's log and not between the progress bars, HF calls transformers without its deprecated argument, `make test` says
what became of the GPU tests, and `info` names what is missing and the fix.
"""

from __future__ import annotations

import csv
import re
import warnings

import conftest
import pytest
from conftest import gpu_outcomes, gpu_summary, other_skips
from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.run_log import warnings_to_log

runner = CliRunner()
FAST = ["--reps", "1", "--window-s", "0.2", "--warmup-s", "0.05", "--rep-gap-max-s", "0", "--tests", "tg4"]


def test_default_baselines_that_cannot_run_are_skipped_named_ones_are_refused(tmp_path, tiny_model, monkeypatch):
    from luce_bench.backends.hf_compiled import HFCompiledBackend
    from luce_bench.backends.llamacpp import LlamaCppBackend

    monkeypatch.setattr(LlamaCppBackend, "unavailable_reason", classmethod(lambda cls: "llama_cpp is not installed"))
    # on a GPU machine it could run: the same answer there
    monkeypatch.setattr(HFCompiledBackend, "unavailable_reason", classmethod(lambda cls: "torch sees no CUDA GPU"))
    out = tmp_path / "runs"
    result = runner.invoke(app, ["compare", "--fake-gpu", "--model", "tiny", "-o", str(out), *FAST])
    assert result.exit_code == 0, result.output
    assert "skipping llamacpp: llama_cpp is not installed" in " ".join(result.output.split())
    (run_dir,) = out.iterdir()
    with open(run_dir / "runs.csv") as f:
        assert {row["backend"] for row in csv.DictReader(f)} == {"hf"}
    named = runner.invoke(app, ["compare", "--fake-gpu", "--baselines", "llamacpp,hf", "-o", str(tmp_path / "x")])
    assert named.exit_code == 2 and "backend llamacpp cannot run here: llama_cpp is not installed" in named.output


def test_a_model_the_megakernel_cannot_run_skips_it_by_default_and_refuses_it_by_name(
    tmp_path, tiny_model, monkeypatch
):
    """As on a GPU machine, where the megakernel can run, with the tiny model (other shapes than the kernel's)."""
    from luce_bench.backends.megakernel import MegakernelBackend

    monkeypatch.setattr(MegakernelBackend, "unavailable_reason", classmethod(lambda cls: None))
    out = tmp_path / "runs"
    argv = ["compare", "--fake-gpu", "--model", "tiny", "--baselines", "hf", "-o", str(out), *FAST]
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "skipping megakernel: the megakernel supports only the exact Qwen3.5-0.8B shapes; this model differs" in said
    (run_dir,) = out.iterdir()
    with open(run_dir / "runs.csv") as f:
        assert {row["backend"] for row in csv.DictReader(f)} == {"hf"}
    named = runner.invoke(app, ["bench", "megakernel", "--fake-gpu", "--model", "tiny", "-o", str(tmp_path / "x")])
    assert named.exit_code == 2 and named.output.startswith("error: the megakernel supports only the exact")
    assert not (tmp_path / "x").exists()


def test_nothing_runnable_is_one_line_naming_every_reason(tmp_path, monkeypatch):
    from luce_bench.backends.hf import HFBackend
    from luce_bench.backends.hf_compiled import HFCompiledBackend
    from luce_bench.backends.llamacpp import LlamaCppBackend

    for cls, why in ((HFBackend, "torch"), (HFCompiledBackend, "inductor"), (LlamaCppBackend, "llama_cpp")):
        monkeypatch.setattr(cls, "unavailable_reason", classmethod(lambda cls, why=why: f"{why} is not installed"))
    result = runner.invoke(app, ["compare", "--fake-gpu", "-o", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert said.startswith("error: no backend can run here: "), said
    for why in ("llamacpp: llama_cpp", "hf: torch", "hf-compiled: inductor"):
        assert f"{why} is not installed" in said
    assert "megakernel: " in said  # no CUDA GPU (CI), or the tiny model is not its shapes (a GPU machine)
    assert not (tmp_path / "runs").exists()


def test_warnings_during_a_run_go_to_its_log_only(tmp_path, capsys):
    console = warnings.showwarning
    with warnings_to_log(tmp_path) as log:
        assert not log.exists()  # created only when there is something to write
        warnings.warn("`past_key_values` is deprecated", FutureWarning, stacklevel=1)
    assert "FutureWarning: `past_key_values` is deprecated" in log.read_text()
    assert capsys.readouterr().err == "" and warnings.showwarning is console  # the console is back afterwards


def test_hf_decodes_without_the_deprecated_cache_argument(hf_tiny):
    from types import SimpleNamespace

    from luce_bench.backends.hf_paths import cache_kwarg

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        hf_tiny.reset()
        hf_tiny.prefill([1, 2, 3, 4])
        assert len(hf_tiny.decode(4).tokens) == 4
    assert cache_kwarg(SimpleNamespace(forward=lambda input_ids, cache=None: None)) == "cache"
    assert cache_kwarg(SimpleNamespace(forward=lambda input_ids, past_key_values=None: None)) == "past_key_values"


class _Report:
    def __init__(self, nodeid: str, gpu: bool) -> None:
        self.nodeid, self.keywords = nodeid, {"gpu": 1} if gpu else {}


@pytest.fixture
def reports():
    return {
        "passed": [_Report("a", True), _Report("b", True), _Report("cpu", False)],
        "failed": [_Report("c", True)],
        "error": [_Report("a", True)],  # a teardown error of a test that passed
        "skipped": [_Report("d", True)],
    }


def test_the_gpu_test_summary_counts_what_ran(reports):
    outcomes = gpu_outcomes(reports)
    assert outcomes == {"a": "failed", "b": "passed", "c": "failed", "d": "skipped"}
    crashed = _Report("tests/gpu/test_x.py::t", False)  # xdist's report of a crashed worker carries no keywords
    assert gpu_outcomes({"failed": [crashed]}) == {"tests/gpu/test_x.py::t": "failed"}
    assert (
        gpu_summary(outcomes, None)
        == "GPU tests (marker gpu): 1 passed, 2 failed, 1 skipped, read-only (LUCE_BENCH_READONLY=1)"
    )
    skipped = {"x": "skipped", "y": "skipped"}
    assert gpu_summary(skipped, "no CUDA GPU visible to torch") == (
        "GPU tests (marker gpu): 2 skipped: no CUDA GPU visible to torch; on a machine with an NVIDIA GPU `make test` "
        "runs them"
    )
    assert gpu_summary({}, None) is None
    assert gpu_summary(outcomes, None, 754.6) == (  # the time the GPU tests took
        "GPU tests (marker gpu): 1 passed, 2 failed, 1 skipped in 12 min 34 s, read-only (LUCE_BENCH_READONLY=1)"
    )
    assert gpu_summary(outcomes, None, 41.7).endswith(" 1 skipped in 42 s, read-only (LUCE_BENCH_READONLY=1)")


def test_the_other_skipped_tests_are_one_line_by_reason():
    def skipped(nodeid: str, reason: str, gpu: bool = False) -> _Report:
        rep = _Report(nodeid, gpu)
        rep.longrepr = ("tests/x.py", 1, f"Skipped: {reason}")
        return rep

    torch = "could not import 'torch': No module named 'torch'"
    reports = {
        "skipped": [skipped("a", torch), skipped("b", "nvcc not found"), skipped("c", torch), skipped("g", "x", True)]
    }
    assert (
        other_skips(reports) == f"other tests skipped: 3 (2x {torch}; 1x nvcc not found)"
    )  # the GPU test: its own line
    assert other_skips({"skipped": [skipped("g", "no GPU", True)]}) is None


def test_the_other_tests_set_simulated_cards_only(monkeypatch):
    """Whatever the caller's LUCE_BENCH_READONLY, a test without the marker runs without it, and a real setter fails."""
    import os

    pynvml = pytest.importorskip("pynvml")
    assert "LUCE_BENCH_READONLY" not in os.environ
    for setter, args in (
        (pynvml.nvmlDeviceSetPowerManagementLimit, (None, 100)),
        (pynvml.nvmlDeviceResetGpuLockedClocks, (None,)),
    ):
        with pytest.raises(pytest.fail.Exception, match="refused"):
            setter(*args)


def test_info_names_the_missing_pieces_and_their_fixes(monkeypatch):
    from luce_bench.info import setup_gaps
    from luce_bench.setup import probe

    hw = probe.Hardware(probe.Gpu("NVIDIA H200", "90", "570.86.15", (12, 8)), None, probe.Toolkit(), frozenset())
    me = probe.PythonFacts("/v/bin/python", torch="2.13.0+cpu", llama_cpp="0.3.36")
    monkeypatch.setattr(probe, "probe_hardware", lambda: hw)
    monkeypatch.setattr(probe, "python_facts", lambda: me)
    got = {(g["piece"], g["fix"]) for g in setup_gaps()}
    toolkit_fix = "install the CUDA toolkit (nvcc, cuBLAS) or put its bin/ on PATH, then make setup"
    expected = {
        ("nvcc and cuBLAS", toolkit_fix),
        ("nvcc", toolkit_fix),
        ("torch", "make setup"),
        ("fla-core", "make setup"),
    }
    assert got == expected
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "Missing here" in result.output and "2.13.0+cpu does not see the" in result.output


class _Item:
    """What the collection hook reads of an item; `in_gpu_dir` defaults to where the marker says it belongs."""

    def __init__(self, name: str, gpu: bool, in_gpu_dir: bool | None = None) -> None:
        folder = conftest.GPU_DIR if (gpu if in_gpu_dir is None else in_gpu_dir) else conftest.GPU_DIR.parent
        self.name, self.path = name, folder / "test_x.py"
        self.nodeid = f"{folder.relative_to(conftest.GPU_DIR.parents[1]).as_posix()}/test_x.py::{name}"
        self.keywords = {"gpu": 1} if gpu or "/gpu/" in self.nodeid else {}  # pytest's: markers and folder names
        self.marks: list = [pytest.mark.gpu.mark] if gpu else []
        self.stash = pytest.Stash()

    def add_marker(self, mark) -> None:  # noqa: ANN001
        self.marks.append(mark)

    def get_closest_marker(self, name: str):  # noqa: ANN201
        return next((m for m in self.marks if m.name == name), None)


class _Config:
    """What the collection hook reads: the hooks' caller and, in an xdist worker, its workerinput."""

    def __init__(self, worker: bool, plan: bool = False) -> None:
        self.deselected: list = []
        self.hook = type("Hook", (), {"pytest_deselected": lambda _, items: self.deselected.extend(items)})()
        if worker:
            self.workerinput = {"workerid": "gw0", **({"gpu_together": True} if plan else {})}


@pytest.mark.parametrize(
    ("worker", "plan"),
    [(False, False), (True, True), (True, False)],
    ids=["one-process", "xdist-n-alone", "xdist-other-dist-mode"],
)
def test_gpu_tests_run_unless_an_xdist_mode_would_spread_them_over_workers(monkeypatch, worker, plan):
    monkeypatch.setattr(conftest, "cuda_gpu_reason", lambda: None)  # a machine with a GPU
    items = [_Item("cpu", False), _Item("gpu", True)]
    config = _Config(worker, plan)
    conftest.pytest_collection_modifyitems(config, items)
    left_out = worker and not plan
    assert [i.name for i in items] == (["cpu"] if left_out else ["cpu", "gpu"])
    assert [i.name for i in config.deselected] == (["gpu"] if left_out else [])
    monkeypatch.setattr(conftest, "cuda_gpu_reason", lambda: "no CUDA GPU visible to torch")
    items = [_Item("cpu", False), _Item("gpu", True)]
    conftest.pytest_collection_modifyitems(_Config(worker, plan), items)  # no GPU: skipped with the reason, as always
    assert len(items) == 2 and items[1].marks[-1].kwargs["reason"] == "gpu test: no CUDA GPU visible to torch"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (_Item("g", True, in_gpu_dir=False), "tests/test_x.py::g: a test outside tests/gpu/;"),
        (_Item("c", False, in_gpu_dir=True), "tests/gpu/test_x.py::c: a test in tests/gpu/ without the gpu marker"),
    ],
)
def test_a_gpu_test_outside_tests_gpu_or_a_cpu_test_inside_is_refused(item, message):
    """tests/parallel.py keeps tests/gpu/ on one worker, so the directory and the marker must agree.

    One process: a usage error. In an xdist worker (whose usage error would reach the user as an unrelated
    INTERNALERROR) the test fails at its setup with the same reason, and the others run.
    """
    with pytest.raises(pytest.UsageError, match=re.escape(message)):
        conftest.pytest_collection_modifyitems(_Config(False), [_Item("cpu", False), item])
    fine = _Item("cpu", False)
    conftest.pytest_collection_modifyitems(_Config(True, plan=True), [fine, item])
    conftest.pytest_runtest_setup(fine)
    with pytest.raises(pytest.fail.Exception, match=re.escape(message)):
        conftest.pytest_runtest_setup(item)
