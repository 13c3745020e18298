"""The kernel tools' CPU parts.

Variant parsing, the floor, the summary, the trace analysis on a synthetic trace whose phase times are known, and the
backend's way around a device that cannot run the kernel prefill.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import numpy as np
import pytest

from luce_bench.errors import UserError
from luce_bench.kernels import bench, trace
from luce_bench.kernels.abi import trace_points


def test_parse_variant():
    assert bench.parse_variant("base") == bench.Variant("base", {})
    assert bench.parse_variant("q2:MK_PF_GBM=128,MK_SLOT_KB=0x10") == bench.Variant(
        "q2", {"MK_PF_GBM": 128, "MK_SLOT_KB": 16}
    )
    v = bench.parse_variant("v10=/tmp/v10lib")
    assert v.name == "v10" and str(v.lib_dir) == "/tmp/v10lib" and v.options == {} and v.tune == {}
    # run-time tune fields after '@', on the defaults, an option set or a prebuilt library
    assert bench.parse_variant("i2@inflight=2,spin_sleep_ns=0x40") == bench.Variant(
        "i2", {}, tune={"inflight": 2, "spin_sleep_ns": 64}
    )
    assert bench.parse_variant("s16:MK_SLOT_KB=16@pause_mask=0") == bench.Variant(
        "s16", {"MK_SLOT_KB": 16}, tune={"pause_mask": 0}
    )
    v = bench.parse_variant("old=/tmp/lib@inflight_lm=3")
    assert str(v.lib_dir) == "/tmp/lib" and v.tune == {"inflight_lm": 3}
    bad_texts = ["x:MK_SLOT_KB=two", ":MK_SLOT_KB=16", "x@", "x@inflight", "x@inflight=two", "x@l2_lead=4"]
    bad_texts += ["x@inflight=99", "x@pause_mask=3"]  # ranges are checked before any GPU work
    bad_texts += ["x:MK_SLOT_KB=16,MK_SLOT_KB=32", "x@inflight=2,inflight=3", "x:=5"]  # no value wins silently
    for bad in bad_texts:
        with pytest.raises(UserError) as err:
            bench.parse_variant(bad)
        assert "\n" not in str(err.value)


@pytest.mark.tries(
    "bad input",
    "kernel bench: duplicate names, a --breakdown of no variant, a bad --bandwidth-tbs, positions too far, "
    "--instances out of range, an unknown build option or a prebuilt library's missing folder",
)
@pytest.mark.parametrize(
    "change, message",
    [
        ({"variants": [bench.Variant("a", {}), bench.Variant("a", {})]}, "variant names must differ: ['a', 'a']"),
        ({"breakdown": "nope"}, "--breakdown 'nope': no such variant (the variants: a)"),
        ({"bandwidth_tbs": -1.0}, "--bandwidth-tbs -1.0: expected a copy bandwidth in TB/s, above 0"),
        ({"bandwidth_tbs": float("nan")}, "--bandwidth-tbs nan: expected a copy bandwidth in TB/s, above 0"),
        ({"long_pos": 262_100}, "--long 262100 + 128 steps: past the model's 262,144 positions"),
        ({"prefill_lengths": (64, 300_000)}, "--prefill 300000: past the model's 262,144 positions"),
        ({"instances": 0}, "--instances 0: expected 1 to 8 loads of each variant"),
        ({"instances": 9}, "--instances 9: expected 1 to 8 loads of each variant"),
        (
            {"variants": [bench.Variant("a", {}), bench.Variant("b", lib_dir=Path("/nonexistent/mk"))]},
            "--variant b=/nonexistent/mk: no such directory (a built library's folder)",
        ),
        ({"variants": [bench.Variant("a", {"MK_NOPE": 1})]}, "--variant a: unknown kernel option 'MK_NOPE'; the"),
    ],
)
def test_a_bench_plan_that_cannot_run_is_one_line_before_any_gpu_work(change, message):
    plan = bench.BenchPlan(**{"variants": [bench.Variant("a", {})], "breakdown": "a", "bandwidth_tbs": 3.0, **change})
    with pytest.raises(UserError) as err:
        plan.validate()
    assert str(err.value).startswith(message)
    bench.BenchPlan([bench.Variant("a", {})], breakdown="a", bandwidth_tbs=3.0, long_pos=262_000).validate()


@pytest.mark.tries("bad input", "kernel bench: a $LUCE_BENCH_KERNEL_TUNE field out of range, before any GPU work")
def test_a_bad_tune_in_the_environment_stops_the_bench_plan(monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_KERNEL_TUNE", "pause_mask=2")
    with pytest.raises(UserError, match=r"^LUCE_BENCH_KERNEL_TUNE: kernel tune pause_mask=2: expected a sum of"):
        bench.BenchPlan([bench.Variant("a", {})]).validate()


def test_prebuild_builds_each_option_set_once(monkeypatch, tmp_path):
    """Variants that differ only in their run-time tune share one build."""
    from luce_bench.kernels import build as kb

    built = []

    def fake_build(out_dir, defines, force):
        built.append((out_dir.name, dict(defines)))
        return types.SimpleNamespace(lib=out_dir / kb.LIB_NAME)

    monkeypatch.setattr(kb, "build", fake_build)
    vs = [bench.parse_variant(t) for t in ("a", "b@inflight=2", "c:MK_SLOT_KB=16", "d:MK_SLOT_KB=16@pause_mask=0")]
    vs.append(bench.parse_variant("e=/prebuilt@inflight=3"))
    dirs = bench.prebuild(vs, tmp_path)
    assert sorted(built) == [("a", {}), ("c", {"MK_SLOT_KB": 16})]
    assert dirs == {"a": tmp_path / "a", "b": tmp_path / "a", "c": tmp_path / "c", "d": tmp_path / "c"}


def test_bytes_per_token_is_the_floor_of_the_0_8b_model():
    lay = types.SimpleNamespace(wblob_elems=18 * 21528576 + 6 * 18350080, vocab=248320, hidden=1024)
    assert bench.bytes_per_token(lay) == 1_503_789_056  # layers 995 MB + tied LM head 509 MB


def test_summary_medians_and_share_of_floor():
    plan = bench.BenchPlan([bench.Variant("a")], steps=128)
    r = bench.VariantResult("a", short_s=[0.064, 0.070, 0.0640, 0.0639], long_s=[0.08], per_token_s=[0.1, 0.1, 0.1])
    s = bench.summarize(plan, {"a": r}, bw_tbs=4.2, floor_tok_s=2800.0, seed=1, gpu="GPU")
    row = s["variants"][0]
    assert row["short_tok_s"] == pytest.approx(2000.0)
    assert row["short_us_per_token"] == pytest.approx(500.0)
    assert row["short_best_tok_s"] == pytest.approx(128 / 0.0639)
    assert row["share_of_floor"] == pytest.approx(2000 / 2800)
    assert row["long_tok_s"] == pytest.approx(1600.0) and row["per_token_tok_s"] == pytest.approx(1280.0)


def test_summary_energy_windows_and_their_columns(capsys):
    """W and tok/J are medians over the windows; the table shows them only where windows ran."""
    from luce_bench.kernels import cli

    plan = bench.BenchPlan([bench.Variant("a"), bench.Variant("b")], steps=128)
    a = bench.VariantResult("a", short_s=[0.064], energy=[(2.0, 1000.0, 3200), (2.0, 1100.0, 3200), (2.0, 900.0, 3072)])
    b = bench.VariantResult("b", short_s=[0.070])
    s = bench.summarize(plan, {"a": a, "b": b}, bw_tbs=4.2, floor_tok_s=2800.0, seed=1, gpu="GPU")
    ra, rb = s["variants"]
    assert ra["energy_w"] == pytest.approx(500.0) and ra["energy_windows"] == 3
    assert ra["tok_per_j"] == pytest.approx(3.2) and "energy_w" not in rb
    cli._print_bench(s)
    out = capsys.readouterr().out
    assert "tok/J" in out and "3.20" in out and " 500 " in out
    cli._print_bench(bench.summarize(plan, {"b": b}, bw_tbs=4.2, floor_tok_s=2800.0, seed=1, gpu="GPU"))
    assert "tok/J" not in capsys.readouterr().out


def _synthetic_trace(steps: int = 6, grid: int = 4):
    """A trace in which every layer takes 20 us.

    Points at fixed offsets after the layer's start; block 2 reaches the MLP's 'down done' 3 us late in every layer;
    block 3 runs no GDN item (NaN at the item points).
    """
    tp = trace_points()
    tr_l = tp["TR_L"]
    npts = 24 * tr_l + 5
    t = np.zeros((steps, npts, grid))
    off = {
        "TR_X_READY": 1,
        "TR_PROJ_DONE": 3,
        "TR_ITEM_IN": 4,
        "TR_ITEM_SS": 6,
        "TR_MIX_DONE": 7,
        "TR_MIX_SYNC": 8,
        "TR_O_READY": 9,
        "TR_MLP_X_READY": 12,
        "TR_GATE_UP_DONE": 14,
        "TR_DOWN_DONE": 15,
        "TR_MLP_SYNC": 20,
        "TR_ATT_IN": 5,
    }
    for s in range(steps):
        t0 = 1000.0 * (s + 1)
        t[s, 24 * tr_l] = t0
        for layer in range(24):
            base = layer * tr_l
            fa = layer % 4 == 3
            for name, o in off.items():
                t[s, base + tp[name]] = t0 + 20 * layer + o
            if fa:  # attention layers: o_proj done / barrier passed at points 4 and 5
                t[s, base + tp["TR_ITEM_IN"]] = t0 + 20 * layer + 10
                t[s, base + tp["TR_ITEM_SS"]] = t0 + 20 * layer + 11
            else:
                t[s, base + tp["TR_ITEM_IN"], 3] = np.nan
                t[s, base + tp["TR_ITEM_SS"], 3] = np.nan
            t[s, base + tp["TR_DOWN_DONE"], 2] += 3
        t[s, 24 * tr_l + 1] = t0 + 482
        t[s, 24 * tr_l + 4] = t0 + 485.5  # LM rows streamed
        t[s, 24 * tr_l + 2] = t0 + 487
        t[s, 24 * tr_l + 3] = t0 + 488
    return t, tp


def test_trace_analysis_recovers_known_phase_times():
    t, tp = _synthetic_trace()
    a = trace.analyse(t, tp)
    seg = a["segments"]
    gdn = {k: v["gdn_us"] for k, v in seg.items()}
    fa = {k: v["attn_us"] for k, v in seg.items()}
    assert gdn["P1 prologue (release -> x ready)"] == pytest.approx(18 * 1)
    assert gdn["P1 in_proj / qkv"] == pytest.approx(18 * 2) and fa["P1 in_proj / qkv"] == pytest.approx(6 * 2)
    assert gdn["item: polls + conv"] == pytest.approx(18 * 1)
    assert gdn["item: recurrence + sibling wait"] == pytest.approx(18 * 2)
    assert gdn["item: out_proj + adds"] == pytest.approx(18 * 1)
    assert fa["mixer items"] == pytest.approx(6 * 4)
    assert gdn["mixer barrier"] == pytest.approx(18) and fa["mixer barrier"] == 0  # (none after an attention mixer)
    assert fa["P3 o_proj prologue"] == pytest.approx(6 * 2) and fa["P3 o_proj"] == pytest.approx(6)
    assert fa["P3 barrier"] == pytest.approx(6)
    assert gdn["P4 prologue"] == pytest.approx(18 * 4) and fa["P4 prologue"] == pytest.approx(6 * 1)
    assert gdn["P4 barrier"] == pytest.approx(18 * 5)
    assert gdn["LM prologue"] == pytest.approx(2) and gdn["LM head stream"] == pytest.approx(3.5)
    assert gdn["LM rescore + argmax"] == pytest.approx(1.5) and gdn["LM barrier"] == pytest.approx(1)
    assert sum(v["gdn_us"] + v["attn_us"] for v in seg.values()) == pytest.approx(488)
    assert a["step_us"] == pytest.approx(488)
    assert a["attention_items"]["attention item: wait + norms (median)"] == pytest.approx(2)
    assert a["attention_items"]["attention item: work (slowest)"] == pytest.approx(2)
    assert a["skew_us"]["P4"]["max"] == pytest.approx(3) and a["skew_us"]["mixer"]["max"] == pytest.approx(0)
    assert a["last_blocks"][0] == (2, 24 * 2)  # block 2, every layer of the 2 analysed steps


def test_trace_analysis_reads_a_library_without_the_lm_stream_point():
    """A library from before the LM head's streamed point (4 points per step) gives its one LM head segment."""
    t, tp = _synthetic_trace()
    seg = trace.analyse(t[:, :-1], tp)["segments"]
    assert seg["LM head + argmax"]["gdn_us"] == pytest.approx(5) and "LM head stream" not in seg
    assert sum(v["gdn_us"] + v["attn_us"] for v in seg.values()) == pytest.approx(488)


