"""llamacpp backend on the CPU build: parity with HF transformers on the tiny model, timing split, device refusal.

A CUDA build skips the tests that load it in this process (CUDA_BUILD below).

Parity is teacher-forced: both engines see the same tokens at every step, so one near-tie cannot send them down
different paths. The reference is the HF backend in float32 on the same (bf16-valued) weights.

Tolerances (relative L2 of logit rows, measured on this model with llama-cpp-python 0.3.36 built with
GGML_NATIVE=OFF):
* F16 GGUF: all weights are exactly representable, so this isolates the conversion: all rows ≤ 1.5e-2
  (measured ≤ 4.7e-3), aggregate ≤ 5e-3 (1.9e-3). A wrong transform (+1, -exp, squeeze, a swapped tensor)
  gives errors of order 1.
* BF16 GGUF (what the benchmark runs): llama.cpp's CPU matmul rounds activations to bf16, so aggregate ≤ 2e-2
  (measured 1.7e-2) and every row ≤ 8e-2 (5.1e-2). HF itself in bf16 is 6e-2 away from its own fp32 result here.
* Greedy: free-running llama.cpp tokens must be HF's argmax on the same path, up to near-ties: the HF logit of
  llama.cpp's token within 0.05 of HF's max (measured: 61/63 exact, largest gap 0.014). F16: exact.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("transformers")

from luce_bench.backends import base  # noqa: E402
from luce_bench.backends import llamacpp as lcb  # noqa: E402
from luce_bench.backends.llamacpp import CpuBuildOnGpuHost, LlamaCppBackend  # noqa: E402
from luce_bench.errors import UserError  # noqa: E402

# These tests load llama.cpp in this (torch) process: right for the CPU build they test. A CUDA build crashes there
# (H100 and H200: a segfault in llama_model_load_from_file), which is why `create("llamacpp")` runs it in a child
# process; on a GPU machine with the CUDA build, its tests are tests/gpu/test_baselines_gpu.py and the child-process
# tests (tests/test_depth.py; test_unavailable_reason_when_installed and the refusal test below run either way).
# Not llama_supports_gpu_offload(): it says whether a GPU is seen, and make test's CPU workers hide the GPU.
CUDA_BUILD = lcb.cuda_build()
cpu_build_only = pytest.mark.skipif(
    CUDA_BUILD, reason="llama-cpp-python is a GPU build: it cannot load in a process with torch (CPU-build tests)"
)

N_PROMPT, N_DECODE = 32, 20
SEEDS = (0, 1, 2)


def _prompt(seed: int, vocab: int) -> list[int]:
    return [int(x) for x in np.random.default_rng(seed).integers(0, vocab, size=N_PROMPT)]


def _rel(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def tiny():
    from luce_bench.model.resolve import resolve_model

    return resolve_model("tiny", progress=False)


@pytest.fixture(scope="module")
def hf(hf32_tiny):
    return hf32_tiny


@pytest.fixture(scope="module", params=["bf16", "f16"])
def llama(request, tiny):
    b = LlamaCppBackend(n_ctx=256, gguf_type=request.param, allow_cpu=True)
    b.load(tiny, "cpu")
    yield request.param, b
    b.close()


def _forced_pair(hf, llama, prompt):
    """Reference (HF greedy, teacher-forced into llama.cpp) logits: two [1 + N_DECODE, vocab] arrays."""
    hf.reset()
    r = hf.prefill(prompt, logits=True)
    d = hf.decode(N_DECODE, logits=True)
    forced = [r.tokens[0], *d.tokens[:-1]]
    llama.reset()
    lr = llama.prefill(prompt, logits=True)
    ld = llama.decode(N_DECODE, logits=True, inputs=forced)
    return np.concatenate([r.logits, d.logits]), np.concatenate([lr.logits, ld.logits])


@cpu_build_only
def test_logits_match_hf(tiny, hf, llama):
    ftype, ll = llama
    refs, gots = zip(*(_forced_pair(hf, ll, _prompt(s, tiny.config.vocab_size)) for s in SEEDS), strict=True)
    ref, got = np.concatenate(refs), np.concatenate(gots)
    assert got.shape == ref.shape == (len(SEEDS) * (1 + N_DECODE), tiny.config.vocab_size)
    rows = [_rel(got[i], ref[i]) for i in range(len(ref))]
    agg_tol, row_tol = (2e-2, 8e-2) if ftype == "bf16" else (5e-3, 1.5e-2)
    assert _rel(got, ref) <= agg_tol
    assert max(rows) <= row_tol


@cpu_build_only
def test_greedy_tokens_agree(tiny, hf, llama):
    ftype, ll = llama
    delta = 0.05 if ftype == "bf16" else 0.0
    for s in SEEDS:
        prompt = _prompt(s, tiny.config.vocab_size)
        ll.reset()
        toks = [*ll.prefill(prompt).tokens, *ll.decode(N_DECODE).tokens]
        hf.reset()  # HF along llama.cpp's own path
        ref = np.concatenate(
            [hf.prefill(prompt, logits=True).logits, hf.decode(N_DECODE, logits=True, inputs=toks[:-1]).logits]
        )
        gap = ref.max(axis=1) - ref[np.arange(len(toks)), toks]
        assert gap.max() <= delta, f"seed {s}: llama.cpp chose a token {gap.max():.3f} below HF's best"


@cpu_build_only
def test_decode_continues_prefill_and_reset_repeats(tiny):
    b = LlamaCppBackend(n_ctx=128, allow_cpu=True)
    b.load(tiny, "cpu")
    prompt = _prompt(5, tiny.config.vocab_size)
    first = b.prefill(prompt, logits=True)
    d1 = b.decode(8, logits=True)
    assert len(d1.tokens) == 8 and d1.logits.shape == (8, tiny.config.vocab_size)
    assert d1.tokens == base.argmax_tokens(d1.logits)
    assert first.tokens == base.argmax_tokens(first.logits)
    perf = b.perf()  # one llama_synchronize per decode step: 32 prompt tokens, 8 decode tokens
    assert (perf["n_p_eval"], perf["n_eval"]) == (N_PROMPT, 8)
    b.reset()
    again = b.prefill(prompt)
    assert again.tokens == first.tokens and b.decode(8).tokens == d1.tokens
    b.reset()
    b.prefill(prompt[:16])  # a prompt in two n_batch chunks gives the same state as one
    b.close()
    c = LlamaCppBackend(n_ctx=128, n_batch=16, allow_cpu=True)
    c.load(tiny, "cpu")
    assert c.prefill(prompt).tokens == first.tokens
    with pytest.raises(UserError):
        c.decode(300)
    c.close()


@cpu_build_only
def test_info_and_describe(tiny):
    d = LlamaCppBackend.describe()
    assert {"llama_cpp_python", "build_commit", "build", "system_info"} <= set(d)
    assert d["build"] in ("cpu", "cuda") and d["build_commit"] != ""
    b = LlamaCppBackend(n_ctx=64, flash_attn=False, allow_cpu=True)
    b.load(tiny, "cpu")
    info = b.info()
    assert info["flash_attn"] is False and info["n_ctx"] >= 64 and info["gguf_type"] == "bf16"
    assert info["device"] == "cpu" and info["n_gpu_layers"] == 0 and b.device_kind == "cpu"
    assert info["model_params"] == tiny.config.num_params()
    b.close()


def test_cpu_build_refused_when_gpu_present(tiny, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(lcb, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(lcb, "cuda_build", lambda: False)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    with pytest.raises(CpuBuildOnGpuHost) as err:
        LlamaCppBackend(n_ctx=64).load(tiny, "auto")
    assert isinstance(err.value, UserError) and isinstance(err.value, base.BackendUnavailable)
    assert "build-llamacpp-cuda.sh" in str(err.value)
    with pytest.raises(base.BackendUnavailable):
        LlamaCppBackend(n_ctx=64).load(tiny, "cuda")


def test_a_cuda_build_that_sees_no_gpu_is_refused_before_llama_cpp_crashes(tiny, monkeypatch):
    """Make test's CPU workers on a GPU machine hide the GPU: there a CUDA build segfaulted loading on the CPU."""
    import llama_cpp

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(lcb, "cuda_build", lambda: True)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    for device in ("cpu", "auto", "cuda"):
        with pytest.raises(lcb.CudaBuildWithoutGpu, match=r"CUDA build and sees no GPU \(CUDA_VISIBLE_DEVICES=''"):
            LlamaCppBackend(n_ctx=64, allow_cpu=True).load(tiny, device)
    assert issubclass(lcb.CudaBuildWithoutGpu, UserError) and issubclass(
        lcb.CudaBuildWithoutGpu, base.BackendUnavailable
    )


