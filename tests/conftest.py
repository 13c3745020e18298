"""Shared fixtures: a per-session model cache with the tiny synthetic checkpoint, and the `gpu` marker's rules.

Tests marked `gpu` skip without a CUDA GPU; with one they run read-only (LUCE_BENCH_READONLY=1: they share a real card
and must never change a setting); the other tests run without LUCE_BENCH_READONLY and with the real NVML's setters
refused (they set simulated cards only). The end of the run says how many GPU tests ran and how they went, or why they
skipped; one more line sums up the other skipped tests by reason (pyproject's -rfE lists only failures and errors).

Hypothesis runs derandomized (the same examples every run, so CI time and results are stable), without per-example
deadlines (a CLI invocation may take a while on a busy 2-core machine). With LUCE_BENCH_INVENTORY=FILE, collection
writes the `tries` markers (fault and bad-input tests) to FILE for tests/inventory.py.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from parallel import (  # noqa: F401 - pytest-xdist's hooks and -s/--trace's one process, registered from here
    hide_gpu_from_cpu_workers,
    in_gpu_dir,
    plan_is_on,
    pytest_cmdline_main,
    pytest_configure_node,
    pytest_xdist_auto_num_workers,
    pytest_xdist_make_scheduler,
    share_cores,
)

settings.register_profile(
    "luce-bench",
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("luce-bench")

# Non-default values of every build option the kernel keeps (cuda/mk_config.cuh): CI compiles each set for
# sm_80/86/89/90 with 0 spills (tests/test_kernel_build.py), the GPU tests check each for parity
# (tests/gpu/test_megakernel.py). Import with `from conftest import KERNEL_OPTION_SETS`.
KERNEL_OPTION_SETS = {
    "slot16": {"MK_SLOT_KB": 16},
    "slot24-spin60s": {"MK_SLOT_KB": 24, "MK_SPIN_LIMIT_NS": 60_000_000_000},
    "slot64": {"MK_SLOT_KB": 64},
    "gemm-stages2-bk32": {"MK_PF_CUBLAS": 0, "MK_PF_GSTAGES": 2, "MK_PF_GBK": 32},
    "gemm-rows128": {"MK_PF_CUBLAS": 0, "MK_PF_GBM": 128},
    "attn-plain": {"MK_PF_ATT_PLAIN": 1},
    "attn-whole": {"MK_PF_ATT_SPLIT": 0},
    "gdn-f32-cuda-cores": {"MK_PF_GDN_TC": 0},
    "prefill-own-gemm": {"MK_PF_CUBLAS": 0},
    "wk-half": {"MK_PF_WK_HALF": 1},
    "o-tags": {"MK_O_TAGS": 1},  # no barrier after an attention layer's o_proj (one residual transition, not two)
}

# Run-time tune settings (luce_bench/kernels/tune.py) other than the measured defaults: the GPU tests run each on the
# default build (no rebuild) against the reference and the default tune. Fields changed from the GPU's tune.
KERNEL_TUNE_SETS = {
    "inflight2-lm1": {"inflight": 2, "inflight_lm": 1},
    "uncapped": {"inflight": 0, "inflight_lm": 0},
    "deep-in-proj-mlp": {"deep_phases": 13, "inflight_deep": 3},  # three copies in flight in in_proj, gate|up, down
    "pause-ready2": {"pause_ready": 2},  # the pauses hold only while two copies are not yet consumed
    "no-pause": {"pause_mask": 0},
    "spin-sleep128": {"spin_sleep_ns": 128},
    "full-lm-head": {"lm_screen": 0},  # (teacher-forced logits read the full head anyway: the greedy test compares)
    # fewer blocks than SMs: blocks run several attention and GDN items (the tagged head merge's waits across items,
    # NOTES.md v22), the LM head unscreened below 61 blocks
    "grid8": {"grid": 8},
    "grid61": {"grid": 61},
}


def selected_option_sets(request: pytest.FixtureRequest, test_name: str) -> list[str]:
    """The KERNEL_OPTION_SETS names that this run's `test_name[name]` items test (-k may select a few), sorted."""
    items = request.session.items
    return sorted({i.callspec.params["name"] for i in items if getattr(i, "originalname", None) == test_name})


@functools.lru_cache(maxsize=1)
def cuda_gpu_reason() -> str | None:
    """None if a CUDA GPU is usable through torch, else why not."""
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return "no CUDA GPU visible to torch"
    return None


def _inventory(items: list[pytest.Item], path: str) -> None:
    """Write (kind, what, test id, hypothesis max_examples or None) of every `tries`-marked item to `path`."""
    out = []
    for item in items:
        for mark in item.iter_markers("tries"):
            hyp = getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None)
            out.append([*mark.args, item.nodeid, hyp.max_examples if hyp is not None else None])
    with open(path, "w") as f:
        json.dump(out, f)


