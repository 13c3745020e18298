"""NvmlGPU against a stand-in pynvml: units, field 186, error mapping, read-only refusal."""

from __future__ import annotations

import sys
import types
from unittest import mock

import pytest

from luce_bench.gpu import GPUNotSupportedError, GPUPermissionError, GPUReadOnlyError, GPUUnavailable


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


def _fv(value: int, ret: int = 0):
    return types.SimpleNamespace(nvmlReturn=ret, valueType=3, value=types.SimpleNamespace(ullVal=value))


@pytest.fixture
def nvml(monkeypatch):
    m = types.SimpleNamespace(
        NVMLError=FakeNVMLError,
        NVML_ERROR_NO_PERMISSION=4,
        NVML_ERROR_NOT_SUPPORTED=3,
        NVML_ERROR_FUNCTION_NOT_FOUND=13,
        NVML_ERROR_LIBRARY_NOT_FOUND=12,
        NVML_ERROR_DRIVER_NOT_LOADED=9,
        NVML_ERROR_GPU_IS_LOST=15,
        NVML_CLOCK_SM=1,
        NVML_CLOCK_MEM=2,
        NVML_TEMPERATURE_GPU=0,
    )
    m.nvmlInit = mock.Mock()
    m.nvmlShutdown = mock.Mock()
    m.nvmlDeviceGetCount = mock.Mock(return_value=1)
    m.nvmlDeviceGetHandleByIndex = mock.Mock(return_value="h0")
    m.nvmlDeviceGetPowerManagementLimitConstraints = mock.Mock(return_value=[200000, 700000])
    m.nvmlDeviceGetEnforcedPowerLimit = mock.Mock(return_value=700000)
    m.nvmlDeviceSetPowerManagementLimit = mock.Mock()
    m.nvmlDeviceGetPowerUsage = mock.Mock(side_effect=AssertionError("1 s average must not be used"))
    m.nvmlDeviceGetFieldValues = mock.Mock(
        side_effect=lambda h, ids: [_fv({186: 72500, 185: 71000}.get(i, i * 10)) for i in ids]
    )
    m.nvmlDeviceGetClockInfo = mock.Mock(side_effect=lambda h, which: {1: 1980, 2: 2619}[which])
    m.nvmlSystemGetCudaDriverVersion = mock.Mock(return_value=13000)
    monkeypatch.setitem(sys.modules, "pynvml", m)
    import luce_bench.gpu.nvml as nvml_mod

    monkeypatch.setattr(nvml_mod, "_init_count", 0)
    return m


def test_units_and_instant_power_field(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    gpu = NvmlGPU(0)
    assert gpu.power_limit_constraints_mw() == (200000, 700000)
    assert gpu.power_usage_mw() == 72500
    assert gpu.average_power_mw() == 71000
    assert gpu.clocks_mhz() == (1980, 2619)
    assert gpu.cuda_driver_version() == "13.0"
    assert gpu.violation_ns() == {"power_cap": 740, "sw_thermal": 2690, "hw_thermal": 2700, "hw_power_brake": 2710}
    nvml.nvmlDeviceGetPowerUsage.assert_not_called()
    gpu.close()
    nvml.nvmlShutdown.assert_called_once()


def test_error_mapping(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    gpu = NvmlGPU(0)
    nvml.nvmlDeviceSetPowerManagementLimit.side_effect = FakeNVMLError(4)
    with pytest.raises(GPUPermissionError, match="CAP_SYS_ADMIN"):
        gpu.set_power_limit_mw(300000)
    nvml.nvmlDeviceGetEnforcedPowerLimit.side_effect = FakeNVMLError(3)
    with pytest.raises(GPUNotSupportedError):
        gpu.power_limit_mw()


def test_read_only_never_reaches_nvml(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    gpu = NvmlGPU(0, read_only=True)
    with pytest.raises(GPUReadOnlyError, match="read-only"):
        gpu.set_power_limit_mw(300000)
    nvml.nvmlDeviceSetPowerManagementLimit.assert_not_called()


def test_unavailable_reasons(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    with pytest.raises(GPUUnavailable, match="index 3 out of range"):
        NvmlGPU(3)
    nvml.nvmlInit.side_effect = FakeNVMLError(9)
    with pytest.raises(GPUUnavailable, match="no NVIDIA driver"):
        NvmlGPU(0)