def test_trace_analysis_refuses_a_foreign_trace():
    t, tp = _synthetic_trace()
    with pytest.raises(UserError, match="points per step"):
        trace.analyse(t[:, :-2], tp)
    with pytest.raises(UserError, match="more than 4 steps"):
        trace.analyse(t[:3], tp)


def test_kernel_tools_need_a_gpu(monkeypatch):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    from typer.testing import CliRunner

    from luce_bench.cli import app

    for args in (["kernel", "bench", "--reps", "1"], ["kernel", "trace"]):
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 2 and "needs a CUDA GPU" in r.output and "Traceback" not in r.output


def test_kernel_bench_passes_its_options_to_the_plan(monkeypatch):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    seen = {}

    def fake_run(plan, say=print, build_dir=None):
        seen["plan"] = plan
        return {"variants": []}

    monkeypatch.setattr(bench, "run", fake_run)
    monkeypatch.setattr("luce_bench.kernels.cli._print_bench", lambda s: None)
    args = ["kernel", "bench", "--prefill", "1,520,8192", "--reps", "4", "--long", "0", "--no-check"]
    args += ["--instances", "3"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    plan = seen["plan"]
    assert plan.prefill_lengths == (1, 520, 8192) and plan.reps == 4 and plan.long_pos == 0 and not plan.check
    assert plan.instances == 3
    r = CliRunner().invoke(app, ["kernel", "bench", "--prefill", "64,x"])
    assert r.exit_code == 2 and "--prefill '64,x'" in r.output


def test_kernel_bench_times_the_prefill_in_every_round_and_takes_the_median_over_all(monkeypatch):
    """A slow first round (5 ms) is outvoted by two rounds at 4 ms; the 200-token check runs once per variant."""
    import torch

    from luce_bench.backends.megakernel import MegakernelBackend

    class FakeBackend:
        layout = None

        def info(self):
            return {}

    calls = {"parity": 0, "prefill": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(bench, "prebuild", lambda variants, out: {v.name: out for v in variants})
    monkeypatch.setattr(bench, "random_state_dict", lambda seed: {})
    monkeypatch.setattr(bench, "bytes_per_token", lambda layout: 1e9)
    monkeypatch.setattr(MegakernelBackend, "from_state_dict", classmethod(lambda cls, sd, **kw: FakeBackend()))
    monkeypatch.setattr(bench, "time_decode", lambda *a, **kw: [0.05])

    def fake_parity(be, n, seed):
        calls["parity"] += 1
        return {"n": n, "rel_l2": 5e-3, "argmax_agree": True}

    def fake_time_prefill(be, n, reps, seed, graph=True):
        calls["prefill"].append((n, graph))
        rnd = (len(calls["prefill"]) - 1) // 2  # one variant, one length: graph and eager per round
        return [0.005 if rnd == 0 else 0.004] * reps

    monkeypatch.setattr(bench, "prefill_parity", fake_parity)
    monkeypatch.setattr(bench, "time_prefill", fake_time_prefill)
    plan = bench.BenchPlan(
        [bench.parse_variant("a")],
        reps=6,
        rounds=3,
        steps=16,
        long_pos=0,
        seed=1,
        check=False,
        per_token=False,
        bandwidth_tbs=4.0,
        prefill_lengths=(520,),
    )
    lines: list[str] = []
    s = bench.run(plan, say=lines.append, build_dir=Path("/nonexistent"))
    row = s["variants"][0]
    assert calls["parity"] == 1 and calls["prefill"] == [(520, True), (520, False)] * 3
    assert row["prefill"] == [
        {"n": 520, "ms": pytest.approx(4.0), "tok_s": pytest.approx(130_000), "eager_ms": pytest.approx(4.0)}
    ]
    assert sum("prefill N=520" in line for line in lines) == 3


def test_kernel_bench_times_every_instance_of_every_variant_in_every_round(monkeypatch, capsys):
    """Each instance of each variant is loaded once and timed in every round, instance-major.

    Two variants loaded three times each: loads and timings go a #1, b #1, a #2, ...; instance k of either variant
    runs at 1 + k/100 of the first's time, so each instance's median is known and the variant's median is the middle
    instance's; the checks and the per-token timing run on the first instance only.
    """
    import torch

    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels import cli

    loads: list[str] = []
    timed: list[tuple[str, int, int]] = []  # (library, instance, position)

    class FakeBackend:
        layout = None

        def __init__(self, lib: str, k: int):
            self.lib, self.k = lib, k

        def info(self):
            return {"options": {}}

    def from_state_dict(cls, sd, lib_dir=None, **kw):
        k = sum(name == lib_dir.name for name in loads)
        loads.append(lib_dir.name)
        return FakeBackend(lib_dir.name, k)

    def time_decode(be, prompt, steps, reps, per_token=False, debug_flags=0):
        timed.append((be.lib, be.k, -1 if per_token else len(prompt)))
        base = 0.064 if len(prompt) == 64 else 0.080
        return [base * (1 + be.k / 100)] * reps

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(bench, "prebuild", lambda variants, out: {v.name: out / v.name for v in variants})
    monkeypatch.setattr(bench, "random_state_dict", lambda seed: {})
    monkeypatch.setattr(bench, "bytes_per_token", lambda layout: 1e9)
    monkeypatch.setattr(MegakernelBackend, "from_state_dict", classmethod(from_state_dict))
    monkeypatch.setattr(bench, "time_decode", time_decode)
    monkeypatch.setattr(bench, "screen_check", lambda be, prompt, steps: timed.append((be.lib, be.k, 0)))
    plan = bench.BenchPlan(
        [bench.parse_variant("a"), bench.parse_variant("b")],
        reps=4,
        rounds=2,
        long_pos=100,
        seed=1,
        check=False,
        bandwidth_tbs=4.0,
        instances=3,
    )
    lines: list[str] = []
    s = bench.run(plan, say=lines.append, build_dir=Path("/libs"))
    assert loads == ["a", "b"] * 3
    order = [(lib, k) for lib, k, pos in timed if pos == 64]
    assert order == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)] * 2
    assert [(lib, k) for lib, k, pos in timed if pos in (0, -1)] == [("a", 0), ("a", 0), ("b", 0), ("b", 0)]
    assert s["instances"] == 3
    for row in s["variants"]:
        assert row["n"] == 4 * 2 * 3
        assert [x["short_tok_s"] for x in row["instances"]] == pytest.approx([2000 / (1 + k / 100) for k in range(3)])
        assert [x["long_tok_s"] for x in row["instances"]] == pytest.approx([1600 / (1 + k / 100) for k in range(3)])
        assert row["short_tok_s"] == pytest.approx(2000 / 1.01) and row["long_tok_s"] == pytest.approx(1600 / 1.01)
    assert "round 1 b #3: pos 64 1960.8 tok/s, pos 100 1568.6 tok/s" in lines
    cli._print_bench(s)
    out = capsys.readouterr().out
    assert "pos 64 by instance" in out and "1,960.8 - 2,000.0" in out


