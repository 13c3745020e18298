"""The idle baseline right after settling under load: neither the load's fall nor a stale counter edge counts as idle.

The simulated card's power is scripted: 330 W of load, a fall to 30 W over `FALL_S` once the work stops, then 30 W.
Its energy counter moves in 0.1 s ticks, as NVML's does. Before the fix, the window began at the last iteration and
took the fall and up to one tick of load energy as idle: this card's 30 W read as 33.0-36.0 W in a 10 s window.
On a real H100 80GB HBM3 (session 54, read-only, stock 700 W; the two readings alternately), each after 3 s of bf16
matmuls, three 5 s baselines read 131.8, 126.4 and 125.2 W the old way and 123.0, 122.4 and 122.8 W this way, against
122.0 W over 10 s of a card at rest for 5 s; its energy counter ticked every 100.0 ms (97.5-102.5).
"""

from __future__ import annotations

import pytest

from luce_bench import config
from luce_bench.clock import SimClock
from luce_bench.context import RunContext
from luce_bench.gpu.fake import FakeGPU
from luce_bench.measure import IDLE_DRAIN_S, Meter

LOAD_W, IDLE_W, LOAD_S, FALL_S = 330.0, 30.0, 3.0, 0.2


def _meter_after_load(model, stop_s: float, tick_s: float = 0.1) -> Meter:
    """A meter on a card that ran a load until `stop_s` (clock at that moment), then falls to idle over FALL_S."""
    clock = SimClock()
    trace = [(0.0, LOAD_W), (stop_s, LOAD_W), (stop_s + FALL_S, IDLE_W), (1e6, IDLE_W)]
    gpu = FakeGPU(clock=clock, counter_tick_s=tick_s, trace_w=trace)
    clock.sleep(stop_s)
    ctx = RunContext(config.from_mapping({"tests": ["tg16"]}), clock, gpu=gpu)
    return Meter(ctx, model, None, lambda record: None)


@pytest.mark.parametrize("phase_s", [0.0, 0.03, 0.06, 0.099])
@pytest.mark.parametrize("idle_s", [1.0, 9.95, 10.0])  # (9.95: not a whole number of ticks)
def test_idle_baseline_reads_the_idle_draw_wherever_the_load_stopped(tiny_model, phase_s, idle_s):
    meter = _meter_after_load(tiny_model, LOAD_S + phase_s)
    t0 = meter.ctx.clock.now_s()
    assert meter.idle_power_w(idle_s) == pytest.approx(IDLE_W, rel=1e-3)
    # the window is as long as asked, plus at most the wait for the counter's tick at its end
    assert idle_s <= meter.ctx.clock.now_s() - t0 <= idle_s + 0.1 + 0.01 + 1e-9


def test_the_drain_is_at_most_a_quarter_of_a_short_window(tiny_model):
    # a fall of 1 s: a 10 s window drains it (1 s unmeasured, then the tick), a 0.4 s window drains only 0.1 s
    assert IDLE_DRAIN_S == 1.0
    for idle_s, expect_w in ((10.0, IDLE_W), (0.4, None)):
        clock = SimClock()
        trace = [(0.0, LOAD_W), (LOAD_S, LOAD_W), (LOAD_S + 1.0, IDLE_W), (1e6, IDLE_W)]
        gpu = FakeGPU(clock=clock, counter_tick_s=0.1, trace_w=trace)
        clock.sleep(LOAD_S)
        ctx = RunContext(config.from_mapping({"tests": ["tg16"]}), clock, gpu=gpu)
        meter = Meter(ctx, tiny_model, None, lambda record: None)
        got_w = meter.idle_power_w(idle_s)
        if expect_w is None:
            # measured from 0.2 s (0.1 drain + the tick) to 0.4 s: the fall's 270 -> 210 W stretch, about 240 W
            assert got_w == pytest.approx(LOAD_W - (LOAD_W - IDLE_W) * 0.3, rel=0.02)
        else:
            assert got_w == pytest.approx(expect_w, rel=1e-3)


def test_a_counter_without_ticks_is_read_as_it_is(tiny_model):
    meter = _meter_after_load(tiny_model, LOAD_S, tick_s=0.0)  # a counter that moves continuously
    assert meter.idle_power_w(10.0) == pytest.approx(IDLE_W, rel=1e-6)


def test_no_gpu_no_baseline(tiny_model):
    meter = Meter(RunContext(config.from_mapping({"tests": ["tg16"]}), SimClock()), tiny_model, None, lambda r: None)
    assert meter.idle_power_w(10.0) is None


def test_windows_after_a_random_gap_start_under_load(tiny_model, tmp_path):
    # the counter at a window's start edge is up to a tick (0.1 s) old; after a random gap that stale stretch was the
    # gap's lower draw, so every window but the first read low (here -0.28 % over 39 windows against the sampled
    # integral; -0.16 % with the pre-roll, within the integral's own error). Now PREROLL_S of work precedes each start.
    from conftest import simulated_compare

    from luce_bench.measure import PREROLL_S
    from luce_bench.results import read_runs, read_samples

    config = "gpu:\n  fake_clock: virtual\n  fake_preset: h100-sxm\ntests: [tg128]\nreps: 12\nwindow_s: 10.0\n"
    run = simulated_compare(tmp_path, config)
    rows, samples = read_runs(run), read_samples(run)
    assert PREROLL_S >= 0.2
    for r in rows[1:]:
        before = [s.power_w for s in samples if r.t_start_s - PREROLL_S < s.t_s < r.t_start_s]
        assert before and min(before) > 0.9 * r.mean_power_w, (r.rep, before)  # load, not the gap's idle
