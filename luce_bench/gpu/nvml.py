"""`NvmlGPU`: the GPU protocol over NVML. The only module that imports pynvml (nvidia-ml-py).

Every NVML call goes through `_call`, which maps NVMLError codes to our errors. Instant power comes from field 186
(`NVML_FI_DEV_POWER_INSTANT`): on Ampere and newer (H100 included) `nvmlDeviceGetPowerUsage` is a 1 s average.
SM clock locks go through `nvmlDeviceSetGpuLockedClocks` / `nvmlDeviceResetGpuLockedClocks`; NVML has no call that
reads a lock back, so `locked_sm_clocks_mhz` says so (GPUNotSupportedError) and a restore unlocks.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from luce_bench.gpu.base import (
    CLOCK_HINT,
    PERMISSION_HINT,
    GPUError,
    GPUIndexError,
    GPUNotSupportedError,
    GPUPermissionError,
    GPUUnavailable,
    refuse_if_read_only,
)

FIELD_POWER_AVERAGE = 185
FIELD_POWER_INSTANT = 186
VIOLATION_FIELDS = {"power_cap": 74, "sw_thermal": 269, "hw_thermal": 270, "hw_power_brake": 271}

_init_lock = threading.Lock()
_init_count = 0


def _pynvml() -> Any:
    try:
        import pynvml
    except ImportError as exc:  # pragma: no cover - the package is a dependency
        raise GPUUnavailable(f"pynvml (nvidia-ml-py) is not installed: {exc}") from exc
    return pynvml


def _map_error(exc: Exception, what: str, hint: str = PERMISSION_HINT) -> GPUError:
    """Our error for an NVMLError; `hint` says what a refused setter needs (root, and for clocks, support)."""
    pynvml = _pynvml()
    code = getattr(exc, "value", None)
    if code == pynvml.NVML_ERROR_NO_PERMISSION:
        return GPUPermissionError(f"{what}: no permission; {hint}")
    if code in (pynvml.NVML_ERROR_NOT_SUPPORTED, pynvml.NVML_ERROR_FUNCTION_NOT_FOUND):
        return GPUNotSupportedError(
            f"{what}: not supported on this GPU/driver" + ("" if hint is PERMISSION_HINT else f"; {hint}")
        )
    if code in (
        pynvml.NVML_ERROR_LIBRARY_NOT_FOUND,
        pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
        pynvml.NVML_ERROR_GPU_IS_LOST,
    ):
        return GPUUnavailable(f"{what}: {exc}")
    return GPUError(f"{what}: {exc}")


def _nvml_init() -> None:
    global _init_count
    pynvml = _pynvml()
    with _init_lock:
        if _init_count == 0:
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError as exc:
                raise GPUUnavailable(f"NVML could not start (no NVIDIA driver?): {exc}") from exc
        _init_count += 1


def _nvml_shutdown() -> None:
    global _init_count
    with _init_lock:
        if _init_count == 0:
            return
        _init_count -= 1
        if _init_count == 0:
            try:
                _pynvml().nvmlShutdown()
            except Exception:  # noqa: BLE001 - shutdown failures are harmless
                pass


def _has_cap_sys_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 21))
    except (OSError, ValueError, IndexError):
        pass
    return False


def _field_value(fv: Any) -> int | float:
    # c_nvmlValue_t union; valueType picks the member (0 double, 1 uint, 2 ulong, 3 ulonglong, 4 sll, 5 sint, 6 ushort)
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}.get(
        fv.valueType, "ullVal"
    )
    return getattr(fv.value, member)


class NvmlGPU:
    """One NVIDIA GPU through NVML. Setters refuse in read-only mode; NO_PERMISSION becomes GPUPermissionError."""

    def __init__(self, index: int = 0, uuid: str | None = None, read_only: bool = False) -> None:
        """Open GPU `index` (or the one with `uuid`); raise GPUUnavailable with the reason when that fails."""
        _nvml_init()
        self._closed = False
        pynvml = _pynvml()
        try:
            if uuid is not None:
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(uuid)
                self.index = int(pynvml.nvmlDeviceGetIndex(self._handle))
            else:
                count = pynvml.nvmlDeviceGetCount()
                if not 0 <= index < count:
                    raise GPUIndexError(index, f"NVML sees {count} GPU(s)")
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                self.index = index
        except pynvml.NVMLError as exc:
            _nvml_shutdown()
            raise GPUUnavailable(f"cannot open {uuid or f'GPU {index}'}: {exc}") from exc  # (a UUID reads "GPU-…")
        except GPUUnavailable:
            _nvml_shutdown()
            raise
        self.read_only = read_only

    def _call(self, what: str, fn_name: str, *args: Any, hint: str = PERMISSION_HINT) -> Any:
        pynvml = _pynvml()
        try:
            return getattr(pynvml, fn_name)(self._handle, *args)
        except pynvml.NVMLError as exc:
            raise _map_error(exc, what, hint) from exc

    def _fields(self, field_ids: list[int]) -> list[int | float | None]:
        """Read several field values at once; None where one is not readable."""
        values = self._call("read field values", "nvmlDeviceGetFieldValues", field_ids)
        return [_field_value(v) if v.nvmlReturn == 0 else None for v in values]

    def name(self) -> str:
        """Product name."""
        return str(self._call("read name", "nvmlDeviceGetName"))

    def uuid(self) -> str:
        """GPU UUID."""
        return str(self._call("read UUID", "nvmlDeviceGetUUID"))

    def driver_version(self) -> str:
        """Driver version."""
        try:
            return str(_pynvml().nvmlSystemGetDriverVersion())
        except _pynvml().NVMLError as exc:
            raise _map_error(exc, "read driver version") from exc

    def cuda_driver_version(self) -> str:
        """CUDA version supported by the driver, "major.minor"."""
        try:
            v = int(_pynvml().nvmlSystemGetCudaDriverVersion())
        except _pynvml().NVMLError as exc:
            raise _map_error(exc, "read CUDA driver version") from exc
        return f"{v // 1000}.{(v % 1000) // 10}"

    def power_limit_constraints_mw(self) -> tuple[int, int]:
        """(min, max) settable limit. Units: mW."""
        lo, hi = self._call("read power-limit constraints", "nvmlDeviceGetPowerManagementLimitConstraints")
        return int(lo), int(hi)

    def default_power_limit_mw(self) -> int:
        """Default limit. Units: mW."""
        return int(self._call("read default power limit", "nvmlDeviceGetPowerManagementDefaultLimit"))

    def power_limit_mw(self) -> int:
        """Enforced limit. Units: mW."""
        return int(self._call("read enforced power limit", "nvmlDeviceGetEnforcedPowerLimit"))

    def management_limit_mw(self) -> int:
        """The power-management limit set on the card (what set_power_limit_mw sets). Units: mW."""
        return int(self._call("read power-management limit", "nvmlDeviceGetPowerManagementLimit"))

    def set_power_limit_mw(self, mw: int) -> None:
        """Set the power-management limit (root / CAP_SYS_ADMIN). Units: mW."""
        refuse_if_read_only(self.read_only, f"set the power limit of GPU {self.index} to {mw / 1000:g} W")
        self._call(f"set power limit to {mw / 1000:g} W", "nvmlDeviceSetPowerManagementLimit", int(mw))

    def power_usage_mw(self) -> int:
        """Instant power (field 186). Units: mW."""
        (value,) = self._fields([FIELD_POWER_INSTANT])
        if value is None:
            raise GPUNotSupportedError("instant power (field 186) is not readable on this GPU")
        return int(value)

    def average_power_mw(self) -> int:
        """Average power (field 185). Units: mW."""
        (value,) = self._fields([FIELD_POWER_AVERAGE])
        if value is None:
            raise GPUNotSupportedError("average power (field 185) is not readable on this GPU")
        return int(value)

    def total_energy_mj(self) -> int:
        """Energy counter since driver load. Units: mJ."""
        return int(self._call("read total energy", "nvmlDeviceGetTotalEnergyConsumption"))

    def clocks_mhz(self) -> tuple[int, int]:
        """(SM, memory) clocks. Units: MHz."""
        pynvml = _pynvml()
        sm = self._call("read SM clock", "nvmlDeviceGetClockInfo", pynvml.NVML_CLOCK_SM)
        mem = self._call("read memory clock", "nvmlDeviceGetClockInfo", pynvml.NVML_CLOCK_MEM)
        return int(sm), int(mem)

    def temperature_c(self) -> int:
        """Core temperature. Units: °C."""
        return int(self._call("read temperature", "nvmlDeviceGetTemperature", _pynvml().NVML_TEMPERATURE_GPU))

    def clock_event_reasons(self) -> int:
        """Clock-event (throttle) reasons bitmask."""
        return int(self._call("read clock-event reasons", "nvmlDeviceGetCurrentClocksEventReasons"))

    def violation_ns(self) -> dict[str, int]:
        """Cumulative violation counters (fields 74, 269-271) that are readable. Units: ns."""
        names = list(VIOLATION_FIELDS)
        try:
            values = self._fields([VIOLATION_FIELDS[n] for n in names])
        except GPUNotSupportedError:
            return {}
        return {n: int(v) for n, v in zip(names, values, strict=False) if v is not None}

    def supported_mem_clocks_mhz(self) -> list[int]:
        """Supported memory clocks, highest first. Units: MHz."""
        clocks = self._call("read supported memory clocks", "nvmlDeviceGetSupportedMemoryClocks", hint=CLOCK_HINT)
        return sorted({int(c) for c in clocks}, reverse=True)

    def memory_bus_width_bits(self) -> int:
        """Width of the memory bus. Units: bits."""
        return int(self._call("read memory bus width", "nvmlDeviceGetMemoryBusWidth"))

    def supported_sm_clocks_mhz(self) -> list[int]:
        """SM (graphics) clocks supported at the highest memory clock, highest first. Units: MHz."""
        mem = self.supported_mem_clocks_mhz()
        if not mem:
            raise GPUNotSupportedError(f"GPU {self.index} lists no supported memory clocks; {CLOCK_HINT}")
        clocks = self._call("read supported SM clocks", "nvmlDeviceGetSupportedGraphicsClocks", mem[0], hint=CLOCK_HINT)
        return sorted({int(c) for c in clocks}, reverse=True)

    def locked_sm_clocks_mhz(self) -> tuple[int, int] | None:
        """Not readable: NVML has no call that reads a clock lock back."""
        raise GPUNotSupportedError("NVML cannot read back a locked SM clock range")

    def set_locked_sm_clocks_mhz(self, min_mhz: int, max_mhz: int) -> None:
        """Lock the SM clock into [min_mhz, max_mhz] (root / CAP_SYS_ADMIN). Units: MHz."""
        what = f"lock the SM clock of GPU {self.index} to {min_mhz}-{max_mhz} MHz"
        refuse_if_read_only(self.read_only, what)
        self._call(what, "nvmlDeviceSetGpuLockedClocks", int(min_mhz), int(max_mhz), hint=CLOCK_HINT)

    def reset_locked_sm_clocks(self) -> None:
        """Remove the SM clock lock (root / CAP_SYS_ADMIN)."""
        what = f"reset the locked SM clocks of GPU {self.index}"
        refuse_if_read_only(self.read_only, what)
        self._call(what, "nvmlDeviceResetGpuLockedClocks", hint=CLOCK_HINT)

    def compute_capability(self) -> tuple[int, int]:
        """(major, minor)."""
        major, minor = self._call("read compute capability", "nvmlDeviceGetCudaComputeCapability")
        return int(major), int(minor)

    def persistence_mode(self) -> bool:
        """Whether persistence mode is on."""
        return int(self._call("read persistence mode", "nvmlDeviceGetPersistenceMode")) == 1

    def set_persistence_mode(self, enabled: bool) -> None:
        """Turn persistence mode on/off (root)."""
        refuse_if_read_only(self.read_only, f"change persistence mode of GPU {self.index}")
        self._call("set persistence mode", "nvmlDeviceSetPersistenceMode", 1 if enabled else 0)

    def check_writable(self) -> None:
        """Refuse now in read-only mode or without root / CAP_SYS_ADMIN (what NVML setters need)."""
        refuse_if_read_only(self.read_only, "change power limits")
        if os.geteuid() != 0 and not _has_cap_sys_admin():
            raise GPUPermissionError(f"no permission to change power limits of GPU {self.index}; {PERMISSION_HINT}")
        # locked clocks need the same privilege: the caller adds CLOCK_HINT when its plan locks clocks

    def close(self) -> None:
        """Release NVML (reference-counted across handles)."""
        if not self._closed:
            self._closed = True
            _nvml_shutdown()