def _fake_package(monkeypatch, root):
    """find_spec("llama_cpp") answers a package at `root` (the other names as before)."""
    import importlib.util
    import types

    real = importlib.util.find_spec
    fake = types.SimpleNamespace(submodule_search_locations=[str(root)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake if name == "llama_cpp" else real(name, *a))


def test_the_build_kind_comes_from_the_build_not_from_the_gpu_it_sees(monkeypatch, tmp_path):
    import llama_cpp

    monkeypatch.delenv("LLAMA_CPP_LIB_PATH", raising=False)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)  # what a CUDA build says, GPU hidden
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CPU : AVX2 = 1 |")
    _fake_package(monkeypatch, tmp_path)
    assert lcb.cuda_build_files() is None and not lcb.cuda_build()  # no library folder: the files cannot tell
    (tmp_path / "lib").mkdir()
    assert lcb.cuda_build_files() is None  # a folder without llama.cpp's library does not count
    (tmp_path / "lib" / "libllama.so").touch()
    assert lcb.cuda_build_files() is False and lcb.build_info()["build"] == "cpu"
    (tmp_path / "lib" / "libggml-cuda.so.0").touch()  # a CUDA wheel's layout
    assert lcb.cuda_build_files() is True and lcb.cuda_build() and lcb.build_info()["build"] == "cuda"
    other = tmp_path / "elsewhere"  # LLAMA_CPP_LIB_PATH: the libraries llama-cpp-python loads instead
    other.mkdir()
    (other / "libllama.so").touch()
    monkeypatch.setenv("LLAMA_CPP_LIB_PATH", str(other))
    assert lcb.cuda_build_files() is False
    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: b"CUDA : ARCHS = 900 | CPU : AVX2 = 1 |")
    assert lcb.cuda_build()  # the loaded library's own word, where the files say otherwise


