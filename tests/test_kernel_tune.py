"""The decode kernel's run-time tune (luce_bench/kernels/tune.py): parsing, ranges, the per-GPU choice, ABI mirrors."""

from __future__ import annotations

import dataclasses
import re

import pytest

from luce_bench.errors import UserError
from luce_bench.kernels import tune as kt


def test_fields_parse_into_a_changed_tune():
    base = kt.Tune()
    assert kt.parse_fields("inflight=2, spin_sleep_ns=0x40", "x") == {"inflight": 2, "spin_sleep_ns": 64}
    assert kt.parse_fields("", "x") == {} and kt.parse_fields(None, "x") == {}
    t = base.changed("inflight_lm=3,pause_mask=4", "x")
    assert t.inflight_lm == 3 and t.pause_mask == 4 and t.inflight == base.inflight
    assert t.as_dict() == {**base.as_dict(), "inflight_lm": 3, "pause_mask": 4}


@pytest.mark.parametrize(
    "text, message",
    [
        ("l2_lead=4", "unknown kernel tune field 'l2_lead'; the kernel reads deep_phases, grid, inflight"),
        ("inflight", "'inflight': expected inflight=INTEGER"),
        ("inflight=two", "'inflight=two': expected inflight=INTEGER"),
        ("inflight=65", "kernel tune inflight=65: expected 0..64"),
        ("spin_sleep_ns=-1", "kernel tune spin_sleep_ns=-1: expected 0..4096"),
        ("pause_mask=1", "kernel tune pause_mask=1: expected a sum of 4 (x loads) and 8 (GDN items)"),
        ("inflight=2,inflight=3", "inflight is given twice"),
        ("grid=7", "kernel tune grid=7: expected 0 (one block per SM) or 8 and more"),
        ("grid=1025", "kernel tune grid=1025: expected 0..1024"),
    ],
)
def test_bad_fields_are_one_line(text, message):
    with pytest.raises(UserError) as err:
        kt.Tune().changed(text, "LUCE_BENCH_KERNEL_TUNE")
    assert str(err.value).startswith("LUCE_BENCH_KERNEL_TUNE: ")  # where the bad value came from, once
    assert str(err.value).count("LUCE_BENCH_KERNEL_TUNE") == 1
    assert message in str(err.value) and "\n" not in str(err.value)


def test_the_device_choice_and_the_environment(monkeypatch):
    monkeypatch.delenv(kt.TUNE_ENV, raising=False)
    # the H200 measured nothing better than the defaults; an unmeasured GPU starts from them; the H100 measured
    # pause_ready=3 (v28, session 43)
    for name in ("NVIDIA H200", "NVIDIA GeForce RTX 3090"):
        assert kt.for_device(name) == kt.Tune(inflight=1, inflight_lm=2, pause_mask=12, spin_sleep_ns=0)
    assert kt.for_device("NVIDIA H100 80GB HBM3") == kt.Tune(pause_ready=3)
    monkeypatch.setenv(kt.TUNE_ENV, "inflight=3")
    assert kt.for_device("NVIDIA H200").inflight == 3
    monkeypatch.setenv(kt.TUNE_ENV, "inflight=3,bogus=1")
    with pytest.raises(UserError, match=r"^LUCE_BENCH_KERNEL_TUNE: unknown kernel tune field 'bogus'"):
        kt.for_device("NVIDIA H200")
    monkeypatch.setenv(kt.TUNE_ENV, "inflight=65")
    with pytest.raises(UserError, match=r"^LUCE_BENCH_KERNEL_TUNE: kernel tune inflight=65: expected 0\.\.64$"):
        kt.for_device("NVIDIA H200")


def test_the_python_mirrors_follow_the_header():
    """LuceMkTune's fields, in order, are the ctypes struct's and the Tune dataclass's (luce_mk.h is the source)."""
    from luce_bench.kernels import lib as klib
    from luce_bench.kernels.build import source_dir

    header = (source_dir() / "luce_mk.h").read_text()
    body = re.search(r"typedef struct LuceMkTune \{(.*?)\} LuceMkTune;", header, re.S).group(1)
    fields = re.findall(r"^\s*int (\w+);", body, re.M)
    assert fields == [name for name, _ in klib.LuceMkTune._fields_]
    # the dataclass adds the grid, the deep phases and pause_ready, which travel in LuceMkParams (appended in ABI 11
    # and 12: older libraries ignore them)
    deep = ["deep_phases", "inflight_deep", "pause_ready"]
    assert [*fields, "grid", *deep] == [f.name for f in dataclasses.fields(kt.Tune)]
    # appended (the tune in ABI 9, the screened LM head's pointers in ABI 10, the grid in ABI 11, the deep phases and
    # pause_ready in ABI 12): older libraries ignore them
    assert [name for name, _ in klib.LuceMkParams._fields_[-7:]] == ["tune", "lm8", "lm_rescored", "grid", *deep]
    params = re.search(r"typedef struct LuceMkParams \{(.*?)\} LuceMkParams;", header, re.S).group(1)
    names = re.findall(r"^\s*[\w ]+?\**\s*\**(\w+);", params, re.M)
    assert names == [name for name, _ in klib.LuceMkParams._fields_]
    # the pause reasons the tune accepts are LuceMkPauseReasons' (the launch refuses any other bit)
    reasons = dict(re.findall(r"^\s*LUCE_MK_PAUSE_(\w+)\s*=\s*(\d+)", header, re.M))
    assert {k: int(v) for k, v in reasons.items()} == {"X_LOAD": kt.PAUSE_X_LOAD, "GDN_ITEM": kt.PAUSE_GDN_ITEM}
    launch_check = re.search(r"const unsigned pauses = ([^;]+);", (source_dir() / "mk_decode.cu").read_text()).group(1)
    assert set(re.findall(r"LUCE_MK_PAUSE_(\w+)", launch_check)) == set(reasons)


