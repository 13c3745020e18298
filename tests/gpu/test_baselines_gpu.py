"""On the GPU host, read-only: NVML energy/power readings move with real work, and llama.cpp's CUDA build matches HF.

Run with `LUCE_BENCH_READONLY=1 python -m pytest -m gpu tests/gpu -s`.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_nvml_counter_and_instant_power_follow_a_gpu_load():
    import torch

    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.base import GPUReadOnlyError
    from luce_bench.sampler import Sampler

    gpu = open_gpu(0, read_only=True)
    try:
        a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
        torch.cuda.synchronize()
        with Sampler(gpu, period_s=0.1) as sampler:
            t0, e0 = sampler.now_s(), gpu.total_energy_mj()
            end = time.perf_counter() + 3.0
            while time.perf_counter() < end:
                for _ in range(20):
                    a = (a @ a).clamp_(-1, 1)
                torch.cuda.synchronize()
            t1, e1 = sampler.now_s(), gpu.total_energy_mj()
        energy_j = (e1 - e0) / 1000
        sampled_j = sampler.integrate_power_j(t0, t1)
        report = {
            "energy_j": energy_j,
            "sampled_j": sampled_j,
            "mean_w": energy_j / (t1 - t0),
            "jitter": sampler.jitter_ms(),
            "summary": sampler.summarize(t0, t1),
        }
        print(json.dumps(report))
        assert energy_j / (t1 - t0) > 100, report  # a bf16 GEMM loop draws far above the ~72 W idle
        assert abs(sampled_j - energy_j) / energy_j < 0.10, report
        lo, hi = gpu.power_limit_constraints_mw()
        with pytest.raises(GPUReadOnlyError):
            gpu.set_power_limit_mw(gpu.power_limit_mw())
        assert lo <= gpu.power_limit_mw() <= hi
    finally:
        gpu.close()


def _cuda_llamacpp_reason() -> str | None:
    try:
        import llama_cpp
    except ImportError:
        return "llama_cpp not installed"
    from luce_bench.backends.llamacpp import cuda_build

    if not cuda_build():
        return "llama_cpp is a CPU build"
    return None if llama_cpp.llama_supports_gpu_offload() else "the CUDA build of llama_cpp sees no GPU"


def test_llamacpp_cuda_logits_match_hf_on_tiny():
    """The CUDA build in an isolated child process, F16 GGUF (exact weights), teacher-forced vs HF float32."""
    reason = _cuda_llamacpp_reason()
    if reason:
        pytest.skip(reason)
    from luce_bench.backends import create
    from luce_bench.backends.hf import HFBackend
    from luce_bench.model.resolve import resolve_model

    tiny = resolve_model("tiny", progress=False)
    hf = HFBackend("float32")
    hf.load(tiny, "cuda")
    ll = create("llamacpp", n_ctx=256, gguf_type="f16")
    ll.load(tiny, "cuda")
    try:
        assert ll.device_kind == "cuda" and ll.info()["build"] == "cuda"
        rows_ref, rows_got = [], []
        for seed in range(3):
            prompt = [int(x) for x in np.random.default_rng(seed).integers(0, tiny.config.vocab_size, 32)]
            hf.reset()
            r, d = hf.prefill(prompt, logits=True), hf.decode(16, logits=True)
            ll.reset()
            lr = ll.prefill(prompt, logits=True)
            ld = ll.decode(16, logits=True, inputs=[r.tokens[0], *d.tokens[:-1]])
            rows_ref.append(np.concatenate([r.logits, d.logits]))
            rows_got.append(np.concatenate([lr.logits, ld.logits]))
        ref, got = np.concatenate(rows_ref), np.concatenate(rows_got)
        rel = np.linalg.norm(got - ref, axis=1) / np.linalg.norm(ref, axis=1)
        print(
            json.dumps(
                {
                    "rel_l2_max": float(rel.max()),
                    "rel_l2_median": float(np.median(rel)),
                    "argmax_agree": float(np.mean(got.argmax(1) == ref.argmax(1))),
                }
            )
        )
        assert np.isfinite(got).all() and rel.max() <= 2e-2
    finally:
        ll.close()
        hf.close()
