"""NvmlGPU against an autospecced pynvml: units, field 186, clock tables and locks, error mapping, read-only refusal."""

from __future__ import annotations

import sys
import types
from unittest import mock

import pytest

from luce_bench.gpu import GPUNotSupportedError, GPUPermissionError, GPUReadOnlyError, GPUUnavailable

REAL = pytest.importorskip("pynvml")


def _fv(value: int, ret: int = 0):
    return types.SimpleNamespace(nvmlReturn=ret, valueType=3, value=types.SimpleNamespace(ullVal=value))


def _err(code: int) -> Exception:
    return REAL.NVMLError(code)


@pytest.fixture
def nvml(monkeypatch):
    """The installed nvidia-ml-py's pynvml, autospecced: a misspelt name or a wrong argument count fails.

    Constants and the NVMLError classes are the real ones, so error codes map as they do on a GPU.
    """
    m = mock.create_autospec(REAL)
    for name, value in vars(REAL).items():
        if isinstance(value, int | float | str) or (isinstance(value, type) and issubclass(value, Exception)):
            setattr(m, name, value)
    m.nvmlDeviceGetCount.return_value = 1
    m.nvmlDeviceGetHandleByIndex.return_value = "h0"
    m.nvmlDeviceGetPowerManagementLimitConstraints.return_value = [200000, 700000]
    m.nvmlDeviceGetEnforcedPowerLimit.return_value = 700000
    m.nvmlDeviceGetPowerManagementLimit.return_value = 700000
    m.nvmlDeviceGetPowerUsage.side_effect = AssertionError("1 s average must not be used")
    m.nvmlDeviceGetFieldValues.side_effect = lambda h, ids: [_fv({186: 72500, 185: 71000}.get(i, i * 10)) for i in ids]
    m.nvmlDeviceGetClockInfo.side_effect = lambda h, which: {REAL.NVML_CLOCK_SM: 1980, REAL.NVML_CLOCK_MEM: 2619}[which]
    m.nvmlSystemGetCudaDriverVersion.return_value = 13000
    # an H200's clock tables: one memory clock, SM clocks 1980..345 MHz in 15 MHz steps (unsorted, as NVML may list)
    m.nvmlDeviceGetSupportedMemoryClocks.return_value = [3201]
    m.nvmlDeviceGetSupportedGraphicsClocks.side_effect = lambda h, mem: (
        list(range(345, 1981, 15)) if mem == 3201 else []
    )
    monkeypatch.setitem(sys.modules, "pynvml", m)
    import luce_bench.gpu.nvml as nvml_mod

    monkeypatch.setattr(nvml_mod, "_init_count", 0)
    return m


def test_the_limit_set_and_the_limit_enforced_are_two_readings(nvml):
    """Restore keeps and puts back the limit set (a sweep's); an outside cap (a BMC's) lowers only the enforced one."""
    from luce_bench.gpu.nvml import NvmlGPU

    nvml.nvmlDeviceGetEnforcedPowerLimit.return_value = 600000  # capped from outside
    gpu = NvmlGPU(0)
    assert (gpu.management_limit_mw(), gpu.power_limit_mw()) == (700000, 600000)
    nvml.nvmlDeviceGetPowerManagementLimit.assert_called_with("h0")


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
    nvml.nvmlDeviceSetPowerManagementLimit.side_effect = _err(REAL.NVML_ERROR_NO_PERMISSION)
    with pytest.raises(GPUPermissionError, match="CAP_SYS_ADMIN"):
        gpu.set_power_limit_mw(300000)
    nvml.nvmlDeviceGetEnforcedPowerLimit.side_effect = _err(REAL.NVML_ERROR_NOT_SUPPORTED)
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
    nvml.nvmlDeviceGetHandleByUUID.side_effect = _err(REAL.NVML_ERROR_NOT_FOUND)  # a card gone since (restore)
    with pytest.raises(GPUUnavailable, match=r"^cannot open GPU-1234: ") as exc:
        NvmlGPU(uuid="GPU-1234")
    assert "GPU GPU-" not in str(exc.value)
    nvml.nvmlInit.side_effect = _err(REAL.NVML_ERROR_DRIVER_NOT_LOADED)
    with pytest.raises(GPUUnavailable, match="no NVIDIA driver"):
        NvmlGPU(0)


def test_an_index_nvml_does_not_have_is_refused_not_run_without_energy(nvml, tmp_path, monkeypatch):
    """A bad --gpu on a host whose NVML works is the user's mistake: a measuring run refuses it in one line.

    A host with no NVML at all still runs, without energy.
    """
    from luce_bench import config
    from luce_bench.context import open_context
    from luce_bench.errors import UserError

    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    cfg = config.load(None, {"gpu.index": 3, "output_dir": str(tmp_path / "runs")})
    with pytest.raises(UserError, match=r"^GPU index 3 out of range: NVML sees 1 GPU\(s\) \(--gpu, gpu.index\)$"):
        open_context(cfg).__enter__()
    nvml.nvmlInit.side_effect = _err(REAL.NVML_ERROR_DRIVER_NOT_LOADED)
    with open_context(cfg) as ctx:
        assert ctx.gpu is None and "no NVIDIA driver" in ctx.energy_note
    assert not (tmp_path / "runs").exists()


