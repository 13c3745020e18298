"""hf-compiled on the GPU: the static cache and the decode step compiled with CUDA graphs, against eager HF.

Run on the GPU host, read-only: `LUCE_BENCH_READONLY=1 python -m pytest -q -m gpu tests/gpu/test_hf_compiled_gpu.py -s`.
Random weights with the exact Qwen3.5-0.8B shapes (synthetic-0.8b, generated once per session).
* float32 (compiled and eager differ only in the order of float32 operations): greedy tokens on eager HF's history
  agree at every step or within a near tie (agreement.py), logits within 1e-3 relative L2;
* bf16, as measured: the same comparison over 128 steps; the logits stay within the rounding bound
  (hf_compiled.REL_L2_BOUND) and the agreement is printed (bf16 engines part a few ulps beyond near ties at times);
* what ran: static cache, mode reduce-overhead, compile and warm-up times, the GDN path, no graph compiled after load
  (prefills of other lengths and decodes at new positions reuse the one graph);
* the compiled decode is faster than eager HF's (the issue measured ~10x with transformers 5.17 on the H200);
* `luce-bench compare --no-megakernel --baselines hf,hf-compiled` end to end: both rows, compile time in meta.json and
  in the report, greedy tokens of the first tg run compared. On the tiny model (4 layers): the CLI's plumbing with CUDA
  graphs, without a third compile of the 0.8B step (~80-120 s on the H200), which the two tests above cover.
"""

from __future__ import annotations

import json

import pytest

from luce_bench.agreement import follow
from luce_bench.measure import make_prompt

pytestmark = pytest.mark.gpu

N_PROMPT, N_DEC = 32, 128


@pytest.fixture(scope="module")
def model08():
    from luce_bench.model.resolve import resolve_model

    return resolve_model("synthetic-0.8b", progress=False)


def _pair(model, dtype: str):
    from luce_bench.backends.hf import HFBackend
    from luce_bench.backends.hf_compiled import HFCompiledBackend

    eager = HFBackend(dtype)
    eager.load(model, "cuda")
    compiled = HFCompiledBackend(dtype, max_cache_len=N_PROMPT + N_DEC + 1)
    compiled.load(model, "cuda")
    return eager, compiled


def test_float32_compiled_decode_computes_what_eager_hf_computes(model08):
    eager, compiled = _pair(model08, "float32")
    try:
        agreement, rel = follow(compiled, eager, make_prompt(N_PROMPT, model08.config.vocab_size, 7), N_DEC)
        print(json.dumps({"float32": agreement.to_dict(), "rel_l2_max": float(rel.max())}))
        assert agreement.ok and agreement.agree + agreement.near_ties == N_DEC, agreement.text()
        assert rel.max() <= 1e-3
        assert compiled.info()["greedy_vs_eager"]["same_function"]
    finally:
        compiled.close()
        eager.close()


def test_bf16_compiled_decode_as_measured(model08):
    from luce_bench.backends.hf_compiled import REL_L2_BOUND

    eager, compiled = _pair(model08, "bfloat16")
    try:
        agreement, rel = follow(compiled, eager, make_prompt(N_PROMPT, model08.config.vocab_size, 11), N_DEC)
        speeds = {}
        for name, b in (("eager", eager), ("compiled", compiled)):
            b.reset()
            b.prefill([1])
            b.decode(8)  # warm
            b.reset()
            b.prefill([1])
            speeds[name] = N_DEC / b.decode(N_DEC).elapsed_s
        info = compiled.info()
        report = {"bf16": agreement.to_dict(), "rel_l2_max": float(rel.max()), "tok_s": speeds, "info": info}
        print(json.dumps(report, default=str))
        assert rel.max() <= REL_L2_BOUND["bfloat16"], report
        assert info["device"].startswith("cuda") and info["cache"] == "static"
        assert info["compile_mode"] == "reduce-overhead" and info["compile_s"] > 0
        assert info["graphs_compiled_after_load"] == 0, report
        assert info["gdn_path"] in ("fla kernels", "pure-torch fallback")
        assert info["greedy_vs_eager"]["same_function"], report
        assert speeds["compiled"] > 2 * speeds["eager"], report
    finally:
        compiled.close()
        eager.close()


def test_compare_measures_eager_and_compiled_hf(tmp_path, monkeypatch):
    import csv

    from typer.testing import CliRunner

    from luce_bench.cli import app

    out = tmp_path / "runs"
    args = ["compare", "--no-megakernel", "--baselines", "hf,hf-compiled", "--model", "tiny"]
    args += ["--tests", "pp64,tg32,tg16@d256", "--reps", "2", "--window-s", "2", "--warmup-s", "1", "-o", str(out)]
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    result = CliRunner().invoke(app, args)
    print(result.output)
    assert result.exit_code == 0, result.output
    (run_dir,) = out.iterdir()
    meta = json.loads((run_dir / "meta.json").read_text())
    hfc = meta["backends"]["hf-compiled"]
    print(json.dumps({k: hfc.get(k) for k in ("compile_s", "warmup_s", "gdn_path", "greedy_vs_eager")}))
    assert hfc["compile_s"] > 0 and hfc["graphs_compiled_after_load"] == 0
    assert "tg32 hf-compiled vs hf" in meta["token_agreement"]
    report = (run_dir / "report.md").read_text()
    assert "hf-compiled: transformers" in report and "compiled in" in report
    rows = {(r["backend"], r["test"]) for r in csv.DictReader((run_dir / "summary.csv").open())}
    assert rows == {(b, t) for b in ("hf", "hf-compiled") for t in ("pp64", "tg32", "tg16@d256")}
    assert hfc["max_cache_len"] == 256 + 16 + 1  # the longest test's positions (depth + n), + 1 as generate sizes it
