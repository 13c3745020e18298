"""FakeGPU: the DVFS model, energy counter, state file and setter refusals."""

from __future__ import annotations

import pytest

from luce_bench.gpu import (
    GPUError,
    GPUNotSupportedError,
    GPUPermissionError,
    GPUReadOnlyError,
    GPUUnavailable,
    open_gpu,
)
from luce_bench.gpu.base import GPU, REASON_CLOCK_SETTING, REASON_GPU_IDLE, REASON_SW_POWER_CAP
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


# --- locked SM clocks (issue 14) ----------------------------------------------------------------------------------
def _p_w(preset, f_mhz, load_w):
    """The documented law: idle + (load - idle) * s * V(s)**2, V ~ s**((alpha - 1) / 2) above the knee."""
    s = f_mhz / preset.max_sm_mhz
    v = max(s, preset.vfloor_share) ** ((preset.alpha - 1) / 2)
    return preset.idle_w + (load_w - preset.idle_w) * s * v**2


def test_supported_clocks_are_the_preset_range_in_15_mhz_steps():
    rtx = FakeGPU().supported_sm_clocks_mhz()
    assert rtx[0] == 1950 and rtx[-1] == 210 and rtx[1] == 1935 and len(rtx) == 117
    h200 = FakeGPU(preset=PRESETS["h200"])
    assert h200.supported_sm_clocks_mhz()[0] == 1980 and h200.supported_mem_clocks_mhz() == [3201]


def test_h200_preset_matches_the_team_card():
    p = PRESETS["h200"]
    assert (p.min_limit_mw, p.max_limit_mw, p.default_limit_mw) == (200_000, 700_000, 700_000)
    assert (p.max_sm_mhz, p.mem_mhz, p.idle_w) == (1980, 3201, 80.0)


@pytest.mark.parametrize(
    "f_mhz", [pytest.param(1605, id="above-knee"), pytest.param(1200, id="below-knee"), pytest.param(900, id="low")]
)
def test_a_lock_sets_the_busy_clock_and_power_follows_f_v_squared(f_mhz):
    clock = Clock()
    gpu = FakeGPU(clock=clock)
    gpu.set_locked_sm_clocks_mhz(f_mhz, f_mhz)
    gpu.set_load(True)
    assert gpu.clocks_mhz()[0] == f_mhz
    assert gpu.power_usage_mw() == round(1000 * _p_w(gpu.preset, f_mhz, 330.0))
    assert gpu.clock_event_reasons() == REASON_CLOCK_SETTING  # the lock, not the limit, holds the clock
    assert gpu.throughput_share(0.7) == pytest.approx(1 / (0.7 + 0.3 * 1950 / f_mhz))


def test_the_lower_of_limit_and_lock_wins():
    gpu = FakeGPU(clock=Clock())
    gpu.set_locked_sm_clocks_mhz(1800, 1800)
    gpu.set_power_limit_mw(150_000)  # allows ~1090 MHz: the limit holds the clock below the lock
    gpu.set_load(True)
    assert gpu.clocks_mhz()[0] < 1800 and gpu.clock_event_reasons() == REASON_SW_POWER_CAP
    assert gpu.power_usage_mw() == 150_000
    gpu.set_power_limit_mw(420_000)
    assert gpu.clocks_mhz()[0] == 1800 and gpu.clock_event_reasons() == REASON_CLOCK_SETTING


def test_a_lock_at_the_top_clock_changes_nothing():
    a, b = FakeGPU(clock=Clock()), FakeGPU(clock=Clock())
    b.set_locked_sm_clocks_mhz(1950, 1950)
    for limit_mw in (420_000, 220_000):
        for gpu in (a, b):
            gpu.set_power_limit_mw(limit_mw)
            gpu.set_load(True)
        assert (a.power_usage_mw(), a.clocks_mhz(), a.clock_event_reasons()) == (
            b.power_usage_mw(),
            b.clocks_mhz(),
            b.clock_event_reasons(),
        )


def test_a_locked_idle_card_sits_at_the_lock_and_draws_more():
    gpu = FakeGPU(clock=Clock())
    assert gpu.clocks_mhz()[0] == 210 and gpu.power_usage_mw() == 30_000
    gpu.set_locked_sm_clocks_mhz(1950, 1950)
    assert gpu.clocks_mhz()[0] == 1950 and gpu.power_usage_mw() == 55_000  # idle_clocked_w
    assert gpu.clock_event_reasons() == REASON_GPU_IDLE
    gpu.reset_locked_sm_clocks()
    assert gpu.power_usage_mw() == 30_000 and gpu.locked_sm_clocks_mhz() is None