def test_prefill_table_lists_ms_against_n_per_variant():
    from rich.console import Console

    from luce_bench.kernels.cli import prefill_table

    s = {
        "variants": [
            {
                "variant": "a",
                "prefill": [{"n": 520, "ms": 9.1, "tok_s": 57142.9}, {"n": 8192, "ms": 107.9, "tok_s": 75922.1}],
                "prefill_parity": {"n": 200, "rel_l2": 3.5e-3, "argmax_agree": True},
            },
            {"variant": "b", "prefill": [{"n": 520, "ms": 9.6, "tok_s": 54166.7}]},
            {"variant": "c"},
        ]
    }
    console = Console(width=200, record=True)
    console.print(prefill_table(s))
    text = console.export_text()
    rows = {
        cells[0]: cells[1:]
        for cells in ([c.strip() for c in line.split("│")[1:-1]] for line in text.splitlines())
        if cells
    }
    assert rows["520"] == ["9.100", "57,143", "9.600", "54,167"]
    assert rows["8192"] == ["107.900", "75,922", "-", "-"]
    caption = " ".join(text.split())
    assert "a: 200-token prefill vs token by token, logits rel L2 3.5e-03, argmax agrees" in caption
    assert "c ms" not in text


def _fake_kernel_prefill(monkeypatch, be, prefill) -> None:  # noqa: ANN001
    """A loaded-looking backend whose kernel prefill object is `prefill` (weights16 decides the fp16 check)."""
    monkeypatch.setattr(be, "_kernel_prefill", lambda: prefill)
    be._kprefill, be._bufs = prefill, {"wblob": None}


