"""hf-compiled on the CPU: the static cache and the decode step compiled by inductor, against eager HF.

The tiny model computes in float32 here, where compiled and eager differ only by the order of float32 operations, so
their greedy tokens must agree step for step (near ties counted) and their logits within 1e-3 relative L2. bf16 and
CUDA graphs are checked on the GPU (tests/gpu/test_hf_compiled_gpu.py). The first inductor compile of a session takes
~1 min on 2 cores (later ones hit inductor's cache).

The compile runs first in a child process: where inductor's CPU code crashes the interpreter (torch 2.11+cu130 on the
H200 machine: "corrupted double-linked list", SIGABRT, in the compiled step's first call) or hangs, the module skips
with that reason instead of aborting the whole test run. (A best-effort check: the child repeats the fixture's load,
not the state of this process.) Users never compile on the CPU (hf-compiled refuses a CPU device), and the GPU's
compile is tested in tests/gpu/test_hf_compiled_gpu.py. The child warms inductor's cache, so the fixture's own compile
that follows costs ~10 s.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from faultkit import check_rows, only_run_dir, status
from typer.testing import CliRunner

from luce_bench import backends, config
from luce_bench.agreement import follow
from luce_bench.backends.base import BackendUnavailable
from luce_bench.backends.hf_compiled import HFCompiledBackend
from luce_bench.backends.hf_paths import cuda_of_version_file, torch_cuda_version
from luce_bench.backends.llamacpp import LlamaCppBackend
from luce_bench.cli import app
from luce_bench.measure import make_prompt, prepare_context, run_once, start_iteration

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

runner = CliRunner()
CACHE = 64
FAST = ["--reps", "1", "--window-s", "0.2", "--warmup-s", "0", "--rep-gap-max-s", "0", "--cooldown-max-s", "0"]


# The fixture's load, in a child process (LUCE_BENCH_CACHE, set by conftest's _model_cache, finds the same checkpoint)
_CHILD_LOAD = f"""
from luce_bench.backends.hf_compiled import HFCompiledBackend
from luce_bench.model.resolve import resolve_model
b = HFCompiledBackend("float32", max_cache_len={CACHE}, allow_cpu=True)
b.load(resolve_model("tiny", progress=False), "cpu")
b.close()
"""


def _no_core_files() -> None:  # a killed child leaves no core dump in the working tree
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def cpu_compile_crash(timeout_s: float = 600) -> str | None:
    """Why compiling on the CPU kills (or hangs) a process: the signal and the last line on stderr; None where it runs.

    An ordinary failure (an exception, exit status > 0) is not a crash: the fixture then fails with its message.
    """
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHILD_LOAD],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout_s,
            preexec_fn=_no_core_files,
        )
    except subprocess.TimeoutExpired:
        return f"inductor's CPU compile of the tiny model hangs with torch {torch.__version__} (> {timeout_s:.0f} s)"
    if proc.returncode >= 0:
        return None
    try:
        killed_by = signal.Signals(-proc.returncode).name
    except ValueError:
        killed_by = f"signal {-proc.returncode}"
    said = [line.strip() for line in proc.stderr.splitlines() if line.strip()]  # glibc's word comes last, if any
    return (
        f"inductor's CPU code kills the process with torch {torch.__version__} here "
        f"({killed_by}: {said[-1] if said else 'nothing on stderr'}); hf-compiled on the GPU: tests/gpu"
    )


@pytest.fixture(scope="module")
def compiled(tiny_model):
    """hf-compiled, float32, on the CPU (inductor, mode "default"): loaded, compiled, warmed up, self-checked."""
    crash = cpu_compile_crash()
    if crash:
        pytest.skip(crash)
    b = HFCompiledBackend("float32", max_cache_len=CACHE, allow_cpu=True)
    b.load(tiny_model, "cpu")
    yield b
    b.close()


@pytest.fixture
def eager(hf32_tiny):
    """The eager `hf` backend, float32, on the same weights."""
    return hf32_tiny


def test_greedy_tokens_agree_with_eager_hf_on_its_history(compiled, eager, tiny_model):
    prompt = make_prompt(12, tiny_model.config.vocab_size, 0)  # load checked another prompt (test below)
    agreement, rel = follow(compiled, eager, prompt, 32)
    assert agreement.ok, agreement.text()
    assert agreement.agree + agreement.near_ties == 32
    assert rel.max() <= 1e-3, rel.max()


def test_load_compiled_warmed_up_and_checked_itself(compiled):
    info = compiled.info()
    assert info["cache"] == "static" and info["max_cache_len"] == CACHE
    assert info["compile_mode"] == "default" and info["compile_backend"] == "inductor"  # CPU: no CUDA graphs
    assert info["compile_s"] > 0 and info["warmup_s"] > 0 and info["check_s"] > 0
    assert info["graphs"] >= 1 and info["cudagraph_skips"] == 0  # mode "default" asks for no CUDA graphs
    check = info["greedy_vs_eager"]
    assert check["steps"] == compiled.check_steps and check["mismatches"] == [] and check["same_function"]
    assert check["agree"] + check["near_ties"] == check["steps"]
    assert info["gdn_path"] in ("pure-torch fallback", "fla kernels")
    assert f"StaticCache({CACHE} positions)" in info["setup"] and "torch.compile mode=default" in info["setup"]
    assert "compiled in" in info["setup"]
    json.dumps(info)  # meta.json takes it as it is


def test_pp_and_tg_iterations_reuse_the_compiled_step(compiled, eager, tiny_model):
    """Tests of every kind and length run on the step compiled at load: no graph is compiled after it."""
    prompt = make_prompt(CACHE, tiny_model.config.vocab_size, 5)
    for text in ("pp16", "tg8", "pp40", "tg31", "pp1", "tg1"):
        n, elapsed_s = run_once(compiled, config.TestSpec.parse(text), prompt)
        assert n == int(text[2:]) and elapsed_s > 0
    eager.reset()
    compiled.reset()
    assert compiled.prefill(prompt[:40]).tokens == eager.prefill(prompt[:40]).tokens
    assert compiled.info()["graphs_compiled_after_load"] == 0


def _cache_addresses(backend) -> list[int]:
    found = []
    for layer in backend._static.layers:
        for value in vars(layer).values():
            for t in value.values() if isinstance(value, dict) else [value]:
                if isinstance(t, torch.Tensor):
                    found.append(t.data_ptr())
    return found


def test_a_depth_test_goes_back_to_its_context_every_iteration(compiled, tiny_model):
    """tg8@d40 as the pipeline runs it: every iteration decodes from the kept context, in the cache's own tensors."""
    test = config.TestSpec.parse("tg8@d40")
    prompt = make_prompt(test.depth + test.n, tiny_model.config.vocab_size, 4)
    compiled.reset()
    compiled.prefill(prompt[: test.depth])
    fresh = compiled.decode(test.n).tokens
    prepare_context(compiled, test, prompt)
    addresses = _cache_addresses(compiled)
    runs = []
    for _ in range(4):  # four iterations need 40 + 4 x 8 positions if the fill were not restored: more than 64
        start_iteration(compiled, test, prompt)
        runs.append(compiled.decode(test.n).tokens)
        compiled.reset()
        compiled.prefill(prompt[5:20])  # another sequence in between
    assert runs == [fresh] * 4
    assert _cache_addresses(compiled) == addresses  # the compiled step's buffers, updated in place
    assert compiled.info()["graphs_compiled_after_load"] == 0


