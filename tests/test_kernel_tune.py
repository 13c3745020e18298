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
        ("l2_lead=4", "unknown kernel tune field 'l2_lead'; the kernel reads inflight, inflight_lm"),
        ("inflight", "'inflight': expected inflight=INTEGER"),
        ("inflight=two", "'inflight=two': expected inflight=INTEGER"),
        ("inflight=65", "kernel tune inflight=65: expected 0..64"),
        ("spin_sleep_ns=-1", "kernel tune spin_sleep_ns=-1: expected 0..4096"),
        ("pause_mask=1", "kernel tune pause_mask=1: expected a sum of 4 (x loads) and 8 (GDN items)"),
        ("inflight=2,inflight=3", "inflight is given twice"),
        ("streamers=33", "kernel tune streamers=33: expected 0..32"),
        ("streamers=4,stream_lead=0", "kernel tune stream_lead=0: expected 1..64"),
        ("prefetch_lead=17", "kernel tune prefetch_lead=17: expected 0..16"),
        ("kv_prefetch=2", "kernel tune kv_prefetch=2: expected 0..1"),
        ("stream_lines=-1", "kernel tune stream_lines=-1: expected 0..1"),
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
    # the H200 and H100 measured nothing better than the defaults; an unmeasured GPU starts from them
    for name in ("NVIDIA H200", "NVIDIA H100 80GB HBM3", "NVIDIA GeForce RTX 3090"):
        expected = kt.Tune(
            inflight=1,
            inflight_lm=2,
            pause_mask=12,
            spin_sleep_ns=0,
            streamers=0,
            stream_lead=4,
            prefetch_lead=0,
            kv_prefetch=0,
            stream_lines=0,
        )
        assert kt.for_device(name) == expected
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
    assert fields == [f.name for f in dataclasses.fields(kt.Tune)]
    assert klib.LuceMkParams._fields_[-1][0] == "tune"  # appended (ABI 9): older libraries ignore it


@pytest.mark.parametrize(
    "streamers, sms, cap, archs, why",
    [
        (0, 8, (8, 0), ("sm_80",), None),  # no streamers: nothing to refuse
        (4, 132, (9, 0), ("sm_90",), None),  # an H200 / H100
        (4, 132, (9, 0), ("sm_80", "sm_86", "sm_89", "sm_90"), None),
        (4, 132, (10, 0), ("sm_90",), None),  # a newer GPU runs the sm_90 code (PTX)
        (4, 132, (9, 0), (), None),  # a prebuilt library without its ptxas report: the kernel decides
        (4, 108, (8, 0), ("sm_80",), "needs an sm_90 GPU (L2 prefetch); this one is sm_80"),
        (4, 132, (9, 0), ("sm_80", "sm_89"), "needs the kernel built for sm_90; this library has sm_80, sm_89"),
        (4, 132, (9, 0), ("sm_100",), "needs the kernel built for sm_90; this library has sm_100"),
        (25, 32, (9, 0), ("sm_90",), "leaves 7 of 32 SMs computing; the kernel needs 8"),
        (24, 32, (9, 0), ("sm_90",), None),
        (
            3,
            132,
            (9, 0),
            ("sm_90",),
            "leaves 129 computing blocks; one streamer serves at most 32 (streamers >= 4 here)",
        ),
        (1, 33, (9, 0), ("sm_90",), None),  # 32 computing blocks, one streamer
        (1, 34, (9, 0), ("sm_90",), "leaves 33 computing blocks; one streamer serves at most 32 (streamers >= 2 here)"),
    ],
)
def test_streamers_are_refused_where_they_cannot_run(streamers, sms, cap, archs, why):
    got = kt.sm90_refusal(kt.Tune(streamers=streamers), sms, cap, archs)
    assert got == (None if why is None else f"streamers={streamers} {why}")


def test_the_prefetch_fields_a_tune_asks_for():
    assert kt.Tune().prefetching() == "" and kt.Tune(stream_lead=9).prefetching() == ""
    t = kt.Tune(streamers=4, kv_prefetch=1)
    assert t.prefetching() == "streamers=4, kv_prefetch=1" and t.sm90_prefetching() == "streamers=4"
    # the attention items' K/V prefetch is plain prefetch.global.L2: any arch runs it
    assert kt.sm90_refusal(kt.Tune(kv_prefetch=1), 84, (8, 6), ("sm_86",)) is None


def test_the_producers_prefetch_is_refused_below_sm_90():
    both = kt.Tune(streamers=4, prefetch_lead=2)
    assert kt.sm90_refusal(kt.Tune(prefetch_lead=2), 132, (9, 0), ("sm_90",)) is None
    assert kt.sm90_refusal(kt.Tune(prefetch_lead=2), 8, (9, 0), ("sm_90",)) is None  # no streamers: 8 SMs compute
    assert kt.sm90_refusal(kt.Tune(prefetch_lead=2), 84, (8, 6), ("sm_86",)) == (
        "prefetch_lead=2 needs an sm_90 GPU (L2 prefetch); this one is sm_86"
    )
    assert kt.sm90_refusal(both, 132, (9, 0), ("sm_80",)) == (
        "streamers=4, prefetch_lead=2 needs the kernel built for sm_90; this library has sm_80"
    )


def test_the_computing_block_limits_follow_the_kernel():
    from luce_bench.kernels.build import source_dir

    layout = (source_dir() / "mk_layout.cuh").read_text()
    assert f"static_assert(MIN_GRID == {kt.MIN_COMPUTING_BLOCKS}," in layout
    assert f"static_assert(STREAMED_PER_STREAMER == {kt.STREAMED_PER_STREAMER}," in layout