@pytest.mark.tries("fault", "kernel prefill: the device's shared memory per block is too small for its kernels")
def test_a_device_too_small_for_the_kernel_prefill_takes_the_token_path_and_says_why(monkeypatch):
    """As on an RTX 3090 or 4090 today: the library refuses before a kernel runs; the prompt goes token by token."""
    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels.abi import error_codes
    from luce_bench.kernels.lib import LuceMkError

    be = MegakernelBackend(prefill="kernel")
    calls = []
    refusal = "megakernel prefill: the prefill needs more shared memory per block than the device has (code -6)"

    class Prefill:
        def weights16(self, wblob):
            return wblob

    def kernel_path(ids, logits):
        calls.append("kernel")
        raise LuceMkError(refusal, error_codes()["PREFILL_SMEM"])

    _fake_kernel_prefill(monkeypatch, be, Prefill())
    monkeypatch.setattr(be, "_prefill_kernel", kernel_path)
    monkeypatch.setattr(be, "_prefill_tokens", lambda ids, logits: ("tokens", len(ids)))
    assert be.prefill([1, 2, 3]) == ("tokens", 3) and be.prefill_fallback == refusal
    assert be.prefill([4, 5]) == ("tokens", 2) and be.prefill_fallback == refusal
    assert calls == ["kernel"]  # asked once
    other = MegakernelBackend(prefill="kernel")  # any other failure is not a fallback
    _fake_kernel_prefill(monkeypatch, other, Prefill())
    monkeypatch.setattr(other, "_prefill_kernel", lambda ids, logits: (_ for _ in ()).throw(LuceMkError("boom", 700)))
    with pytest.raises(LuceMkError, match="boom"):
        other.prefill([1, 2])


