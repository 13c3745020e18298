"""GPU access: `open_gpu()` returns an NVML-backed GPU or a simulated `FakeGPU`; a factory, no global state."""

from __future__ import annotations

import time
from collections.abc import Callable

from luce_bench.gpu.base import (
    GPU,
    GPUError,
    GPUNotSupportedError,
    GPUPermissionError,
    GPUReadOnlyError,
    GPUUnavailable,
    enable_read_only_mode,
    read_only_mode,
)

__all__ = [
    "GPU",
    "GPUError",
    "GPUNotSupportedError",
    "GPUPermissionError",
    "GPUReadOnlyError",
    "GPUUnavailable",
    "enable_read_only_mode",
    "open_gpu",
    "read_only_mode",
]


def open_gpu(
    index: int = 0,
    fake_preset: str | None = None,
    read_only: bool | None = None,
    uuid: str | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> GPU:
    """Open one GPU.

    Args:
        index: NVML device index.
        fake_preset: None for NVML; a preset name ("rtx3090", "h100-sxm") for a simulated card.
        read_only: setters refuse when True; None follows `read_only_mode()` (env LUCE_BENCH_READONLY).
        uuid: open the GPU with this UUID instead of `index` (used by `restore`).
        clock: the simulated card's time source (virtual time in simulated runs); NVML ignores it.

    Returns:
        An object following the `GPU` protocol.

    Raises:
        GPUUnavailable: no driver, no pynvml, a bad index or an unknown preset; the message says why.
    """
    if read_only is None:
        read_only = read_only_mode()
    if fake_preset is not None:
        from luce_bench.gpu.fake import open_fake

        return open_fake(fake_preset, index, read_only, uuid, clock)
    from luce_bench.gpu.nvml import NvmlGPU

    return NvmlGPU(index=index, uuid=uuid, read_only=read_only)
