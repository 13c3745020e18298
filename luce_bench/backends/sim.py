"""`sim`: a SIMULATED backend for `--fake-gpu` runs. Its numbers are a model, never a measurement.

It produces deterministic pseudo tokens and sleeps for the time the FakeGPU's DVFS model says the work would take at
the current power limit: time = tokens / (stock rate x throughput share), where the share follows the simulated SM
clock (prefill mostly compute-bound, decode mostly memory-bound). While it "computes" it marks the FakeGPU loaded, so
the simulated power, clocks and energy counter respond. It refuses to load without a FakeGPU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from luce_bench.backends.base import Backend, BackendUnavailable, ModelSpec, StepResult

NOTE = "SIMULATED backend: throughput comes from the FakeGPU's DVFS model, not from running a model"

# (prefill tok/s, decode tok/s) at the top clock, per FakeGPU preset; roughly a 0.8B model at batch 1.
STOCK_RATES: dict[str, tuple[float, float]] = {"rtx3090": (9000.0, 250.0), "h100-sxm": (24000.0, 420.0)}
PREFILL_MEM_BOUND_SHARE = 0.2
DECODE_MEM_BOUND_SHARE = 0.7


def _fake_gpu() -> Any:
    from luce_bench.gpu import last_fake_gpu

    gpu = last_fake_gpu()
    return gpu if gpu is not None and hasattr(gpu, "kernel_busy") else None


class SimBackend(Backend):
    """Simulated engine whose speed follows the FakeGPU's SM clock."""

    name: ClassVar[str] = "sim"

    def __init__(self, gpu: Any = None, time_scale: float = 1.0) -> None:
        """Create an unloaded sim backend.

        Args:
            gpu: the FakeGPU to simulate on (default: the one `open_gpu(fake=...)` opened last).
            time_scale: multiplies every sleep (tests use < 1).
        """
        self.gpu = gpu
        self.time_scale = time_scale
        self._vocab = 1000
        self._pos = 0
        self._last = 0

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Available only after a FakeGPU was opened (`--fake-gpu`)."""
        return None if _fake_gpu() is not None else "simulated backend: runs only with --fake-gpu"

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Attach to the FakeGPU; no weights are read."""
        self.gpu = self.gpu or _fake_gpu()
        if self.gpu is None or not hasattr(self.gpu, "kernel_busy"):
            raise BackendUnavailable("the sim backend runs only with --fake-gpu (it simulates a FakeGPU)")
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        self._vocab = int(vocab) if vocab else 1000
        self._rates = STOCK_RATES.get(self.gpu.preset.name, STOCK_RATES["rtx3090"])
        self._device_kind = "cuda"
        print(f"luce-bench: {NOTE}", file=sys.stderr)
        self.reset()

    def reset(self) -> None:
        """Forget the sequence."""
        self._pos, self._last = 0, 0

    def _next_token(self, prev: int) -> int:
        self._pos += 1
        return (prev * 1103515245 + self._pos * 12345 + 7) % self._vocab

    def _compute(self, n_tokens: int, rate_tok_s: float, mem_bound_share: float) -> float:
        """Sleep for the modelled time of `n_tokens` with the simulated GPU loaded; return the elapsed seconds."""
        share = self.gpu.throughput_share(mem_bound_share)
        t0 = time.perf_counter()
        self.gpu.kernel_busy(True)
        try:
            time.sleep(self.time_scale * n_tokens / (rate_tok_s * share))
        finally:
            self.gpu.kernel_busy(False)
        return time.perf_counter() - t0

    def _logits(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        rows = np.zeros((len(tokens), self._vocab), dtype=np.float32)
        rows[np.arange(len(tokens)), list(tokens)] = 1.0
        return rows

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Simulate the prompt pass; return one pseudo token."""
        if self.gpu is None:
            raise BackendUnavailable("sim backend used before load()")
        elapsed_s = self._compute(len(token_ids), self._rates[0], PREFILL_MEM_BOUND_SHARE)
        prev = int(sum(token_ids)) % self._vocab if token_ids else 0
        self._pos += len(token_ids) - 1
        self._last = self._next_token(prev)
        return StepResult((self._last,), elapsed_s, self._logits([self._last]) if logits else None)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Simulate `n` greedy steps; return `n` pseudo tokens."""
        if self.gpu is None:
            raise BackendUnavailable("sim backend used before load()")
        if inputs is not None and len(inputs) != n:
            raise ValueError("len(inputs) must equal n")
        elapsed_s = self._compute(n, self._rates[1], DECODE_MEM_BOUND_SHARE)
        out: list[int] = []
        for i in range(n):
            self._last = self._next_token(int(inputs[i]) if inputs is not None else self._last)
            out.append(self._last)
        return StepResult(tuple(out), elapsed_s, self._logits(out) if logits else None)

    def info(self) -> dict[str, Any]:
        """Provenance: says it is simulated."""
        return {"simulated": True, "note": NOTE, "stock_rates_tok_s": list(getattr(self, "_rates", ()))}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Static facts for `luce-bench info`."""
        return {"simulated": True, "note": NOTE}
