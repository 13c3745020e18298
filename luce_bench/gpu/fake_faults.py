"""Scripted faults of the simulated GPU: NVML errors, a lost GPU and a counter reset at chosen times.

`FaultyGPU` wraps a `FakeGPU` and follows the same protocol; each `Fault` fires from `at_s` seconds after the card was
opened (on the card's own clock: virtual time in virtual runs, so a fault lands at the same point every time) until
`until_s` (None: for good). Kinds:
* `lost`: every GPU call raises GPUUnavailable, setters included, as NVML does with NVML_ERROR_GPU_IS_LOST; a run
  stops and cannot restore until the fault ends (`luce-bench restore` in a later process does).
* `not-supported`: the calls in `calls` (default: the energy counter) raise GPUNotSupportedError.
* `counter-reset`: the energy counter starts again from 0 at `at_s`, as after a driver reload.
* `crash`: the calls in `calls` raise a RuntimeError that is not a GPUError (a bug in a driver binding), e.g. in the
  sampler thread's `clock_event_reasons`.
* `thermal`: the clock-event reasons report a software thermal slowdown (the card overheating), and the `sw_thermal`
  violation counter counts its time.
* `capped`: the enforced power limit reads no higher than `limit_w` (a cap from outside, such as a BMC's, or another
  tool's setting); the simulated draw does not follow it, only the reading.

`open_fake` applies the faults listed as JSON in LUCE_BENCH_FAKE_GPU_FAULTS, e.g.
`[{"kind": "not-supported", "at_s": 5.0, "calls": ["total_energy_mj"]}]`, so a test can script a fault into a run it
starts as a child process. The simulation (`set_load`, `preset`, ...) passes through untouched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from luce_bench.gpu.base import REASON_SW_THERMAL, GPUError, GPUNotSupportedError, GPUUnavailable
from luce_bench.gpu.fake import FakeGPU

FAULTS_ENV = "LUCE_BENCH_FAKE_GPU_FAULTS"
KINDS = ("lost", "not-supported", "counter-reset", "crash", "thermal", "capped")
PASSIVE = ("counter-reset", "thermal", "capped")  # change readings instead of raising
# The GPU protocol's calls (gpu/base.py); a lost card refuses them all.
PROTOCOL_CALLS = frozenset(
    (
        "name uuid driver_version cuda_driver_version power_limit_constraints_mw default_power_limit_mw power_limit_mw "
        "management_limit_mw "
        "set_power_limit_mw power_usage_mw average_power_mw total_energy_mj clocks_mhz temperature_c "
        "clock_event_reasons violation_ns supported_sm_clocks_mhz supported_mem_clocks_mhz locked_sm_clocks_mhz "
        "set_locked_sm_clocks_mhz reset_locked_sm_clocks compute_capability persistence_mode set_persistence_mode "
        "check_writable"
    ).split()
)


@dataclass(frozen=True)
class Fault:
    """One scripted fault: `kind` from `at_s` until `until_s` (s since the card was opened) on `calls`."""

    kind: str
    at_s: float
    until_s: float | None = None
    calls: tuple[str, ...] = ()
    limit_w: float | None = None  # `capped`: the highest limit the card reads

    def active(self, t_s: float) -> bool:
        """Whether the fault is in force at card time `t_s`."""
        return t_s >= self.at_s and (self.until_s is None or t_s < self.until_s)

    def hits(self, call: str) -> bool:
        """Whether the fault applies to GPU call `call`."""
        if self.kind == "lost":
            return call in PROTOCOL_CALLS
        return call in (self.calls or ("total_energy_mj",))


def parse_faults(text: str) -> list[Fault]:
    """Faults from their JSON list; ValueError names what is wrong."""
    items = json.loads(text)
    if not isinstance(items, list):
        raise ValueError("expected a JSON list of faults")
    out = []
    for item in items:
        if not isinstance(item, dict) or item.get("kind") not in KINDS:
            raise ValueError(f"each fault needs a kind in {', '.join(KINDS)}: {item!r}")
        until = item.get("until_s")
        calls = tuple(str(c) for c in item.get("calls", ()))
        cap = item.get("limit_w")
        if item["kind"] == "capped" and not (isinstance(cap, int | float) and not isinstance(cap, bool) and cap > 0):
            raise ValueError(f"a capped fault needs a positive limit_w (W): {item!r}")
        at_s, until_s = float(item.get("at_s", 0.0)), None if until is None else float(until)
        out.append(Fault(item["kind"], at_s, until_s, calls, None if cap is None else float(cap)))
    return out


class FaultyGPU:
    """A `FakeGPU` whose calls fail as `faults` script them (see the module docstring)."""

    def __init__(self, inner: FakeGPU, faults: list[Fault]) -> None:
        """Wrap `inner`; its clock decides when each fault fires."""
        self._inner, self._faults = inner, list(faults)
        self._t0_s = inner.clock()
        self.fired: list[str] = []  # "kind call" per fault that fired, for tests
        self._reset_mj: dict[int, int] = {}

    def _t_s(self) -> float:
        return self._inner.clock() - self._t0_s

    def _check(self, call: str) -> None:
        t_s = self._t_s()
        for fault in self._faults:
            if fault.kind in PASSIVE or not (fault.active(t_s) and fault.hits(call)):
                continue
            self.fired.append(f"{fault.kind} {call}")
            what = f"{call} on GPU {self._inner.index} (simulated fault at {fault.at_s:g} s)"
            if fault.kind == "lost":
                raise GPUUnavailable(f"{what}: GPU is lost")
            if fault.kind == "not-supported":
                raise GPUNotSupportedError(f"{what}: not supported")
            raise RuntimeError(f"{what}: driver binding crashed")

    def total_energy_mj(self) -> int:
        """The counter, restarted from 0 by an active `counter-reset`. Units: mJ."""
        self._check("total_energy_mj")
        value = self._inner.total_energy_mj()
        t_s = self._t_s()
        for i, fault in enumerate(self._faults):
            if fault.kind == "counter-reset" and fault.active(t_s):
                if i not in self._reset_mj:  # the counter at the reload, read while the card still remembers it
                    self._reset_mj[i] = int(self._inner._energy_at_mj(self._t0_s + fault.at_s))
                value -= self._reset_mj[i]
        return max(value, 0)

    def clock_event_reasons(self) -> int:
        """The reasons bitmask, with SwThermalSlowdown while a `thermal` fault is active."""
        self._check("clock_event_reasons")
        reasons = self._inner.clock_event_reasons()
        active = any(f.kind == "thermal" and f.active(self._t_s()) for f in self._faults)
        return reasons | REASON_SW_THERMAL if active else reasons

    def power_limit_mw(self) -> int:
        """The enforced limit, no higher than an active `capped` fault's limit_w. Units: mW."""
        self._check("power_limit_mw")
        value = self._inner.power_limit_mw()
        caps = [
            f.limit_w for f in self._faults if f.kind == "capped" and f.limit_w is not None and f.active(self._t_s())
        ]
        return min([value, *(round(w * 1000.0) for w in caps)])

    def violation_ns(self) -> dict[str, int]:
        """The violation counters, with `sw_thermal` counting the time `thermal` faults have been active. Units: ns."""
        self._check("violation_ns")
        counters = dict(self._inner.violation_ns())
        t_s = self._t_s()
        held_s = sum(
            max(min(t_s, f.until_s if f.until_s is not None else t_s) - f.at_s, 0.0)
            for f in self._faults
            if f.kind == "thermal"
        )
        counters["sw_thermal"] = counters.get("sw_thermal", 0) + int(held_s * 1e9)
        return counters

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in PROTOCOL_CALLS or not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            self._check(name)
            return attr(*args, **kwargs)

        return call

    def close(self) -> None:
        """Close the card (never fails)."""
        self._inner.close()


def with_faults(gpu: FakeGPU, text: str | None) -> FakeGPU | FaultyGPU:
    """`gpu` wrapped with the faults in `text` (LUCE_BENCH_FAKE_GPU_FAULTS); `gpu` itself when there are none.

    Raises:
        GPUError: `text` is not a valid fault script.
    """
    if not text:
        return gpu
    try:
        return FaultyGPU(gpu, parse_faults(text))
    except (ValueError, TypeError) as exc:
        raise GPUError(f"bad {FAULTS_ENV}: {exc}") from None