def pytest_configure(config: pytest.Config) -> None:
    hide_gpu_from_cpu_workers(config)  # first: collection asks CUDA whether there is a GPU
    share_cores(config)  # before anything starts torch's or BLAS's threads


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("LUCE_BENCH_INVENTORY"):
        _inventory(items, os.environ["LUCE_BENCH_INVENTORY"])
    _gpu_tests_live_in_tests_gpu(config, items)
    gpu_items = [i for i in items if is_gpu_test(i)]
    if not gpu_items:
        return
    reason = cuda_gpu_reason()
    if reason:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=f"gpu test: {reason}"))
    elif _xdist_worker(config) and not plan_is_on(config):
        # under another --dist mode pytest-xdist's workers would run them side by side on one card (timing it, or two
        # persistent megakernels competing for its SMs): they are left out, and the end of the run says so. With
        # `-n N` alone, tests/parallel.py keeps them together on one worker.
        items[:] = [i for i in items if not is_gpu_test(i)]
        config.hook.pytest_deselected(items=gpu_items)


def is_gpu_test(item: pytest.Item) -> bool:
    """The `gpu` marker (not `"gpu" in item.keywords`, which also holds the tests/gpu/ folder's name)."""
    return item.get_closest_marker("gpu") is not None


GPU_DIR = Path(__file__).parent / "gpu"
_MISPLACED = pytest.StashKey[str]()


def _gpu_tests_live_in_tests_gpu(config: pytest.Config, items: list[pytest.Item]) -> None:
    """tests/parallel.py keeps tests/gpu/ on one worker: a `gpu` test elsewhere (or a CPU test there) is refused.

    One process: a usage error. An xdist worker's usage error would reach the user as an unrelated INTERNALERROR, so
    there each misplaced test fails at its setup with the reason instead.
    """
    for item in items:
        in_gpu_dir = Path(item.path).parent == GPU_DIR
        if is_gpu_test(item) != in_gpu_dir:
            where = "outside tests/gpu/" if not in_gpu_dir else "in tests/gpu/ without the gpu marker"
            why = f"{item.nodeid}: a test {where}; the GPU tests live in tests/gpu/, and only they"
            if not _xdist_worker(config):
                raise pytest.UsageError(why)
            item.stash[_MISPLACED] = why


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if _MISPLACED in item.stash:
        pytest.fail(item.stash[_MISPLACED], pytrace=False)


def _xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _xdist_controller_leaving_gpu_tests_out(config: pytest.Config) -> bool:
    """The controller of an xdist run under a --dist mode other than tests/parallel.py's."""
    return not _xdist_worker(config) and config.getoption("dist", "no") not in ("no", "load")


@pytest.fixture(autouse=True)
def _read_only_by_kind(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """GPU tests run read-only; the others set simulated cards only, whatever the caller's LUCE_BENCH_READONLY.

    `make test` under LUCE_BENCH_READONLY=1 on a shared GPU: the variable is dropped for the tests without the marker,
    whose simulated cards must take settings, and the real NVML's setters refuse instead.
    """
    if request.node.get_closest_marker("gpu") is not None:
        monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
        return
    monkeypatch.delenv("LUCE_BENCH_READONLY", raising=False)
    try:
        import pynvml
    except ImportError:
        return
    for name in dir(pynvml):
        if name.startswith(REAL_NVML_SETTERS) and callable(getattr(pynvml, name)):
            monkeypatch.setattr(pynvml, name, _refusing(name, getattr(pynvml, name)))


# Names of pynvml calls that change a card or the system (luce-bench itself calls four of them).
REAL_NVML_SETTERS = (
    "nvmlDeviceSet",
    "nvmlDeviceReset",
    "nvmlDeviceClear",
    "nvmlDeviceModify",
    "nvmlDeviceRemove",
    "nvmlDeviceCreate",
    "nvmlDevicePowerSmoothing",
    "nvmlDeviceWorkloadPowerProfile",
    "nvmlGpuInstance",
    "nvmlComputeInstanceDestroy",
    "nvmlSet",
    "nvmlSystemSet",
    "nvmlUnitSet",
    "nvmlGpmSet",
)


def _refusing(name: str, setter: Any) -> Any:
    """`setter` that raises instead (same signature: tests that autospec pynvml still check argument counts)."""

    @functools.wraps(setter)
    def refuse(*args: Any, **kwargs: Any) -> None:  # pytest.fail: no `except Exception` in the code can swallow it
        pytest.fail(f"a test without the gpu marker called the real pynvml.{name}: refused (a shared card)")

    return refuse


def gpu_outcomes(reports: dict[str, list[Any]]) -> dict[str, str]:
    """{test id: passed / failed / skipped} of the `gpu`-marked tests in pytest's reports (errors count as failed)."""
    out: dict[str, str] = {}
    for outcome in ("passed", "skipped", "failed", "error"):
        for rep in reports.get(outcome, []):
            if _gpu_report(rep):
                out[rep.nodeid] = "failed" if outcome == "error" else outcome
    return out


def gpu_summary(outcomes: dict[str, str], skip_reason: str | None, seconds: float | None = None) -> str | None:
    """One line on the GPU tests of this run (None when none was collected); `seconds`: the time they took."""
    if not outcomes:
        return None
    counts = {k: sum(v == k for v in outcomes.values()) for k in ("passed", "failed", "skipped")}
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n)
    if skip_reason:
        return f"GPU tests (marker gpu): {text}: {skip_reason}; on a machine with an NVIDIA GPU `make test` runs them"
    took = ""
    if seconds:
        took = f" in {int(seconds // 60)} min {int(seconds % 60)} s" if seconds >= 60 else f" in {seconds:.0f} s"
    return f"GPU tests (marker gpu): {text}{took}, read-only (LUCE_BENCH_READONLY=1)"


