"""`FakeGPU`: a deterministic simulated GPU with a DVFS model, for CPU-only runs (`--fake-gpu`) and tests.

The physics (power against clock and voltage, the power-limit and clock-lock response, throughput, idle draw) and the
presets with their calibration live in gpu/fake_model.py. This module is the device around it:
* Load: the card is busy while simulated work runs (`set_load`, called around every backend call of a simulated
  run, see backends/sim.py; prefill marks its work compute-bound); otherwise it is idle.
* Clocks: busy, the SM clock is the lower of the power-limited clock and the locked one (`set_locked_sm_clocks_mhz`;
  only clocks from `supported_sm_clocks_mhz()` are accepted, as NVML does); idle, it sits at the idle clock, or at
  the lock's minimum when that is higher. Reasons: SwPowerCap when the limit holds the clock down, ClocksSetting when
  the lock does, GpuIdle when idle.
* Temperature: first order towards ambient + `c_per_w` x power with time constant `tau_s`.
* Energy: the exact integral of power, reported in counter ticks (`counter_tick_s`, 0.1 s like NVML) from a start value.
  A scripted `trace_w` [(t_s, W), ...] (piecewise linear in time since creation) replaces the model's power
  (gpu/fake_state.py).

Time comes from the injected `clock` (virtual time in `gpu.fake_clock: virtual` runs). With `state_path` (env
LUCE_BENCH_FAKE_GPU_STATE for `open_fake`) the limit, the clock lock, persistence mode and setter calls live in a JSON
file, so another process (`luce-bench restore` after SIGKILL) sees the same card. LUCE_BENCH_FAKE_GPU_NO_PERMISSION=1
simulates a process without the privilege to change settings; LUCE_BENCH_FAKE_GPU_NO_CLOCK_LOCKS=1 a card or driver
without locked clocks; LUCE_BENCH_FAKE_GPU_FAULTS scripts NVML errors, a lost GPU or a counter reset at chosen times
(gpu/fake_faults.py).
"""

from __future__ import annotations

import bisect
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luce_bench.gpu import fake_model as model
from luce_bench.gpu.base import (
    CLOCK_HINT,
    PERMISSION_HINT,
    REASON_CLOCK_SETTING,
    REASON_GPU_IDLE,
    REASON_SW_POWER_CAP,
    GPUError,
    GPUIndexError,
    GPUNotSupportedError,
    GPUPermissionError,
    GPUUnavailable,
    refuse_if_read_only,
)
from luce_bench.gpu.fake_model import DEFAULT_PRESET, PRESETS, FakePreset, preset
from luce_bench.gpu.fake_state import SharedState, trace_integral_j, trace_power_w

__all__ = ["DEFAULT_PRESET", "PRESETS", "FakeGPU", "FakePreset", "open_fake", "preset"]

STATE_ENV = "LUCE_BENCH_FAKE_GPU_STATE"
NO_PERMISSION_ENV = "LUCE_BENCH_FAKE_GPU_NO_PERMISSION"
NO_CLOCK_LOCKS_ENV = "LUCE_BENCH_FAKE_GPU_NO_CLOCK_LOCKS"


