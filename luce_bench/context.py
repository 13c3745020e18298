"""The run context: the GPU opened once (NVML, simulated or none), the clock, CPU energy, the backend factory.

Everything below the CLI gets the context passed in; nothing looks the GPU up on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from luce_bench.clock import Clock, RealClock, SimClock
from luce_bench.config import BenchConfig
from luce_bench.errors import UserError
from luce_bench.gpu.base import GPU, GPUError, GPUIndexError

if TYPE_CHECKING:
    from luce_bench.backends.base import Backend
    from luce_bench.cpu_energy import Rapl
    from luce_bench.gpu.fake import FakeGPU


@dataclass
class RunContext:
    """What measures a run. `gpu` is None without NVML (`energy_note` says why); `fake_gpu` is `gpu` when simulated."""

    cfg: BenchConfig
    clock: Clock
    virtual_time: bool = False
    gpu: GPU | None = None
    fake_gpu: FakeGPU | None = None
    energy_note: str = ""
    rapl: Rapl | None = None

    @property
    def fake_preset(self) -> str | None:
        """The simulated card's preset (journalled so `restore` can reopen it); None for a real GPU."""
        return self.cfg.gpu.fake_preset if self.fake_gpu is not None else None

    def backend_kwargs(self, name: str) -> dict[str, Any]:
        """Constructor options of backend `name`.

        llama.cpp's context sizes, the megakernel's KV cache and hf-compiled's static cache fit the longest test, depth
        included; a simulated backend gets its card and clock.
        """
        from luce_bench.backends import get

        tests = self.cfg.test_specs
        longest = max(t.positions for t in tests)
        if get(name).simulated:
            return {"gpu": self.fake_gpu, "clock": self.clock}
        if name == "megakernel":
            return {"max_seq": max(4096, longest + 8)}
        if name == "llamacpp":
            n_ctx = max(512, -(-(longest + 64) // 256) * 256)
            n_ubatch = min(2048, max([t.n for t in tests if t.kind == "pp"] or [512]))  # one ubatch per pp test
            return {"n_ctx": n_ctx, "n_batch": max(2048, n_ubatch), "n_ubatch": n_ubatch}
        if name == "hf-compiled":  # as generate sizes it: the longest sequence a test puts in the cache, depth included
            return {"max_cache_len": longest + 1}
        return {}

    def create_backend(self, name: str) -> Backend:
        """A new, unloaded backend; on a simulated GPU its calls load the simulated card."""
        from luce_bench.backends import create

        backend = create(name, **self.backend_kwargs(name))
        if self.fake_gpu is None:
            return backend
        from luce_bench.backends.sim import SimulatedLoad

        return SimulatedLoad(backend, self.fake_gpu)


def _open_gpu(cfg: BenchConfig, ctx: RunContext, for_settings: bool) -> None:
    from luce_bench.gpu import read_only_mode

    read_only = read_only_mode() or not for_settings  # setters also re-check LUCE_BENCH_READONLY at every call
    if cfg.gpu.fake:
        from luce_bench.gpu.fake import open_fake

        try:
            ctx.gpu = ctx.fake_gpu = open_fake(cfg.gpu.fake_preset, cfg.gpu.index, read_only, clock=ctx.clock.now_s)
        except GPUIndexError as exc:
            raise UserError(str(exc)) from None
        return
    from luce_bench.gpu import open_gpu

    try:
        ctx.gpu = open_gpu(cfg.gpu.index, read_only=read_only)
    except GPUIndexError as exc:  # NVML works and has no such card: not a reason to measure without energy
        raise UserError(str(exc)) from None
    except GPUError as exc:
        if for_settings:
            raise UserError(f"cannot sweep without a GPU: {exc} (use --fake-gpu to simulate one)") from None
        ctx.energy_note = f"no NVML GPU energy ({exc})"


@contextlib.contextmanager
def open_context(cfg: BenchConfig, for_settings: bool = False) -> Iterator[RunContext]:
    """Open the run's GPU once; closed on exit.

    `for_settings`: the run will change GPU settings (a sweep): the GPU is opened writable and must exist. Otherwise
    it is opened read-only and may be missing (no energy then).
    """
    virtual = cfg.gpu.fake_clock == "virtual"
    if virtual and not cfg.gpu.fake:
        raise UserError("gpu.fake_clock: virtual needs a simulated GPU (--fake-gpu)")
    ctx = RunContext(cfg, SimClock() if virtual else RealClock(), virtual_time=virtual)
    _open_gpu(cfg, ctx, for_settings)
    if not virtual:  # CPU energy means nothing in virtual time
        with contextlib.suppress(Exception):
            from luce_bench.cpu_energy import Rapl

            if Rapl.available() is None:
                ctx.rapl = Rapl()
    try:
        yield ctx
    finally:
        if ctx.gpu is not None:
            ctx.gpu.close()