def test_a_one_token_prompt_is_a_decode_step_on_every_path(monkeypatch):
    """A one-token prompt: one decode step (~0.55 ms on the H200) instead of the kernel prefill (~2.1 ms).

    It is not a fallback, and meta.json's prompt path stays the one the longer prompts took.
    """
    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend(prefill="kernel")

    class Prefill:
        graph, graph_error = True, None

        def weights16(self, wblob):
            return wblob

        def launches(self, n):
            return 230

    def path(name):
        def run(ids, logits):
            be.prefill_used = name
            return name, len(ids)

        return run

    _fake_kernel_prefill(monkeypatch, be, Prefill())
    monkeypatch.setattr(be, "_prefill_kernel", path("kernel"))
    monkeypatch.setattr(be, "_prefill_tokens", path("tokens"))
    assert be.prefill([7]) == ("tokens", 1) and be.prefill_fallback is None and be.prompt_path is None
    assert be.prefill([7, 8]) == ("kernel", 2) and be.prompt_path == "kernel"
    assert be.prefill([9]) == ("tokens", 1) and be.prefill_used == "tokens" and be.prompt_path == "kernel"
    info = be._prefill_info()
    assert info["last_used"] == "kernel" and info["one_token_prompts"] == "decode step"


def test_a_prompt_past_the_kv_cache_is_refused_before_any_of_it_runs(monkeypatch):
    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend(max_seq=16, prefill="tokens")
    ran = []
    monkeypatch.setattr(be, "_prefill_tokens", lambda ids, logits: ran.append(ids))
    be._pos = 10
    with pytest.raises(UserError, match="sequence of 17 tokens exceeds the megakernel's KV cache"):
        be.prefill([1] * 7)
    assert ran == []
    be.prefill([1] * 6)
    assert ran == [[1] * 6]


