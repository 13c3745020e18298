"""Sampler and energy accounting on the FakeGPU: a known power trace gives known joules (±1 %)."""

from __future__ import annotations

import time

import pytest

from luce_bench.clock import SimClock
from luce_bench.gpu.fake import FakeGPU
from luce_bench.sampler import Sampler


def Clock() -> SimClock:  # noqa: N802 - virtual time, advanced by sleep()
    return SimClock(start_s=50.0)


TRACE = [(0.0, 80.0), (2.0, 80.0), (2.0001, 300.0), (6.0, 300.0), (9.0, 150.0), (12.0, 150.0)]
# 0-2 s at 80 W (160 J) + 2-6 s at 300 W (1200 J) + 6-9 s ramp 300->150 (675 J) + 9-12 s at 150 W (450 J) = 2485 J
TRACE_J = 2485.0


def test_known_trace_gives_known_joules_counter_and_samples():
    clock = Clock()
    gpu = FakeGPU(clock=clock, trace_w=TRACE, counter_tick_s=0.1)
    sampler = Sampler(gpu, period_s=0.1, clock=clock)
    t0_s = sampler.now_s()
    e0_mj = gpu.total_energy_mj()
    for i in range(121):  # 12 s at 10 Hz, polled by hand on the virtual clock
        sampler.poll_once()
        if i < 120:
            clock.sleep(0.1)
    t1_s = sampler.now_s()
    counter_j = (gpu.total_energy_mj() - e0_mj) / 1000.0
    assert counter_j == pytest.approx(TRACE_J, rel=0.01)
    assert sampler.integrate_power_j(t0_s, t1_s) == pytest.approx(TRACE_J, rel=0.01)
    summary = sampler.summarize(t0_s, t1_s)
    assert summary["mean_power_w"] == pytest.approx(TRACE_J / 12.0, rel=0.01)
    assert summary["n_samples"] == 121


def test_constant_power_integral_is_exact_including_edges():
    clock = Clock()
    gpu = FakeGPU(clock=clock, trace_w=[(0.0, 200.0)])
    sampler = Sampler(gpu, clock=clock)
    for _ in range(11):
        sampler.poll_once()
        clock.sleep(0.1)
    assert sampler.integrate_power_j(0.05, 0.95) == pytest.approx(180.0)


def test_skips_non_positive_readings():
    clock = Clock()
    gpu = FakeGPU(clock=clock, trace_w=[(0.0, 0.0)])
    sampler = Sampler(gpu, clock=clock)
    assert sampler.poll_once() is None
    assert sampler.samples == []


def test_summary_throttle_share_and_temps():
    clock = Clock()
    gpu = FakeGPU(clock=clock)
    gpu.set_power_limit_mw(200_000)
    sampler = Sampler(gpu, clock=clock)
    for i in range(20):
        gpu.set_load(i >= 10)  # half idle, half power-capped
        sampler.poll_once()
        clock.sleep(0.1)
    s = sampler.summarize(0.0, 2.0)
    assert s["throttled_share"] == pytest.approx(0.5)
    assert s["temp_end_c"] >= s["temp_start_c"]
    assert sampler.samples[-1].limit_w == 200.0


def test_thread_polls_at_period_and_reports_jitter():
    gpu = FakeGPU()
    with Sampler(gpu, period_s=0.05) as sampler:
        assert len(sampler.samples) == 1  # the first poll happens before start() returns
        time.sleep(0.6)
    n = len(sampler.samples)
    assert 8 <= n <= 14
    jitter = sampler.jitter_ms()
    assert jitter["mean_interval_ms"] == pytest.approx(50.0, rel=0.3)
    time.sleep(0.15)
    assert len(sampler.samples) == n  # stopped: the thread is gone


def test_virtual_clock_polls_inside_sleeps_at_due_times():
    clock = SimClock(start_s=0.0)
    gpu = FakeGPU(clock=clock, trace_w=[(0.0, 100.0), (1.0, 200.0)])
    with Sampler(gpu, period_s=0.25, clock=clock) as sampler:
        clock.sleep(0.6)  # due at 0.25 and 0.5
        clock.sleep(0.5)  # due at 0.75 and 1.0
    assert [s.t_s for s in sampler.samples] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert [s.power_w for s in sampler.samples] == [100.0, 125.0, 150.0, 175.0, 200.0]
    clock.sleep(1.0)
    assert len(sampler.samples) == 5


def test_warns_below_50_ms():
    with pytest.warns(UserWarning, match="0.05"):
        Sampler(FakeGPU(), period_s=0.01)


