"""The GPU interface: one small protocol with units in every name, and the errors its implementations raise.

Two implementations: `NvmlGPU` (gpu/nvml.py, the only importer of pynvml) and `FakeGPU` (gpu/fake.py, a deterministic
simulation for CPU-only runs and tests). Power is in mW, energy in mJ, clocks in MHz, temperature in °C.

Locked SM clocks (issue 14): a GPU lists the SM clocks it supports and can pin the SM clock into a [min, max] range
(`nvmlDeviceSetGpuLockedClocks`); `reset_locked_sm_clocks` removes the lock. NVML cannot read a lock back, so
`locked_sm_clocks_mhz` raises GPUNotSupportedError there; the simulated GPU can.
"""

from __future__ import annotations

import os
from typing import Protocol, runtime_checkable

READONLY_ENV = "LUCE_BENCH_READONLY"

# Clock-event-reason bits (nvmlClocksEventReason*), the ones the quality verdict cares about.
REASON_GPU_IDLE = 0x1
# ApplicationsClocksSetting (alias UserDefinedClocks): the clock is held by a user setting, e.g. a clock lock.
REASON_CLOCK_SETTING = 0x2
REASON_SW_POWER_CAP = 0x4
REASON_HW_SLOWDOWN = 0x8
REASON_SW_THERMAL = 0x20
REASON_HW_THERMAL = 0x40
REASON_HW_POWER_BRAKE = 0x80
# A sample counts as throttled when any of these is set (GpuIdle and app-clock settings do not count).
THROTTLE_MASK = REASON_SW_POWER_CAP | REASON_HW_SLOWDOWN | REASON_SW_THERMAL | REASON_HW_THERMAL | REASON_HW_POWER_BRAKE
# Slowdowns that are never a setting's intended effect: heat, and the hardware's own emergency brakes.
THERMAL_MASK = REASON_HW_SLOWDOWN | REASON_SW_THERMAL | REASON_HW_THERMAL | REASON_HW_POWER_BRAKE
# Names of the reasons a row records (`clock_reasons`); GpuIdle is left out: it says nothing about a held-down clock.
REASON_NAMES = {
    REASON_CLOCK_SETTING: "clock_setting",
    REASON_SW_POWER_CAP: "sw_power_cap",
    REASON_HW_SLOWDOWN: "hw_slowdown",
    0x10: "sync_boost",
    REASON_SW_THERMAL: "sw_thermal",
    REASON_HW_THERMAL: "hw_thermal",
    REASON_HW_POWER_BRAKE: "hw_power_brake",
    0x100: "display_clock",
}

PERMISSION_HINT = (
    "setting power limits needs root or CAP_SYS_ADMIN: run with sudo, or in Docker add `--cap-add SYS_ADMIN`; "
    "`sudo nvidia-smi -pm 1` turns on persistence mode. `luce-bench bench`/`compare` measure at the current limit "
    "without any privilege."
)
CLOCK_HINT = (
    "locking SM clocks needs root or CAP_SYS_ADMIN (sudo, or Docker `--cap-add SYS_ADMIN`), and some cards and "
    "drivers do not support locked clocks at all (NVML: Volta or newer; some GeForce and virtualised GPUs refuse)"
)


class GPUError(Exception):
    """Any failure talking to the GPU."""


class GPUPermissionError(GPUError):
    """The caller lacks the privilege for a setter (root / CAP_SYS_ADMIN)."""


class GPUNotSupportedError(GPUError):
    """The GPU or driver does not support this query or setting."""


class GPUReadOnlyError(GPUError):
    """A setter was called in read-only mode (LUCE_BENCH_READONLY=1 or --read-only)."""


class GPUUnavailable(GPUError):
    """No usable GPU: no driver, no pynvml, bad index. The message says why."""


class GPUIndexError(GPUUnavailable):
    """The host has GPUs, but none at the index asked for: the user's mistake, never a run without energy."""

    def __init__(self, index: int, host: str) -> None:
        """`host`: what the host has, e.g. "NVML sees 1 GPU(s)"; the message names where an index comes from."""
        super().__init__(f"GPU index {index} out of range: {host} (--gpu, gpu.index)")