def test_weights_fp16_cannot_hold_send_every_prompt_the_token_way_after_one_check(monkeypatch):
    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend(prefill="kernel")
    checks = []
    why = "a weight beyond fp16's range (model.layers.3.mlp.down_proj.weight: 7.1e+04)"

    class Prefill:
        def weights16(self, wblob):
            checks.append(1)
            raise UserError(why)

    _fake_kernel_prefill(monkeypatch, be, Prefill())
    monkeypatch.setattr(be, "_prefill_tokens", lambda ids, logits: ("tokens", len(ids)))
    assert be.prefill([1, 2]) == ("tokens", 2) and be.prefill([3, 4]) == ("tokens", 2)
    assert be.prefill_fallback == why and checks == [1]  # the ~1 GB conversion is not tried again per prompt


def test_a_kept_context_whose_kv_rows_were_written_again_is_not_restored():
    """save_context keeps the states, not the KV rows below the position.

    A write below it makes them another prompt's (measure.py and bench.py save again before they restore).
    """
    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend()
    be._bufs = {k: FakeBuf() for k in ("gdn_state", "conv_hist", "best", "last_token")}
    be._pos = 10
    be.save_context()
    be._writes_at(10)  # decoding on from the kept position
    be.restore_context()
    assert be._pos == 10
    be._writes_at(0)  # a reset and a new prompt
    with pytest.raises(RuntimeError, match="written since save_context"):
        be.restore_context()
    be.save_context()
    be.restore_context()


def test_after_a_timing_launch_the_sequence_needs_a_reset(monkeypatch):
    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend(prefill="tokens")
    monkeypatch.setattr(be, "_prefill_tokens", lambda ids, logits: "ran")
    be._timing_launch = True  # what run_steps(..., debug_flags=...) leaves
    with pytest.raises(RuntimeError, match="call reset"):
        be.prefill([1])
    be._bufs = {k: FakeBuf() for k in ("gdn_state", "conv_hist", "best", "scratch", "sync")}
    be.reset()
    assert be.prefill([1]) == "ran"


