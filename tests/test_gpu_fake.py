"""FakeGPU: the DVFS model, energy counter, state file and setter refusals."""

from __future__ import annotations

import pytest

from luce_bench.gpu import GPUPermissionError, GPUReadOnlyError, GPUUnavailable, open_gpu
from luce_bench.gpu.base import GPU, REASON_GPU_IDLE, REASON_SW_POWER_CAP
from luce_bench.gpu.fake import PRESETS, FakeGPU


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_presets_match_the_issue():
    assert (PRESETS["rtx3090"].min_limit_mw, PRESETS["rtx3090"].max_limit_mw) == (100_000, 420_000)
    assert PRESETS["rtx3090"].default_limit_mw == 420_000
    assert (PRESETS["h100-sxm"].min_limit_mw, PRESETS["h100-sxm"].max_limit_mw) == (200_000, 700_000)
    assert PRESETS["h100-sxm"].default_limit_mw == 700_000


def test_follows_protocol_and_open_gpu_presets():
    gpu = open_gpu(fake_preset="h100-sxm")
    assert isinstance(gpu, GPU)
    assert gpu.power_limit_constraints_mw() == (200_000, 700_000)
    assert open_gpu(fake_preset="rtx3090").default_power_limit_mw() == 420_000
    with pytest.raises(GPUUnavailable, match="known: rtx3090"):
        open_gpu(fake_preset="a100")


def test_dvfs_flat_then_knee():
    clock = Clock()
    gpu = FakeGPU(clock=clock)
    speeds = {}
    for limit_w in (420, 400, 300, 220, 150, 100):
        gpu.set_power_limit_mw(limit_w * 1000)
        gpu.set_load(True)
        speeds[limit_w] = gpu.throughput_share(0.7)
        assert gpu.power_usage_mw() <= limit_w * 1000
        gpu.set_load(False)
    assert speeds[420] == speeds[400] == 1.0  # flat while the draw fits under the limit
    assert speeds[300] > 0.95  # ~95 % of stock speed at ~70 % of the power
    drops = [speeds[a] - speeds[b] for a, b in ((300, 220), (220, 150), (150, 100))]
    assert drops[2] > drops[0]  # the knee: the drop steepens at low limits


def test_idle_and_busy_readings():
    clock = Clock()
    gpu = FakeGPU(clock=clock)
    assert gpu.power_usage_mw() == 30_000
    assert gpu.clock_event_reasons() == REASON_GPU_IDLE
    gpu.set_power_limit_mw(220_000)
    gpu.set_load(True)
    assert gpu.power_usage_mw() == 220_000
    assert gpu.clock_event_reasons() == REASON_SW_POWER_CAP
    assert gpu.clocks_mhz()[0] < PRESETS["rtx3090"].max_sm_mhz
    clock.t += 2.0
    assert gpu.violation_ns()["power_cap"] == 2_000_000_000
    t_before = gpu.temperature_c()
    clock.t += 60.0
    assert gpu.temperature_c() > t_before


def test_energy_counter_integrates_power_in_ticks():
    clock = Clock()
    gpu = FakeGPU(clock=clock, counter_tick_s=0.1)
    e0 = gpu.total_energy_mj()
    gpu.set_load(True)  # 330 W at the stock limit
    clock.t += 10.0
    assert gpu.total_energy_mj() - e0 == pytest.approx(3_300_000, abs=1)
    clock.t += 0.05  # inside a tick: the counter has not moved yet
    assert gpu.total_energy_mj() - e0 == pytest.approx(3_300_000, abs=1)


def test_scripted_trace_gives_known_energy():
    clock = Clock()
    gpu = FakeGPU(clock=clock, counter_tick_s=0, trace_w=[(0.0, 100.0), (10.0, 300.0)])
    e0 = gpu.total_energy_mj()
    clock.t += 10.0
    assert (gpu.total_energy_mj() - e0) / 1000 == pytest.approx(2000.0)
    assert gpu.power_usage_mw() == 300_000


def test_refuse_set_and_read_only():
    gpu = FakeGPU(refuse_set=True)
    with pytest.raises(GPUPermissionError, match="CAP_SYS_ADMIN"):
        gpu.set_power_limit_mw(300_000)
    ro = FakeGPU(read_only=True)
    with pytest.raises(GPUReadOnlyError, match="read-only"):
        ro.set_power_limit_mw(300_000)
    with pytest.raises(GPUReadOnlyError):
        ro.set_persistence_mode(True)
    assert ro.set_calls == [] and ro.power_limit_mw() == 420_000


def test_read_only_env_reaches_open_gpu(monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    with pytest.raises(GPUReadOnlyError):
        open_gpu(fake_preset="rtx3090").set_power_limit_mw(300_000)


def test_state_file_is_shared_between_instances(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    a = open_gpu(fake_preset="rtx3090")
    b = open_gpu(fake_preset="rtx3090")
    a.set_power_limit_mw(220_000)
    assert b.power_limit_mw() == 220_000
    assert open_gpu(fake_preset="rtx3090").power_limit_mw() == 220_000
    assert b.persisted_set_calls() == [["power_limit_mw", 220_000]]