@runtime_checkable
class GPU(Protocol):
    """One GPU. Getters are cheap; setters may raise GPUPermissionError or GPUReadOnlyError."""

    index: int
    read_only: bool  # setters refuse (LUCE_BENCH_READONLY=1 refuses too, whatever this says)

    def name(self) -> str:
        """Product name."""

    def uuid(self) -> str:
        """Stable identifier ("GPU-..."); the power-limit journal is keyed by it."""

    def driver_version(self) -> str:
        """Driver version string."""

    def cuda_driver_version(self) -> str:
        """CUDA version the driver supports, e.g. "13.0"."""

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """(min, max) settable power limit. Units: mW."""

    def default_power_limit_mw(self) -> int:
        """Factory default power limit. Units: mW."""

    def power_limit_mw(self) -> int:
        """Enforced power limit (nvmlDeviceGetEnforcedPowerLimit). Units: mW."""

    def management_limit_mw(self) -> int:
        """The power-management limit set on the card (nvmlDeviceGetPowerManagementLimit). Units: mW.

        What `set_power_limit_mw` sets; the enforced limit is the lower of it and any other cap (a BMC's).
        """

    def set_power_limit_mw(self, mw: int) -> None:
        """Set the power-management limit. Units: mW."""

    def power_usage_mw(self) -> int:
        """Instant power draw (field 186), not the 1 s average of nvmlDeviceGetPowerUsage. Units: mW."""

    def average_power_mw(self) -> int:
        """Averaged power draw (field 185, ~1 s window). Units: mW."""

    def total_energy_mj(self) -> int:
        """Energy counter since the driver loaded. Units: mJ."""

    def clocks_mhz(self) -> tuple[int, int]:
        """(SM, memory) clocks. Units: MHz."""

    def temperature_c(self) -> int:
        """GPU core temperature. Units: °C."""

    def clock_event_reasons(self) -> int:
        """Clock-event (throttle) reasons bitmask."""

    def violation_ns(self) -> dict[str, int]:
        """Cumulative violation time: power_cap, sw_thermal, hw_thermal, hw_power_brake (where readable). Units: ns."""

    def supported_sm_clocks_mhz(self) -> list[int]:
        """SM clocks the card can be locked to (at its highest memory clock), highest first. Units: MHz."""

    def supported_mem_clocks_mhz(self) -> list[int]:
        """Memory clocks the card supports, highest first. Units: MHz."""

    def memory_bus_width_bits(self) -> int:
        """Width of the memory bus (nvmlDeviceGetMemoryBusWidth). Units: bits."""

    def locked_sm_clocks_mhz(self) -> tuple[int, int] | None:
        """The SM clock lock in force (min, max), None without one; GPUNotSupportedError if unreadable. Units: MHz."""

    def set_locked_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz] (root). Units: MHz."""

    def reset_locked_sm_clocks(self) -> None:
        """Remove any SM clock lock (root)."""

    def compute_capability(self) -> tuple[int, int]:
        """(major, minor)."""

    def persistence_mode(self) -> bool:
        """Whether persistence mode is on."""

    def set_persistence_mode(self, enabled: bool) -> None:
        """Turn persistence mode on or off (root)."""

    def check_writable(self) -> None:
        """Raise GPUReadOnlyError or GPUPermissionError now if setters would refuse; changes nothing."""

    def close(self) -> None:
        """Release the handle."""


def read_only_mode() -> bool:
    """True when LUCE_BENCH_READONLY (set by --read-only) holds anything but an empty or false value (0/false/no/off).

    A safety switch fails closed: a value it does not recognise ("2", "y", a typo) means read-only too.
    """
    return os.environ.get(READONLY_ENV, "").strip().lower() not in {"", "0", "false", "no", "off"}


def enable_read_only_mode() -> None:
    """Turn read-only mode on for this process and its children (what --read-only does)."""
    os.environ[READONLY_ENV] = "1"


def refuse_if_read_only(read_only: bool, what: str) -> None:
    """Raise GPUReadOnlyError naming the refused setter when `read_only`, or when the environment says so now.

    The environment is read at every call, so LUCE_BENCH_READONLY=1 holds even for a GPU opened with read_only=False.
    """
    if read_only or read_only_mode():
        raise GPUReadOnlyError(f"read-only mode ({READONLY_ENV}=1 or --read-only): refusing to {what}")


def reason_names(reasons: int) -> str:
    """The named clock-event reasons set in `reasons`, ";"-joined in bit order ("" when none; GpuIdle is left out)."""
    return ";".join(name for bit, name in sorted(REASON_NAMES.items()) if reasons & bit)


def is_throttled(reasons: int) -> bool:
    """Whether a clock-event-reasons bitmask says the clocks are held down by power or thermal limits."""
    return bool(reasons & THROTTLE_MASK)