@dataclass
class FakeGPU:
    """Simulated GPU following the `GPU` protocol (see the module docstring for the model)."""

    preset: FakePreset = field(default_factory=lambda: PRESETS[DEFAULT_PRESET])
    index: int = 0
    clock: Callable[[], float] = time.monotonic
    read_only: bool = False
    refuse_set: bool = False
    state_path: Path | None = None
    counter_tick_s: float = 0.1
    trace_w: Sequence[tuple[float, float]] | None = None
    set_calls: list[tuple[str, Any]] = field(default_factory=list)
    clock_locks: bool = True  # False: a card/driver without locked clocks (NotSupported)

    def __post_init__(self) -> None:
        self._limit_mw = self.preset.default_limit_mw
        self._lock_mhz: tuple[int, int] | None = None
        self._persistence = False
        self._loaded = False
        self._compute_bound = False
        self._t0 = self.clock()
        self._shared = SharedState(Path(self.state_path), self.uuid()) if self.state_path is not None else None
        self._load_state()
        idle_c = self.preset.ambient_c + self.preset.c_per_w * self.preset.idle_w
        # event log: (t_s, energy_mj at t, power_w after t, temp_c at t, violation_ns at t, throttled after t)
        self._events: list[tuple[float, float, float, float, float, bool]] = []
        self._events.append((self._t0, 1.0e9, self._model_power_w(), idle_c, 0.0, False))

    # --- state file (shared with other processes, gpu/fake_state.py) -----------------------------------------------
    def _load_state(self) -> None:
        if self._shared is None:
            return
        card = self._shared.read()
        self._limit_mw = int(card.get("limit_mw", self._limit_mw))
        self._persistence = bool(card.get("persistence", self._persistence))
        lock_mhz = card.get("sm_lock_mhz", self._lock_mhz)
        self._lock_mhz = (int(lock_mhz[0]), int(lock_mhz[1])) if lock_mhz else None

    def _save_state(self, call: tuple[str, Any]) -> None:
        if self._shared is not None:
            lock = list(self._lock_mhz) if self._lock_mhz else None
            fields = {"limit_mw": self._limit_mw, "persistence": self._persistence, "sm_lock_mhz": lock}
            self._shared.write(fields, call)

    def _refresh_from_state(self) -> None:
        """Pick up a limit or clock lock another process set, as a real card would show it."""
        if self._shared is None:
            return
        before = (self._limit_mw, self._lock_mhz)
        self._load_state()
        after = (self._limit_mw, self._lock_mhz)
        if after != before:
            self._limit_mw, self._lock_mhz = before

            def apply() -> None:
                self._limit_mw, self._lock_mhz = after

            self._change(apply)

    def persisted_set_calls(self) -> list[list[Any]]:
        """Setter calls recorded in the state file by every process (empty without a state file)."""
        return self._shared.set_calls() if self._shared is not None else []

    # --- the model (gpu/fake_model.py) -------------------------------------------------------------------------
    def _load_w(self) -> float:
        return self.preset.load_of(self._compute_bound)

    def _capped_share(self) -> float:
        """The clock share the power limit allows the current work."""
        return model.capped_share(self.preset, self._limit_mw / 1000.0, self._load_w())

    def _lock_share(self) -> float:
        """The clock share the lock allows (1.0 without a lock)."""
        return min(self._lock_mhz[1] / self.preset.max_sm_mhz, 1.0) if self._lock_mhz else 1.0

    def busy_sm_share(self) -> float:
        """SM clock share f / f_max that the current work runs at under the limit and the lock (the DVFS model)."""
        return min(self._capped_share(), self._lock_share())

    def throughput_share(self, mem_bound_share: float = 0.7) -> float:
        """Throughput relative to the top clock for a workload whose time is `mem_bound_share` memory-bound."""
        return model.throughput_share(self.busy_sm_share(), mem_bound_share)

    def _idle_mhz(self) -> int:
        p = self.preset
        if self._lock_mhz is None:
            return p.idle_sm_mhz
        return min(max(p.idle_sm_mhz, self._lock_mhz[0]), self._lock_mhz[1])

    def _model_power_w(self) -> float:
        if not self._loaded:
            return model.idle_power_w(self.preset, self._idle_mhz())
        return model.busy_power_w(self.preset, self.busy_sm_share(), self._load_w())

    def _power_at_w(self, t_s: float) -> float:
        if self.trace_w:
            return trace_power_w(self.trace_w, t_s - self._t0)
        return self._event_at(t_s)[2]

    def _event_at(self, t_s: float) -> tuple[float, float, float, float, float, bool]:
        i = bisect.bisect_right([e[0] for e in self._events], t_s)
        return self._events[max(i - 1, 0)]

    def _energy_at_mj(self, t_s: float) -> float:
        if self.trace_w:
            return 1.0e9 + 1000.0 * trace_integral_j(self.trace_w, t_s - self._t0)
        t_e, e_mj, p_w, *_ = self._event_at(t_s)
        return e_mj + 1000.0 * p_w * max(t_s - t_e, 0.0)

    def _temp_at_c(self, t_s: float) -> float:
        t_e, _, p_w, temp_c, *_ = self._event_at(t_s)
        target_c = self.preset.ambient_c + self.preset.c_per_w * p_w
        return target_c + (temp_c - target_c) * math.exp(-max(t_s - t_e, 0.0) / self.preset.tau_s)

    def _throttled(self) -> bool:
        """Whether the power limit holds the clock down (below the top clock and below the lock)."""
        return self._loaded and self._capped_share() < self._lock_share()

    def _change(self, mutate: Callable[[], None]) -> None:
        """Apply a state change at the current time, keeping energy and temperature continuous."""
        now = self.clock()
        energy_mj, temp_c = self._energy_at_mj(now), self._temp_at_c(now)
        t_e, _, _, _, viol_ns, throttled = self._event_at(now)
        viol_ns += (now - t_e) * 1e9 if throttled else 0.0
        mutate()
        self._events.append((now, energy_mj, self._model_power_w(), temp_c, viol_ns, self._throttled()))
        del self._events[:-256]

    # --- GPU protocol --------------------------------------------------------------------------------------------
    def name(self) -> str:
        """Product name (says simulated)."""
        return self.preset.product

    def uuid(self) -> str:
        """Deterministic fake UUID per preset and index."""
        return f"GPU-fake0000-{self.preset.name}-{self.index:04d}"

    @property
    def private(self) -> bool:
        """Whether only this process sees the card (no state file): another process's settings cannot reach it."""
        return self._shared is None

    def driver_version(self) -> str:
        """Fake driver version."""
        return "fake-580.00"

    def cuda_driver_version(self) -> str:
        """Fake CUDA version."""
        return "13.0"

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """(min, max) settable limit. Units: mW."""
        return self.preset.min_limit_mw, self.preset.max_limit_mw

    def default_power_limit_mw(self) -> int:
        """Default limit. Units: mW."""
        return self.preset.default_limit_mw

    def power_limit_mw(self) -> int:
        """Enforced limit (from the state file when there is one). Units: mW."""
        self._refresh_from_state()
        return self._limit_mw

    def management_limit_mw(self) -> int:
        """The limit set (the simulated card has no other cap; a `capped` fault lowers only the enforced one). mW."""
        self._refresh_from_state()
        return self._limit_mw

    def set_power_limit_mw(self, mw: int) -> None:
        """Set the limit; refuses in read-only mode, with `refuse_set`, or out of range. Units: mW."""
        refuse_if_read_only(self.read_only, f"set the power limit of GPU {self.index} to {mw / 1000:g} W")
        if self.refuse_set:
            raise GPUPermissionError(f"set power limit to {mw / 1000:g} W: no permission; {PERMISSION_HINT}")
        lo, hi = self.power_limit_constraints_mw()
        if not lo <= mw <= hi:
            raise GPUError(
                f"set power limit to {mw / 1000:g} W: invalid argument (range {lo / 1000:g}-{hi / 1000:g} W)"
            )
        self.set_calls.append(("power_limit_mw", int(mw)))

        def apply() -> None:
            self._limit_mw = int(mw)
            self._save_state(("power_limit_mw", int(mw)))

        self._change(apply)

    def power_usage_mw(self) -> int:
        """Instant power. Units: mW."""
        return round(1000.0 * self._power_at_w(self.clock()))

    def average_power_mw(self) -> int:
        """Power averaged over the last second, like field 185. Units: mW."""
        now = self.clock()
        return round(self._energy_at_mj(now) - self._energy_at_mj(now - 1.0))

    def total_energy_mj(self) -> int:
        """Energy counter, advancing in ticks of `counter_tick_s`. Units: mJ."""
        now = self.clock()
        if self.counter_tick_s > 0:
            now = self._t0 + math.floor((now - self._t0) / self.counter_tick_s) * self.counter_tick_s
        return int(self._energy_at_mj(now))

    def clocks_mhz(self) -> tuple[int, int]:
        """(SM, memory). Units: MHz."""
        if not self._loaded:
            return self._idle_mhz(), self.preset.mem_mhz
        return round(self.preset.max_sm_mhz * self.busy_sm_share()), self.preset.mem_mhz

    def temperature_c(self) -> int:
        """Core temperature. Units: °C."""
        return round(self._temp_at_c(self.clock()))

    def clock_event_reasons(self) -> int:
        """GpuIdle when idle, SwPowerCap when the limit holds the clock down, ClocksSetting when the lock does."""
        if not self._loaded:
            return REASON_GPU_IDLE
        if self._throttled():
            return REASON_SW_POWER_CAP
        return REASON_CLOCK_SETTING if self._lock_share() < 1.0 else 0

    def violation_ns(self) -> dict[str, int]:
        """Cumulative power-cap violation time (thermal never violates here). Units: ns."""
        now = self.clock()
        t_e, _, _, _, viol_ns, throttled = self._event_at(now)
        power_cap = viol_ns + ((now - t_e) * 1e9 if throttled else 0.0)
        return {"power_cap": int(power_cap), "sw_thermal": 0, "hw_thermal": 0, "hw_power_brake": 0}

    def supported_sm_clocks_mhz(self) -> list[int]:
        """The preset's SM clocks, highest first (NotSupported without clock locks). Units: MHz."""
        if not self.clock_locks:
            raise GPUNotSupportedError(f"read supported SM clocks of GPU {self.index}: not supported; {CLOCK_HINT}")
        return model.supported_sm_clocks_mhz(self.preset)

    def supported_mem_clocks_mhz(self) -> list[int]:
        """The one memory clock of the preset. Units: MHz."""
        return [self.preset.mem_mhz]

    def memory_bus_width_bits(self) -> int:
        """The preset's memory bus. Units: bits."""
        return self.preset.mem_bus_bits

    def locked_sm_clocks_mhz(self) -> tuple[int, int] | None:
        """The lock in force (from the state file when there is one); None without one. Units: MHz."""
        self._refresh_from_state()
        return self._lock_mhz

    def set_locked_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock; refuses like `set_power_limit_mw`, and clocks the card does not list. Units: MHz."""
        what = f"lock the SM clock of GPU {self.index} to {min_mhz}-{max_mhz} MHz"
        self._check_clock_setter(what)
        supported = model.supported_sm_clocks_mhz(self.preset)
        if min_mhz > max_mhz or min_mhz not in supported or max_mhz not in supported:
            raise GPUError(f"{what}: invalid argument (supported: {supported[-1]}-{supported[0]} MHz)")
        self._set_lock((int(min_mhz), int(max_mhz)))

    def reset_locked_sm_clocks(self) -> None:
        """Remove the lock; refuses like `set_locked_sm_clocks_mhz`."""
        self._check_clock_setter(f"reset the locked SM clocks of GPU {self.index}")
        self._set_lock(None)

    def _check_clock_setter(self, what: str) -> None:
        refuse_if_read_only(self.read_only, what)
        if self.refuse_set:
            raise GPUPermissionError(f"{what}: no permission; {CLOCK_HINT}")
        if not self.clock_locks:
            raise GPUNotSupportedError(f"{what}: not supported on this GPU/driver; {CLOCK_HINT}")

    def _set_lock(self, lock_mhz: tuple[int, int] | None) -> None:
        call = ("sm_lock_mhz", list(lock_mhz) if lock_mhz else None)
        self.set_calls.append(call)

        def apply() -> None:
            self._lock_mhz = lock_mhz
            self._save_state(call)

        self._change(apply)

    def compute_capability(self) -> tuple[int, int]:
        """(major, minor)."""
        return self.preset.compute_capability

    def persistence_mode(self) -> bool:
        """Persistence mode (from the state file when there is one)."""
        self._refresh_from_state()
        return self._persistence

    def set_persistence_mode(self, enabled: bool) -> None:
        """Set persistence mode; refuses like `set_power_limit_mw`."""
        refuse_if_read_only(self.read_only, f"change persistence mode of GPU {self.index}")
        if self.refuse_set:
            raise GPUPermissionError(f"set persistence mode: no permission; {PERMISSION_HINT}")
        self.set_calls.append(("persistence_mode", bool(enabled)))
        self._persistence = bool(enabled)
        self._save_state(("persistence_mode", bool(enabled)))

    def check_writable(self) -> None:
        """Refuse now in read-only mode or when this simulated process lacks the privilege (`refuse_set`)."""
        refuse_if_read_only(self.read_only, "change power limits")
        if self.refuse_set:
            raise GPUPermissionError(f"no permission to change power limits of GPU {self.index}; {PERMISSION_HINT}")

    def close(self) -> None:
        """Nothing to release."""

    # --- simulation (not part of the GPU protocol) --------------------------------------------------------------
    def set_load(self, busy: bool, compute_bound: bool = False) -> None:
        """Simulated work starts (True) or stops (False) on this card; prefill is `compute_bound` (its own draw)."""
        if busy != self._loaded or (busy and compute_bound != self._compute_bound):

            def apply() -> None:
                self._loaded, self._compute_bound = busy, compute_bound if busy else self._compute_bound

            self._change(apply)


def open_fake(
    preset_name: str = DEFAULT_PRESET,
    index: int = 0,
    read_only: bool = False,
    uuid: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> FakeGPU:
    """A simulated card; its state file, missing privilege and scripted faults come from the environment.

    With LUCE_BENCH_FAKE_GPU_FAULTS set, the card comes wrapped in a `FaultyGPU` that follows the same interface.
    """
    if index != 0:  # as NVML answers a bad index: a simulated host has one card
        raise GPUIndexError(index, "the simulated host has 1 GPU (index 0)")
    state = os.environ.get(STATE_ENV)
    gpu = FakeGPU(
        preset=preset(preset_name),
        index=index,
        clock=clock,
        read_only=read_only,
        refuse_set=os.environ.get(NO_PERMISSION_ENV, "") not in ("", "0"),
        state_path=Path(state) if state else None,
        clock_locks=os.environ.get(NO_CLOCK_LOCKS_ENV, "") in ("", "0"),
    )
    if uuid is not None and gpu.uuid() != uuid:
        raise GPUUnavailable(f"no fake GPU with UUID {uuid} (this one is {gpu.uuid()})")
    from luce_bench.gpu.fake_faults import FAULTS_ENV, with_faults

    return with_faults(gpu, os.environ.get(FAULTS_ENV))  # type: ignore[return-value]  # same interface
