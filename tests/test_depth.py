"""Depth tests (llama-bench `-d`): `tg128@d4096` decodes after 4096 cached tokens, `pp512@d4096` prefills after them.

Parsing and refusal, the positions a plan sizes for, the measured window on the simulated H200 in virtual time (the
context prefill stays outside the timed work), and the real CPU backends: going back to a kept context gives exactly
the tokens a fresh prefill of the whole sequence gives.
"""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from luce_bench import config
from luce_bench.cli import app
from luce_bench.clock import SimClock
from luce_bench.context import RunContext

runner = CliRunner()
CONTEXT = [(i * 37 + 11) % 1000 for i in range(96)]  # ids < 1000: the tiny model's vocabulary is 1024


@pytest.mark.parametrize(
    ("text", "kind", "n", "depth", "name"),
    [
        pytest.param("tg128@d4096", "tg", 128, 4096, "tg128@d4096", id="tg-depth"),
        pytest.param(" pp512@d4096 ", "pp", 512, 4096, "pp512@d4096", id="pp-depth"),
        pytest.param("tg128", "tg", 128, 0, "tg128", id="no-depth"),
    ],
)
def test_a_depth_test_parses_and_keeps_its_name(text, kind, n, depth, name):
    spec = config.TestSpec.parse(text)
    assert (spec.kind, spec.n, spec.depth, spec.name) == (kind, n, depth, name)
    assert spec.positions == depth + n  # (a tg test's seed token is its first step)