def test_rtx3090_follows_the_published_dvfs_table():
    """Luce megakernel RESULTS.md: 220 W -> 1635 MHz, 411 of 433 tok/s; 300 W -> 1935 MHz, 432 tok/s."""
    gpu = FakeGPU(clock=Clock())
    gpu.set_power_limit_mw(220_000)
    gpu.set_load(True)
    assert gpu.clocks_mhz()[0] * 1980 / 1950 == pytest.approx(1635, rel=0.02)  # the table's card tops out at 1980
    assert gpu.throughput_share(0.7) == pytest.approx(411 / 433, rel=0.01)
    gpu.set_power_limit_mw(300_000)
    assert gpu.throughput_share(0.7) == pytest.approx(432 / 433, rel=0.015)


def test_h200_decode_saves_about_a_third_of_its_energy_at_the_knee():
    """Published H200 DVFS: locking the SM clock saves up to ~32 % of decode energy at a small speed cost."""
    gpu = FakeGPU(preset=PRESETS["h200"], clock=Clock())
    gpu.set_load(True)
    stock_w, stock_share = gpu.power_usage_mw() / 1000, gpu.throughput_share(0.7)
    assert (stock_w, stock_share) == (529.0, 1.0)  # our megakernel's decode at the stock 700 W limit
    gpu.set_locked_sm_clocks_mhz(1590, 1590)  # just above the knee (80 % of 1980 MHz)
    saving = 1 - (gpu.power_usage_mw() / 1000 / gpu.throughput_share(0.7)) / (stock_w / stock_share)
    assert 0.30 < saving < 0.33 and gpu.throughput_share(0.7) > 0.93


def test_h200_prefill_draws_its_own_power_and_scales_with_the_clock():
    gpu = FakeGPU(preset=PRESETS["h200"], clock=Clock())
    gpu.set_load(True, compute_bound=True)
    assert gpu.power_usage_mw() == 364_000
    gpu.set_locked_sm_clocks_mhz(990, 990)
    assert gpu.throughput_share(0.2) == pytest.approx(1 / (0.2 + 0.8 * 2))  # nearly proportional to the clock
    gpu.set_load(True)  # decode now: its own draw at the same clock
    assert gpu.power_usage_mw() == round(1000 * _p_w(gpu.preset, 990, 529.0))


def test_clock_setters_refuse_like_the_limit_setter(monkeypatch):
    with pytest.raises(GPUReadOnlyError):
        FakeGPU(read_only=True).set_locked_sm_clocks_mhz(1200, 1200)
    with pytest.raises(GPUReadOnlyError):
        FakeGPU(read_only=True).reset_locked_sm_clocks()
    with pytest.raises(GPUPermissionError, match="CAP_SYS_ADMIN.*some cards and drivers do not support"):
        FakeGPU(refuse_set=True).set_locked_sm_clocks_mhz(1200, 1200)
    with pytest.raises(GPUNotSupportedError, match="not supported"):
        FakeGPU(clock_locks=False).set_locked_sm_clocks_mhz(1200, 1200)
    with pytest.raises(GPUNotSupportedError):
        FakeGPU(clock_locks=False).supported_sm_clocks_mhz()
    with pytest.raises(GPUError, match="invalid argument"):
        FakeGPU().set_locked_sm_clocks_mhz(1201, 1201)  # not a supported clock
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    gpu = FakeGPU()
    with pytest.raises(GPUReadOnlyError):
        gpu.set_locked_sm_clocks_mhz(1200, 1200)
    assert gpu.set_calls == [] and gpu.locked_sm_clocks_mhz() is None


def test_the_lock_is_shared_through_the_state_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    a, b = open_gpu(fake_preset="rtx3090"), open_gpu(fake_preset="rtx3090")
    a.set_locked_sm_clocks_mhz(1200, 1200)
    assert b.locked_sm_clocks_mhz() == (1200, 1200)
    b.set_load(True)
    assert b.clocks_mhz()[0] == 1200
    b.reset_locked_sm_clocks()
    assert a.locked_sm_clocks_mhz() is None
    assert a.persisted_set_calls() == [["sm_lock_mhz", [1200, 1200]], ["sm_lock_mhz", None]]


def test_no_clock_locks_env_reaches_open_gpu(monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_NO_CLOCK_LOCKS", "1")
    with pytest.raises(GPUNotSupportedError):
        open_gpu(fake_preset="rtx3090").supported_sm_clocks_mhz()