# setup + call + teardown of every `gpu`-marked test of this run: fixtures count where a GPU test set them up first
_GPU_TEST_S = [0.0]


def _gpu_report(rep: Any) -> bool:
    """A report of a GPU test: by its marker, or by its folder (xdist's report of a crashed worker has no keywords)."""
    return "gpu" in getattr(rep, "keywords", {}) or in_gpu_dir(getattr(rep, "nodeid", ""))


def pytest_runtest_logreport(report: Any) -> None:
    if _gpu_report(report):
        _GPU_TEST_S[0] += getattr(report, "duration", 0.0) or 0.0


def other_skips(reports: dict[str, list[Any]]) -> str | None:
    """One line on the skipped tests that are not GPU tests, by reason (pytest's -rfE no longer lists each skip)."""
    reasons: dict[str, int] = {}
    for rep in reports.get("skipped", []):
        if _gpu_report(rep):
            continue
        longrepr = getattr(rep, "longrepr", None)
        reason = str(longrepr[2] if isinstance(longrepr, tuple) else longrepr).removeprefix("Skipped: ")
        reasons[reason] = reasons.get(reason, 0) + 1
    if not reasons:
        return None
    by_reason = "; ".join(f"{n}x {reason}" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return f"other tests skipped: {sum(reasons.values())} ({by_reason})"


XDIST_GPU_LINE = (
    "GPU tests (marker gpu): not run: under this --dist mode pytest-xdist's workers would share the card; "
    "`make test` (`-n N` alone keeps them on one worker), or `make test-gpu`, runs them"
)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    reason = cuda_gpu_reason()
    gpu = gpu_summary(gpu_outcomes(terminalreporter.stats), reason, _GPU_TEST_S[0])
    if gpu is None and reason is None and _xdist_controller_leaving_gpu_tests_out(terminalreporter.config):
        gpu = XDIST_GPU_LINE
    for line in (gpu, other_skips(terminalreporter.stats)):
        if line:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session", autouse=True)
def _session_state_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The same for fixtures wider than a test (a module's compare run), set before any of them starts.

    Without it they ran in the user's state folder: they left locks and journals there, and a sweep the user ran beside
    the suite (holding its simulated card's lock) made them refuse to measure.
    """
    path = str(tmp_path_factory.mktemp("luce-state-session"))
    os.environ["LUCE_BENCH_STATE_DIR"] = path
    return path


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test keeps its power-limit journals and locks in a folder of its own (a test may set another).

    Never the user's folder, and no test sees another's lock (a compare refuses to measure while a sweep holds the
    lock of its GPU, and the simulated cards of parallel tests share their UUIDs).
    """
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path_factory.mktemp("luce-state")))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Synthetic checkpoints go to a per-session cache unless the caller set one (so CI never touches ~/.cache)."""
    path = os.environ.get("LUCE_BENCH_CACHE") or str(tmp_path_factory.mktemp("luce-cache"))
    os.environ["LUCE_BENCH_CACHE"] = path
    return path


@pytest.fixture(scope="session")
def tiny_model(_model_cache: str):  # noqa: ANN201 - ModelSpec
    """The tiny synthetic checkpoint (generated once per session)."""
    from luce_bench.model.resolve import resolve_model

    return resolve_model("tiny", progress=False)


@pytest.fixture(scope="session")
def hf32_tiny(tiny_model):  # noqa: ANN001, ANN201
    """The HF backend computing in float32 on the tiny model, on CPU (shared; call reset() before use)."""
    from luce_bench.backends.hf import HFBackend

    b = HFBackend("float32")
    b.load(tiny_model, "cpu")
    yield b
    b.close()


@pytest.fixture(scope="session")
def hf_tiny(tiny_model):  # noqa: ANN001, ANN201
    """The HF backend loaded with the tiny model on CPU (shared; call reset() before use)."""
    from luce_bench.backends.hf import HFBackend

    b = HFBackend()
    b.load(tiny_model, "cpu")
    yield b
    b.close()


def simulated_compare(tmp: Path, config_yaml: str) -> Path:
    """The run directory of `compare` with the simulated backend on the simulated GPU under `config_yaml`."""
    from typer.testing import CliRunner

    from luce_bench.cli import app

    cfg = tmp / "sim.yaml"
    cfg.write_text(config_yaml)
    args = ["compare", "--no-megakernel", "--baselines", "sim", "--fake-gpu", "-c", str(cfg), "--model", "tiny"]
    result = CliRunner().invoke(app, [*args, "-o", str(tmp / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp / "runs").iterdir()
    return run