@pytest.mark.tries("bad input", "CLI: malformed depth tests (@d0, @4096, missing D, N + D too long)")
@pytest.mark.parametrize(
    "spec",
    ["tg128@d0", "tg128@4096", "tg128@d", "tg128@dx", "pp512@d131072", "@d4096", "tg128@d-5", "tg128@d4096@d1"],
)
def test_a_malformed_depth_test_is_one_line_and_exit_2(spec, tmp_path):
    result = runner.invoke(app, ["compare", "--fake-gpu", "--tests", spec, "-o", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert result.output.strip().splitlines() == [result.output.strip()] and f"bad test {spec!r}" in result.output
    assert not (tmp_path / "runs").exists()


def test_a_depth_longer_than_the_model_is_refused_with_its_positions(tiny_model, tmp_path):
    result = runner.invoke(app, ["bench", "sim", "--fake-gpu", "--model", "tiny", "--tests", "tg128@d4000"])
    assert result.exit_code == 2
    assert "test tg128@d4000 needs 4128 positions; tiny allows at most 4096" in result.output


def test_backends_are_sized_for_the_longest_test_depth_included():
    cfg = config.from_mapping({"tests": ["pp520", "tg128@d4096"]})
    ctx = RunContext(cfg, SimClock())
    assert ctx.backend_kwargs("megakernel") == {"max_seq": 4096 + 128 + 8}
    assert ctx.backend_kwargs("llamacpp") == {"n_ctx": 4352, "n_batch": 2048, "n_ubatch": 520}
    # the H200 run of 2026-12-03 failed tg128@d4096 on a static cache sized from pp2048 alone (2049 positions)
    assert ctx.backend_kwargs("hf-compiled") == {"max_cache_len": 4096 + 128 + 1}
    assert RunContext(config.from_mapping({"tests": ["tg128"]}), SimClock()).backend_kwargs("megakernel") == {
        "max_seq": 4096
    }


VIRTUAL = """\
gpu:
  fake_clock: virtual
  fake_preset: h200
tests: [tg32, tg32@d2048, pp512@d2048]
reps: 2
warmup_s: 0.5
window_s: 2.0
"""


def test_depth_rows_time_only_the_work_after_the_context(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    cfg = tmp_path / "depth.yaml"
    cfg.write_text(VIRTUAL)
    args = ["compare", "--no-megakernel", "--baselines", "sim", "--fake-gpu", "-c", str(cfg), "--model", "tiny"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    with (run_dir / "runs.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    by_test = {r["test"]: r for r in rows if r["rep"] == "0"}
    # the simulated H200 decodes at 1636 tok/s and prefills at 43694 tok/s at its stock limit (backends/sim.py)
    deep = by_test["tg32@d2048"]
    assert (deep["n_gen"], deep["n_prompt"], deep["n_depth"]) == ("32", "0", "2048")
    assert float(deep["avg_ts"]) == pytest.approx(1636.0, rel=1e-5)
    assert deep["window_s"] == deep["compute_s"]  # going back to the context takes no time; its prefill is not here
    flat = by_test["tg32"]
    # 32 steps from a seed token, all timed, as llama-bench's tg (before 2026-12-06 an untimed seed step ran first)
    assert flat["n_depth"] == "0" and flat["window_s"] == flat["compute_s"]
    assert float(flat["avg_ts"]) == pytest.approx(1636.0, rel=1e-5)
    assert meta_method(run_dir)["tg_iteration"] == "N one-token steps from a seed token (llama-bench)"
    pp = by_test["pp512@d2048"]
    assert (pp["n_prompt"], pp["n_depth"]) == ("512", "2048") and float(pp["avg_ts"]) == pytest.approx(43694.0)
    with (run_dir / "summary.csv").open(newline="") as f:
        summary = {r["test"]: r["n_depth"] for r in csv.DictReader(f)}
    assert summary == {"tg32": "0", "tg32@d2048": "2048", "pp512@d2048": "2048"}
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["model"]["kv_bytes_per_position"] == 512  # tiny: 1 attention layer x K,V x 2 heads x 64 x 2 B
    assert meta["gpu"]["memory_bandwidth_gb_s"] == 4916.7  # the simulated H200's bus and memory clock
    report = (run_dir / "report.md").read_text()
    assert "| sim | tg32@d2048 |" in report and "| tg32 @ d2048 |" in report  # ours and llama-bench's layout


def meta_method(run_dir):
    return json.loads((run_dir / "meta.json").read_text())["method"]


def test_a_sweep_settles_on_a_depth_test(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    cfg = tmp_path / "depth.yaml"
    cfg.write_text(VIRTUAL.replace("[tg32, tg32@d2048, pp512@d2048]", "[tg16@d512]"))
    args = ["sweep", "--fake-gpu", "-c", str(cfg), "--model", "tiny", "--limits", "100%,60%", "--backends", "sim"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    with (run_dir / "summary.csv").open(newline="") as f:
        assert [(r["test"], r["power_limit_req_w"]) for r in csv.DictReader(f)] == [
            ("tg16@d512", "700"),
            ("tg16@d512", "420"),
        ]


def _same_as_a_fresh_sequence(backend, prefill_too: bool = True) -> None:
    """Decode (and prefill) after restore_context == after a fresh prefill of the context and what follows."""
    backend.reset()
    backend.prefill(CONTEXT)
    backend.save_context()
    first = backend.decode(6).tokens
    backend.prefill([5, 6, 7])  # move on, then go back
    backend.restore_context()
    assert backend.decode(6).tokens == first
    backend.reset()  # a reset in between keeps the context
    backend.restore_context()
    assert backend.decode(6).tokens == first
    if prefill_too:
        backend.restore_context()
        after = backend.prefill([5, 6, 7]).tokens
        backend.reset()
        assert backend.prefill([*CONTEXT, 5, 6, 7]).tokens == after


def test_hf_goes_back_to_its_context(hf_tiny):
    _same_as_a_fresh_sequence(hf_tiny)


def test_llamacpp_goes_back_to_its_context_in_its_own_process(tiny_model):
    from luce_bench.backends import create
    from luce_bench.backends.isolated import IsolatedBackend
    from luce_bench.backends.llamacpp import LlamaCppBackend

    reason = LlamaCppBackend.unavailable_reason()  # not installed; a CUDA build where make test hides the GPU
    if reason:
        pytest.skip(reason)

    backend = create("llamacpp", n_ctx=512, allow_cpu=True)
    assert isinstance(backend, IsolatedBackend)
    backend.load(tiny_model, "cpu")
    try:
        _same_as_a_fresh_sequence(backend)
    finally:
        backend.close()


def _sim():
    from luce_bench.backends.sim import SimBackend
    from luce_bench.gpu.fake import FakeGPU

    clock = SimClock()
    return SimBackend(FakeGPU(clock=clock), clock)


def test_sim_goes_back_to_its_context(tiny_model):
    backend = _sim()
    backend.load(tiny_model)
    _same_as_a_fresh_sequence(backend, prefill_too=False)  # its pseudo tokens hash each prefill call on its own


def test_sim_generates_from_a_seed_token_as_a_prefill_then_decode_would_in_decode_time(tiny_model):
    """A tg iteration on the sim: n steps from the seed, the tokens of prefill([seed]) + decode(n - 1), at 250 tok/s."""
    backend = _sim()
    backend.load(tiny_model)
    backend.reset()
    two_calls = backend.prefill([7]).tokens + backend.decode(11).tokens
    backend.reset()
    got = backend.generate(7, 12)
    assert got.tokens == two_calls and len(set(got.tokens)) > 6
    assert got.elapsed_s == pytest.approx(12 / 250.0)  # the rtx3090 preset's decode rate, the seed's step included
    with pytest.raises(ValueError, match="n >= 1"):
        backend.generate(7, 0)


def test_restore_without_a_kept_context_is_an_error():
    with pytest.raises(RuntimeError, match="needs a save_context"):
        _sim().restore_context()