@cpu_build_only  # describe() reads the installed build's files: a CUDA build has no CPU-only warning to give
def test_info_warns_of_a_cpu_build_on_a_gpu_host(monkeypatch):
    monkeypatch.setattr(lcb, "nvidia_gpu_present", lambda: True)
    assert "CPU-only" in LlamaCppBackend.describe().get("warning", "")


@cpu_build_only
def test_explicit_cpu_is_allowed_on_a_gpu_host(tiny, monkeypatch):
    import llama_cpp

    monkeypatch.setattr(lcb, "nvidia_gpu_present", lambda: True)
    monkeypatch.setattr(llama_cpp, "llama_supports_gpu_offload", lambda: False)
    for kw, dev in (({"allow_cpu": True}, "auto"), ({}, "cpu")):
        b = LlamaCppBackend(n_ctx=64, **kw)
        b.load(tiny, dev)
        assert b.device_kind == "cpu"
        b.close()


def test_unavailable_reason_when_installed(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert LlamaCppBackend.unavailable_reason() is None
    for files in (False, None):  # a CPU build, or files that cannot tell: not refused on a guess
        monkeypatch.setattr(lcb, "cuda_build_files", lambda f=files: f)
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        assert LlamaCppBackend.unavailable_reason() is None


def test_a_cuda_build_is_unavailable_where_the_gpu_is_hidden(monkeypatch):
    monkeypatch.setattr(lcb, "cuda_build_files", lambda: True)
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        reason = LlamaCppBackend.unavailable_reason()
        assert reason == lcb.no_gpu_for_the_cuda_build() and reason.startswith(
            f"this llama-cpp-python is a CUDA build and sees no GPU (CUDA_VISIBLE_DEVICES={hidden!r} hides the GPUs)"
        )
        assert LlamaCppBackend.describe() == {"available": False, "reason": reason}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")  # maybe no such GPU, maybe one: load() asks llama.cpp
    assert LlamaCppBackend.unavailable_reason() is None


def test_why_a_cuda_build_sees_no_gpu_names_the_cause(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert "(CUDA_VISIBLE_DEVICES='GPU-abc' names no GPU it can use)" in lcb.no_gpu_for_the_cuda_build()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(lcb, "nvidia_gpu_present", lambda: True)
    assert "though the driver lists one: a driver older than the build's CUDA?" in lcb.no_gpu_for_the_cuda_build()
    monkeypatch.setattr(lcb, "nvidia_gpu_present", lambda: False)
    assert "(no NVIDIA driver or GPU here)" in lcb.no_gpu_for_the_cuda_build()


@cpu_build_only
def test_isolated_child_process_gives_the_same_tokens_without_torch(tiny):
    """`create("llamacpp")` runs llama.cpp in a child process with no torch or NVML (the H100 crash workaround)."""
    from luce_bench.backends import create
    from luce_bench.backends.isolated import IsolatedBackend

    prompt = _prompt(7, tiny.config.vocab_size)
    direct = LlamaCppBackend(n_ctx=256, allow_cpu=True)
    direct.load(tiny, "cpu")
    want = direct.prefill(prompt).tokens + direct.decode(8).tokens
    direct.close()

    proxy = create("llamacpp", n_ctx=256, allow_cpu=True)
    assert isinstance(proxy, IsolatedBackend) and proxy.name == "llamacpp"
    proxy.load(tiny, "cpu")
    try:
        first = proxy.prefill(prompt, logits=True)
        rest = proxy.decode(8)
        assert first.tokens + rest.tokens == want
        assert first.logits.shape == (1, tiny.config.vocab_size) and rest.elapsed_s > 0
        info = proxy.info()
        assert "torch" not in info["same_process"] and "pynvml" not in info["same_process"]
        assert proxy.device_kind == "cpu"
        with pytest.raises(UserError, match="exceed n_ctx"):
            proxy.prefill(list(range(300)))  # errors come back as the same kind, one line
    finally:
        proxy.close()
