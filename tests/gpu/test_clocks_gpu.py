"""On a real GPU, read-only: the clock tables NVML lists, and clock setters refused before NVML is reached.

These run on the shared lent GPU (`make test-gpu` sets LUCE_BENCH_READONLY=1); they must never change a setting, so
every NVML clock setter is replaced by one that fails the test, and the GPU is opened read-only as well.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_gpu_tests_run_read_only():
    """Conftest sets LUCE_BENCH_READONLY=1 for every GPU test, whatever the caller's environment."""
    import os

    assert os.environ["LUCE_BENCH_READONLY"] == "1"


@pytest.fixture
def gpu(monkeypatch):
    pynvml = pytest.importorskip("pynvml")
    from luce_bench.gpu.nvml import NvmlGPU

    def never(*args):
        raise AssertionError("a GPU setter reached NVML in a read-only test")

    for name in ("nvmlDeviceSetGpuLockedClocks", "nvmlDeviceResetGpuLockedClocks", "nvmlDeviceSetPowerManagementLimit"):
        monkeypatch.setattr(pynvml, name, never)
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    card = NvmlGPU(0, read_only=True)
    yield card
    card.close()


def test_supported_clocks_are_listed_highest_first(gpu):
    sm, mem = gpu.supported_sm_clocks_mhz(), gpu.supported_mem_clocks_mhz()
    assert sm == sorted(set(sm), reverse=True) and len(sm) > 1 and mem == sorted(set(mem), reverse=True)
    assert min(sm) > 0 and max(sm) <= 4000  # MHz (the H200 lists up to 1980)


def test_clock_setters_refuse_in_read_only_mode(gpu):
    from luce_bench.gpu.base import GPUReadOnlyError

    top = gpu.supported_sm_clocks_mhz()[0]
    with pytest.raises(GPUReadOnlyError):
        gpu.set_locked_sm_clocks_mhz(top, top)
    with pytest.raises(GPUReadOnlyError):
        gpu.reset_locked_sm_clocks()


def test_info_shows_the_clocks(gpu):
    from luce_bench.info import gather

    data = gather(0)
    assert "MHz" in data["gpu"]["sm_clocks_supported"] and data["gpu"]["sm_clock_lock"] == "not readable through NVML"