def test_a_window_between_two_polls_takes_the_samples_around_it():
    clock = Clock()
    gpu = FakeGPU(clock=clock, trace_w=[(0.0, 100.0), (1.0, 200.0)])
    sampler = Sampler(gpu, period_s=0.1, clock=clock)
    for _ in range(3):  # polls at 0.0, 0.1, 0.2 s
        sampler.poll_once()
        clock.sleep(0.1)
    s = sampler.summarize(0.12, 0.15)  # no poll inside: the ones at 0.1 and 0.2 s bracket it
    assert s["n_samples"] == 0
    assert s["mean_power_w"] == pytest.approx(sampler.integrate_power_j(0.12, 0.15) / 0.03)
    assert s["mean_sm_mhz"] == pytest.approx(sum(x.sm_mhz for x in sampler.samples[1:3]) / 2)
    assert (s["temp_start_c"], s["temp_end_c"]) == (sampler.samples[1].temp_c, sampler.samples[2].temp_c)
    late = sampler.summarize(0.25, 0.3)  # after the last poll (a sampler that stopped): nothing to give
    assert late["n_samples"] == 0 and late["mean_power_w"] is None and late["mean_sm_mhz"] is None
    del sampler.samples[1:3]  # polls at 0.0 and 0.3 s only: readings skipped for two periods and more
    sampler.poll_once()
    assert sampler.summarize(0.12, 0.15)["mean_power_w"] is None  # too far apart to stand for the window


def test_a_window_shorter_than_the_period_is_measured_from_the_polls_around_it(tmp_path):
    import csv

    from typer.testing import CliRunner

    from luce_bench.cli import app

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "gpu: {fake_clock: virtual}\nsampler: {period_s: 0.5}\ntests: [tg8]\nreps: 4\nwindow_s: 0.02\n"
        "warmup_s: 0\nrep_gap_max_s: 0\n"
    )
    result = CliRunner().invoke(app, ["bench", "sim", "--fake-gpu", "-c", str(cfg), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (run,) = (tmp_path / "runs").iterdir()
    rows = list(csv.DictReader((run / "runs.csv").open()))
    assert len(rows) == 4 and all("no-samples" not in r["verdict"] for r in rows), [r["verdict"] for r in rows]
    assert all(r["n_samples"] == "0" and r["temp_start_c"] and r["mean_sm_mhz"] for r in rows)
    # (the simulated counter ticks every 0.1 s: a 0.02 s window reads 0 J or a whole tick, and is flagged for it)


def _temps(sampler: Sampler, temps_c: list[tuple[float, int]]) -> None:
    from luce_bench.sampler import Sample

    sampler.samples[:] = [Sample(t, 300.0, None, 1980, 3201, c, 0, 0, 700.0) for t, c in temps_c]


def test_a_windows_start_temperature_is_read_past_the_rebound_from_the_gap_before_it():
    """The die is cold at the first sample after a gap and back within ~0.5 s: that is not a drift within the window."""
    from luce_bench.quality import TEMP_DRIFT, sampled_flags

    sampler = Sampler(FakeGPU(clock=Clock()), period_s=0.1, clock=Clock())
    rebound = [(0.0, 41), (0.3, 47), (0.6, 50)] + [(0.9 + 0.1 * i, 50 + i // 40) for i in range(92)]  # to 10.0 s
    _temps(sampler, rebound)
    s = sampler.summarize(0.0, 10.0)
    assert (s["temp_start_c"], s["temp_end_c"]) == (50, 52)  # the sample at 1.0 s, not the 41 C at 0.0 s
    assert TEMP_DRIFT not in sampled_flags(s, 0.0, limit_set=True)
    drift = [(0.1 * i, 40 + i // 10) for i in range(101)]  # 40 -> 50 C, steadily, over 10 s
    _temps(sampler, drift)
    s = sampler.summarize(0.0, 10.0)
    assert (s["temp_start_c"], s["temp_end_c"]) == (41, 50)  # a drift is still one: 9 C from 1 s in
    assert TEMP_DRIFT in sampled_flags(s, 0.0, limit_set=True)
    assert sampler.summarize(0.0, 1.5)["temp_start_c"] == 40  # a window under 2 s starts at its first sample


def test_a_windows_longest_unsampled_stretch_is_measured_edges_included():
    """A Python-bound backend can starve the sampler's thread: the window's cross-check interpolates over the hole."""
    sampler = Sampler(FakeGPU(clock=Clock()), period_s=0.1, clock=Clock())
    _temps(sampler, [(0.1 * i, 50) for i in range(31)] + [(3.9 + 0.1 * i, 50) for i in range(62)])  # none 3.0-3.9 s
    assert sampler.summarize(0.0, 10.0)["max_gap_s"] == pytest.approx(0.9)
    assert sampler.summarize(2.5, 3.5)["max_gap_s"] == pytest.approx(0.5)  # from its last sample to its end edge
    assert sampler.summarize(3.2, 3.3)["max_gap_s"] is None  # none in or near enough around it: nothing to say
