"""GPU access: `open_gpu()` returns an NVML-backed GPU or a simulated `FakeGPU`; nothing here is a global singleton."""

from __future__ import annotations

import os
from pathlib import Path

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
    "last_fake_gpu",
    "open_gpu",
    "read_only_mode",
]

_last_fake = None  # the most recent FakeGPU, so the sim backend can find the card it simulates on


def open_gpu(index: int = 0, fake: bool | str = False, read_only: bool | None = None, uuid: str | None = None) -> GPU:
    """Open one GPU.

    Args:
        index: NVML device index.
        fake: False for NVML; True for the simulated card (preset from env LUCE_BENCH_FAKE_GPU_PRESET, default
            "rtx3090"); or a preset name ("rtx3090", "h100-sxm").
        read_only: setters refuse when True; None follows `read_only_mode()` (env LUCE_BENCH_READONLY).
        uuid: open the GPU with this UUID instead of `index` (used by `restore`).

    Returns:
        An object following the `GPU` protocol.

    Raises:
        GPUUnavailable: no driver, no pynvml, a bad index or an unknown preset; the message says why.
    """
    global _last_fake
    if read_only is None:
        read_only = read_only_mode()
    if fake:
        from luce_bench.gpu import fake as fake_mod

        name = fake if isinstance(fake, str) else os.environ.get(fake_mod.PRESET_ENV, fake_mod.DEFAULT_PRESET)
        state = os.environ.get(fake_mod.STATE_ENV)
        gpu = fake_mod.FakeGPU(
            preset=fake_mod.preset(name),
            index=index,
            read_only=read_only,
            refuse_set=os.environ.get(fake_mod.NO_PERMISSION_ENV, "") not in ("", "0"),
            state_path=Path(state) if state else None,
        )
        if uuid is not None and gpu.uuid() != uuid:
            raise GPUUnavailable(f"no fake GPU with UUID {uuid} (this one is {gpu.uuid()})")
        _last_fake = gpu
        return gpu
    from luce_bench.gpu.nvml import NvmlGPU

    return NvmlGPU(index=index, uuid=uuid, read_only=read_only)


def last_fake_gpu():  # noqa: ANN201 - FakeGPU | None, imported lazily
    """The FakeGPU most recently opened by `open_gpu(fake=...)` in this process, or None."""
    return _last_fake