class FakeBuf:
    """A device buffer's in-place API, for the backend's host-side bookkeeping."""

    def zero_(self):
        return self

    def clone(self):
        return FakeBuf()

    def copy_(self, other):
        return self


class _ScreenedBackend:
    """The part of MegakernelBackend that screen_check drives.

    Greedy tokens that part from the full head's at a chosen step (a screen that went wrong), and rows recomputed per
    screened step.
    """

    def __init__(self, part_at: int | None, rows_per_step: int = 650, screen: str = "yes"):
        from luce_bench.kernels.tune import Tune

        self.tune, self.part_at, self.rows, self.screen = Tune(), part_at, rows_per_step, screen
        self.tunes_run: list[int] = []
        self._rows = 0

    def info(self):
        return {"lm_screen": self.screen}

    def reset(self):
        pass

    def prefill(self, prompt):
        self._rows = 0

    def lm_rescored(self):
        n, self._rows = self._rows, 0
        return n

    def run_steps(self, n):
        torch = pytest.importorskip("torch")
        self.tunes_run.append(self.tune.lm_screen)
        toks = list(range(n))
        if self.tune.lm_screen:
            self._rows += self.rows * n
            if self.part_at is not None:
                toks[self.part_at :] = [t + 1 for t in toks[self.part_at :]]
        return torch.tensor(toks), None


@pytest.mark.parametrize("part_at", [None, 0, 77])
def test_screen_check_counts_the_leading_equal_steps_and_restores_the_tune(part_at):
    be = _ScreenedBackend(part_at)
    rep = bench.screen_check(be, [1, 2, 3], 128)
    assert rep == {"steps": 128, "equal": 128 if part_at is None else part_at, "rescored_per_step": 650.0}
    assert be.tunes_run == [1, 0] and be.tune.lm_screen == 1  # screened, then the full head; the tune given back


def test_screen_check_skips_a_variant_without_the_screen():
    be = _ScreenedBackend(None, screen="no (tune lm_screen=0)")
    assert bench.screen_check(be, [1], 8) is None and be.tunes_run == []


def test_trace_analysis_follows_the_gdn_mixer_skew_to_where_it_grew():
    """Block 1 finishes in_proj 0.5 us late and its item 1.5 us later still: the path shows both, point by point."""
    t, tp = _synthetic_trace()
    for layer in (x for x in range(24) if x % 4 != 3):
        base = layer * tp["TR_L"]
        t[:, base + tp["TR_PROJ_DONE"], 1] += 0.5
        t[:, base + tp["TR_ITEM_IN"], 1] += 1.0
        t[:, base + tp["TR_ITEM_SS"], 1] += 1.0
        t[:, base + tp["TR_MIX_DONE"], 1] += 2.0
        t[:, base + tp["TR_MIX_DONE"], 0] += 0.5  # another block a little late: the median stays at the others'
    a = trace.analyse(t, tp)
    path = a["gdn_skew_path_us"]
    assert list(path) == ["x ready", "in_proj done", "item inputs", "item sums of squares", "mixer done"]
    assert path["x ready"] == {"slowest_minus_median": pytest.approx(0), "last_block_late_by": pytest.approx(0)}
    assert path["in_proj done"]["last_block_late_by"] == pytest.approx(0.5)
    assert path["item inputs"]["slowest_minus_median"] == pytest.approx(1.0)  # (block 3 has no item: 3 blocks)
    assert path["mixer done"]["slowest_minus_median"] == pytest.approx(1.75)  # median of 7, 7.5, 9, 7 is 7.25
    assert path["mixer done"]["last_block_late_by"] == pytest.approx(1.75)
    assert a["last_blocks_mixer"] == [(1, 18 * 2)]  # every GDN layer of the 2 analysed steps


