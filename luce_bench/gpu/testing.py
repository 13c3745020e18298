"""Test helpers shipped in the package: prove that a code path never changes GPU settings.

with forbid_gpu_setters() as calls:
run_compare(...)
assert calls == []   # or: any setter call raises AssertionError at once (strict=True, the default)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

SETTERS = ("set_power_limit_mw", "set_persistence_mode", "set_locked_sm_clocks_mhz", "reset_locked_sm_clocks")


@contextlib.contextmanager
def forbid_gpu_setters(strict: bool = True) -> Iterator[list[tuple[str, str, Any]]]:
    """Patch every GPU setter (FakeGPU and NvmlGPU) for the block; record attempted calls, raising if `strict`.

    Yields:
        The list of attempted calls as (class name, setter, arguments: one value, a tuple of several, or None).
    """
    from luce_bench.gpu.fake import FakeGPU
    from luce_bench.gpu.nvml import NvmlGPU

    calls: list[tuple[str, str, Any]] = []
    saved: list[tuple[type, str, Any]] = []

    def make(cls: type, name: str) -> Any:
        def forbidden(self: Any, *args: Any) -> None:
            value = args[0] if len(args) == 1 else (args or None)
            calls.append((cls.__name__, name, value))
            if strict:
                raise AssertionError(f"{cls.__name__}.{name}{args!r} called where GPU settings must not change")

        return forbidden

    for cls in (FakeGPU, NvmlGPU):
        for name in SETTERS:
            saved.append((cls, name, cls.__dict__[name]))
            setattr(cls, name, make(cls, name))
    try:
        yield calls
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