def test_reset_starts_a_new_sequence(compiled, tiny_model):
    prompt = make_prompt(10, tiny_model.config.vocab_size, 9)
    compiled.reset()
    a = compiled.prefill(prompt).tokens + compiled.decode(12).tokens
    compiled.reset()
    b = compiled.prefill(prompt).tokens + compiled.decode(12).tokens
    assert a == b


def test_a_sequence_longer_than_the_static_cache_is_refused(compiled, tiny_model):
    prompt = make_prompt(CACHE - 4, tiny_model.config.vocab_size, 3)
    compiled.reset()
    compiled.prefill(prompt)
    done = compiled.decode(4)  # fills the cache exactly
    full = f"the static cache holds {CACHE} positions; this sequence needs {CACHE + 1}"
    with pytest.raises(RuntimeError, match=full):
        compiled.decode(1)
    compiled.reset()  # the refused step left the cache as it was
    compiled.prefill(prompt)
    assert compiled.decode(4).tokens == done.tokens


def test_the_static_cache_alone_without_compile(tiny_model, eager):
    b = HFCompiledBackend("float32", max_cache_len=CACHE, compile_mode="none", allow_cpu=True)
    b.load(tiny_model, "cpu")
    try:
        info = b.info()
        assert info["compile_mode"] == "none" and info["compile_backend"] is None and info["graphs"] == 0
        assert "LUCE_BENCH_HF_COMPILE=none" in info["setup"]
        agreement, rel = follow(b, eager, make_prompt(12, tiny_model.config.vocab_size, 4), 24)
        assert agreement.ok and agreement.agree + agreement.near_ties == 24 and rel.max() <= 1e-3
    finally:
        b.close()


def test_a_cpu_device_is_unavailable_unless_allowed(tiny_model):
    b = HFCompiledBackend()
    with pytest.raises(BackendUnavailable, match="no CUDA device to compile the decode step for"):
        b.load(tiny_model, "cpu")
    assert b._model is None  # refused before loading any weight