def test_the_grid_field():
    """0 launches one block per SM; else at least the kernel's MIN_GRID, which the dataclass repeats.

    The upper end (the GPU's SM count) is the backend's check at launch.
    """
    from luce_bench.kernels.build import source_dir

    assert kt.Tune().grid == 0 and kt.Tune(grid=8).grid == 8 and kt.Tune().changed("grid=100", "x").grid == 100
    layout = (source_dir() / "mk_layout.cuh").read_text()
    assert f"static_assert(MIN_GRID == {kt.Tune.MIN_GRID}," in layout
    with pytest.raises(UserError, match=r"^kernel tune grid=1: expected 0 \(one block per SM\) or 8 and more$"):
        kt.Tune(grid=1)


def test_the_backend_checks_the_grid_against_the_gpu_and_the_library():
    """The effective grid: one block per SM for 0; the tune's otherwise, up to the SM count, on ABI 11 and later."""
    from types import SimpleNamespace

    from luce_bench.backends.megakernel import MegakernelBackend

    be = MegakernelBackend(tune=kt.Tune())
    be.launch, be._abi, be._build = SimpleNamespace(grid=132, sm_count=132), 11, SimpleNamespace(lib="libluce_mk.so")
    assert be.grid == 132
    be.tune = kt.Tune(grid=61)
    assert be.grid == 61
    be.tune = kt.Tune(grid=133)
    with pytest.raises(UserError, match=r"^kernel tune grid=133: this GPU has 132 SMs \(one block per SM at most\)$"):
        _ = be.grid
    be.tune, be._abi = kt.Tune(grid=61), 10
    with pytest.raises(UserError, match=r"grid=61: libluce_mk.so is ABI 10, which launches one block per SM"):
        _ = be.grid
    be.tune = kt.Tune()
    assert be.grid == 132  # an older library with the default grid runs as before


def test_the_abi12_fields():
    """deep_phases is a mask of the layer phases, pause_ready a copy count, as the launch checks them.

    An older library refuses either.
    """
    from types import SimpleNamespace

    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels.build import source_dir

    t = kt.Tune()
    assert (t.deep_phases, t.pause_ready) == (0, 0)  # no GPU's measured tune uses them
    assert t.changed("deep_phases=1,inflight_deep=3", "x") == kt.Tune(deep_phases=1, inflight_deep=3)
    with pytest.raises(UserError, match=r"^x: kernel tune deep_phases=16: expected 0\.\.15$"):
        t.changed("deep_phases=16", "x")
    with pytest.raises(UserError, match=r"^x: kernel tune pause_ready=65: expected 0\.\.64$"):
        t.changed("pause_ready=65", "x")
    launch = (source_dir() / "mk_decode.cu").read_text()
    for bound in ("p->deep_phases > 15", "p->inflight_deep > 64", "p->pause_ready > 64"):
        assert bound in launch
    be = MegakernelBackend(tune=kt.Tune(deep_phases=5, pause_ready=2))
    be._abi, be._build = 12, SimpleNamespace(lib="libluce_mk.so")
    be._check_abi12_fields()
    be._abi = 11
    with pytest.raises(UserError, match=r"^kernel tune deep_phases=5: libluce_mk.so is ABI 11, which keeps"):
        be._check_abi12_fields()
    be.tune = kt.Tune(pause_ready=2)
    with pytest.raises(UserError, match=r"^kernel tune pause_ready=2: libluce_mk.so is ABI 11, whose pauses"):
        be._check_abi12_fields()
    be.tune = kt.Tune()
    be._check_abi12_fields()  # an older library with neither runs as before


def test_an_older_library_drops_the_measured_abi12_fields_but_not_asked_ones(monkeypatch):
    monkeypatch.delenv(kt.TUNE_ENV, raising=False)
    h100 = "NVIDIA H100 80GB HBM3"
    measured = kt.for_device(h100)
    assert kt.for_library(measured, h100, 12) == measured  # ABI 12 runs them
    assert kt.for_library(measured, h100, 11) == kt.Tune()  # ABI 11 lacks pause_ready: the old pauses, no refusal
    asked = measured.changed_by({"pause_ready": 2, "inflight_lm": 3})  # a variant's own value stays (refused later)
    assert kt.for_library(asked, h100, 11) == asked
    monkeypatch.setenv(kt.TUNE_ENV, "pause_ready=3")  # asked in the environment: kept, even at the measured value
    assert kt.for_library(kt.for_device(h100), h100, 11).pause_ready == 3