def test_a_misspelt_nvml_name_fails(nvml):
    with pytest.raises(AttributeError):
        nvml.nvmlDeviceSetGpuLockedClock  # noqa: B018 - the real name ends in "Clocks"
    with pytest.raises(TypeError):
        nvml.nvmlDeviceSetGpuLockedClocks("h0", 1200)  # the real call takes (handle, min, max)


def test_supported_clocks_at_the_highest_memory_clock(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = [1593, 3201]
    gpu = NvmlGPU(0)
    sm = gpu.supported_sm_clocks_mhz()
    assert sm[0] == 1980 and sm[-1] == 345 and sm == sorted(sm, reverse=True) and len(sm) == 110
    assert gpu.supported_mem_clocks_mhz() == [3201, 1593]
    nvml.nvmlDeviceGetSupportedGraphicsClocks.assert_called_once_with("h0", 3201)


def test_lock_and_reset_reach_nvml_with_min_and_max(nvml):
    from luce_bench.gpu.nvml import NvmlGPU

    gpu = NvmlGPU(0)
    gpu.set_locked_sm_clocks_mhz(1200, 1200)
    nvml.nvmlDeviceSetGpuLockedClocks.assert_called_once_with("h0", 1200, 1200)
    gpu.reset_locked_sm_clocks()
    nvml.nvmlDeviceResetGpuLockedClocks.assert_called_once_with("h0")
    with pytest.raises(GPUNotSupportedError, match="cannot read back"):
        gpu.locked_sm_clocks_mhz()


@pytest.mark.parametrize(
    "code,error,words",
    [
        (
            REAL.NVML_ERROR_NO_PERMISSION,
            GPUPermissionError,
            "no permission; locking SM clocks needs root or CAP_SYS_ADMIN",
        ),
        (REAL.NVML_ERROR_NOT_SUPPORTED, GPUNotSupportedError, "not supported on this GPU/driver; locking SM clocks"),
    ],
    ids=["no-permission", "not-supported"],
)
def test_clock_lock_errors_name_what_is_needed(nvml, code, error, words):
    from luce_bench.gpu.nvml import NvmlGPU

    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = _err(code)
    with pytest.raises(error, match=words) as info:
        NvmlGPU(0).set_locked_sm_clocks_mhz(1200, 1200)
    assert "some cards and drivers do not support locked clocks" in str(info.value)


def test_read_only_never_reaches_the_clock_setters(nvml, monkeypatch):
    from luce_bench.gpu.nvml import NvmlGPU

    for gpu in (NvmlGPU(0, read_only=True), NvmlGPU(0)):
        if not gpu.read_only:
            monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
        with pytest.raises(GPUReadOnlyError):
            gpu.set_locked_sm_clocks_mhz(1200, 1200)
        with pytest.raises(GPUReadOnlyError):
            gpu.reset_locked_sm_clocks()
    nvml.nvmlDeviceSetGpuLockedClocks.assert_not_called()
    nvml.nvmlDeviceResetGpuLockedClocks.assert_not_called()


def test_every_protocol_call_exists_in_pynvml(nvml):
    """Each getter and setter once against the autospec: a misspelt function or a wrong argument count would raise."""
    from luce_bench.gpu.base import GPU
    from luce_bench.gpu.nvml import NvmlGPU

    nvml.nvmlDeviceGetCudaComputeCapability.return_value = (9, 0)
    gpu = NvmlGPU(0)
    assert isinstance(gpu, GPU)
    for getter in (gpu.name, gpu.uuid, gpu.driver_version, gpu.default_power_limit_mw, gpu.total_energy_mj):
        getter()
    for getter in (gpu.temperature_c, gpu.clock_event_reasons, gpu.persistence_mode, gpu.compute_capability):
        getter()
    gpu.set_power_limit_mw(300_000)
    gpu.set_persistence_mode(True)
    gpu.set_locked_sm_clocks_mhz(345, 1980)
    gpu.reset_locked_sm_clocks()


def test_info_reads_clocks_through_getters_only(nvml):
    from luce_bench.info import gather

    data = gather(0)
    assert data["gpu"]["sm_clocks_supported"] == "345-1980 MHz, 110 clocks every 15 MHz"
    assert data["gpu"]["mem_clocks_supported"] == "3201 MHz"
    assert data["gpu"]["sm_clock_lock"] == "not readable through NVML"
    for setter in (
        "nvmlDeviceSetGpuLockedClocks",
        "nvmlDeviceResetGpuLockedClocks",
        "nvmlDeviceSetPowerManagementLimit",
    ):
        getattr(nvml, setter).assert_not_called()


def test_meta_records_the_peak_memory_bandwidth_from_bus_width_and_memory_clock(nvml):
    from luce_bench.gpu.nvml import NvmlGPU
    from luce_bench.provenance import gpu_meta

    nvml.nvmlDeviceGetMemoryBusWidth.return_value = 6144  # what an H200 reports; its memory clock here is 3201 MHz
    meta = gpu_meta(NvmlGPU(0))
    assert (meta["memory_bus_width_bits"], meta["memory_clock_max_mhz"]) == (6144, 3201)
    assert meta["memory_bandwidth_gb_s"] == 4916.7  # 6144 / 8 B x 3201e6 /s x 2 (double data rate)