@pytest.mark.parametrize(
    ("text", "cuda"),
    [
        ("__version__ = '2.13.0+cpu'\ncuda: Optional[str] = None\nhip = None\n", None),
        ("__version__ = '2.11.0+cu130'\ncuda: Optional[str] = '13.0'\n", "13.0"),
        ("cuda = '12.1'\n", "12.1"),
        ("__version__ = '0'\n", "unknown"),
    ],
    ids=["cpu", "cu130", "untyped", "no-cuda-line"],
)
def test_cuda_version_from_torch_version_file(text, cuda):
    assert cuda_of_version_file(text) == cuda


def test_torch_cuda_version_is_torch_s_own():
    assert torch_cuda_version() == torch.version.cuda


def test_a_cpu_only_torch_makes_it_unavailable_with_its_reason(tiny_model):
    if torch.version.cuda is not None:
        pytest.skip("torch is a CUDA build here")
    reason = HFCompiledBackend.unavailable_reason()
    assert reason is not None and "torch is a CPU-only build" in reason
    result = runner.invoke(app, ["compare", "--no-megakernel", "-b", "hf-compiled", "--fake-gpu", "--model", "tiny"])
    assert result.exit_code == 2, result.output
    assert f"backend hf-compiled cannot run here: {reason}" in result.output and "Traceback" not in result.output


@pytest.mark.tries("fault", "hf-compiled: compiling the decode step fails while loading")
def test_a_failed_compilation_skips_the_default_baseline_with_its_reason(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "hf-compiled", "faultkit:UncompilableHF")
    out = tmp_path / "runs"
    args = ["compare", "--no-megakernel", "--model", "tiny", "--fake-gpu", "--tests", "tg8", "-o", str(out), *FAST]
    result = runner.invoke(app, args)  # default baselines: llamacpp, hf, hf-compiled
    assert result.exit_code == 0, result.output
    run_dir = only_run_dir(out)
    ran = json.loads((run_dir / "meta.json").read_text())["backends"]
    cannot = LlamaCppBackend.unavailable_reason()  # a CUDA build in a make test worker that hides the GPU
    assert {r.backend for r in check_rows(run_dir)} == ({"hf"} if cannot else {"llamacpp", "hf"})
    assert ran["llamacpp"].get("skipped") == cannot
    reason = ran["hf-compiled"]["skipped"]
    assert reason.startswith("compiling the decode step failed: InvalidBackend") and "\n" not in reason
    assert f"hf-compiled: skipped: {reason}" in (run_dir / "report.md").read_text()
    assert status(run_dir)["exit_code"] == 0 and "Traceback" not in result.output


@pytest.mark.tries("fault", "hf-compiled: compiling the decode step fails while loading")
def test_a_failed_compilation_of_a_named_backend_fails_it_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "hf-compiled", "faultkit:UncompilableHF")
    out = tmp_path / "runs"
    args = ["bench", "hf-compiled", "--model", "tiny", "--fake-gpu", "--tests", "tg8", "-o", str(out), *FAST]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    failed = status(only_run_dir(out))["failed"]
    assert len(failed) == 1 and failed[0].startswith(
        "hf-compiled failed to load: BackendUnavailable: compiling the decode step failed: InvalidBackend"
    )
    assert "Traceback" not in result.output


@pytest.mark.tries("bad input", "hf-compiled: unknown LUCE_BENCH_HF_COMPILE mode")
def test_an_unknown_compile_mode_is_one_line_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(backends.REGISTRY, "hf-compiled", "faultkit:UncompilableHF")
    monkeypatch.setenv("LUCE_BENCH_HF_COMPILE", "fastest")
    out = tmp_path / "runs"
    result = runner.invoke(app, ["bench", "hf-compiled", "--model", "tiny", "--fake-gpu", "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert "error: LUCE_BENCH_HF_COMPILE='fastest': expected one of reduce-overhead, default" in result.output
    assert not out.exists()  # refused before the run directory exists


def test_a_cpu_compile_that_kills_its_process_is_named_an_ordinary_failure_is_not(monkeypatch):
    """The child-process check: a killed child gives its signal and last words, a hung one the limit, a raise None."""
    dying = "import os, sys; print('a warning', file=sys.stderr); print('free(): corrupted', file=sys.stderr)"
    monkeypatch.setitem(globals(), "_CHILD_LOAD", dying + "; sys.stderr.flush(); os.abort()")
    reason = cpu_compile_crash()
    assert reason is not None and "(SIGABRT: free(): corrupted)" in reason and torch.__version__ in reason
    monkeypatch.setitem(globals(), "_CHILD_LOAD", "raise RuntimeError('an ordinary failure')")
    assert cpu_compile_crash() is None  # the fixture's own load then fails with the message
    monkeypatch.setitem(globals(), "_CHILD_LOAD", "import time; time.sleep(60)")
    assert cpu_compile_crash(timeout_s=1) == (
        f"inductor's CPU compile of the tiny model hangs with torch {torch.__version__} (> 1 s)"
    )