def test_trace_analysis_follows_the_mlp_barrier_skew_to_where_it_grew():
    """Block 2 is 1 us late at its MLP prologue, 2 at gate/up and 3 at the arrival (down done), in every layer."""
    t, tp = _synthetic_trace()
    for layer in range(24):
        base = layer * tp["TR_L"]
        t[:, base + tp["TR_MLP_X_READY"], 2] += 1.0
        t[:, base + tp["TR_GATE_UP_DONE"], 2] += 2.0  # (the synthetic trace has it 3 us late at down done already)
    a = trace.analyse(t, tp)
    path = a["p4_skew_path_us"]
    assert list(path) == ["barrier before the MLP passed", "MLP x ready", "gate/up done", "down done (arrival)"]
    for name, late in zip(path, (0.0, 1.0, 2.0, 3.0), strict=True):  # median of 4 blocks, one late: the others
        assert path[name] == {"slowest_minus_median": pytest.approx(late), "last_block_late_by": pytest.approx(late)}
    assert a["last_blocks"] == [(2, 24 * 2)]  # every layer, GDN and attention, of the 2 analysed steps


def test_trace_raw_timestamps_round_trip(tmp_path):
    t, tp = _synthetic_trace()
    out = tmp_path / "trace.npz"
    trace.save_raw(out, t, tp, {"seed": 7, "gpu": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["trace.npz"]  # no partial file left beside it
    with np.load(out) as z:
        np.testing.assert_array_equal(z["t_us"], t)  # NaN where block 3 has no item, kept
        assert dict(zip(z["point_names"].tolist(), z["point_values"].tolist(), strict=True)) == tp
        assert json.loads(str(z["meta_json"])) == {"gpu": "test", "seed": 7}


@pytest.mark.tries("fault", "disk full while writing a kernel trace's raw timestamps")
def test_trace_raw_write_failure_leaves_nothing(tmp_path, monkeypatch):
    t, tp = _synthetic_trace()

    def broken(fh, **arrays):
        fh.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez_compressed", broken)
    with pytest.raises(OSError, match="disk full"):
        trace.save_raw(tmp_path / "trace.npz", t, tp, {})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.tries("bad input", "kernel bench / trace: an output file that cannot be written, before any GPU work")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--raw", "{missing}/t.npz"], "--raw {missing}/t.npz: no directory {missing}"),
        (["--json", "{dir}"], "--json {dir}: is a directory"),
    ],
)
def test_kernel_trace_refuses_an_output_it_cannot_write_before_any_gpu_work(tmp_path, monkeypatch, args, message):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    def no_run(**kw):
        raise AssertionError("traced before the output path was checked")

    monkeypatch.setattr(trace, "run", no_run)
    subs = {"missing": str(tmp_path / "missing"), "dir": str(tmp_path)}
    r = CliRunner().invoke(app, ["kernel", "trace", *[a.format(**subs) for a in args]])
    assert r.exit_code == 2 and message.format(**subs) in r.output and "Traceback" not in r.output


@pytest.mark.tries("bad input", "kernel trace: a bad build option, --prebuilt folder or tune, before the GPU check")
@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--prebuilt", "{missing}"], {}, "--prebuilt {missing}: no such directory"),
        (["-D", "MK_NOPE=1"], {}, "unknown kernel option 'MK_NOPE'"),
        ([], {"LUCE_BENCH_KERNEL_OPTIONS": "MK_NOPE=1"}, "LUCE_BENCH_KERNEL_OPTIONS: unknown kernel option 'MK_NOPE'"),
        ([], {"LUCE_BENCH_KERNEL_TUNE": "pause_mask=2"}, "LUCE_BENCH_KERNEL_TUNE: kernel tune pause_mask=2"),
    ],
)
def test_kernel_trace_checks_its_inputs_before_it_needs_a_gpu(tmp_path, monkeypatch, args, env, message):
    import torch
    from typer.testing import CliRunner

    from luce_bench.cli import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # (as on a GPU machine: the inputs come first)
    monkeypatch.setattr(trace, "capture", lambda *a: pytest.fail("traced with bad inputs"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    subs = {"missing": str(tmp_path / "missing")}
    r = CliRunner().invoke(app, ["kernel", "trace", *[a.format(**subs) for a in args]])
    said = " ".join(r.output.split())
    assert r.exit_code == 2 and message.format(**subs) in said and "Traceback" not in r.output, r.output


@pytest.mark.tries("bad input", "kernel bench / trace: an output file that cannot be written, before any GPU work")
def test_kernel_bench_refuses_a_json_path_it_cannot_write_before_any_gpu_work(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    def no_run(plan, say=print, build_dir=None):
        raise AssertionError("benchmarked before the output path was checked")

    monkeypatch.setattr(bench, "run", no_run)
    bad = tmp_path / "missing" / "bench.json"
    r = CliRunner().invoke(app, ["kernel", "bench", "--json", str(bad)])
    assert r.exit_code == 2 and f"--json {bad}: no directory" in r.output and "Traceback" not in r.output
