"""The simulation side of `--fake-gpu`: the `sim` backend, and the load every backend puts on a simulated card.

`sim` is a SIMULATED backend; its numbers are a model, never a measurement. It produces deterministic pseudo tokens
and waits, on the run's clock, for the time the FakeGPU's DVFS model says the work would take at the current power
limit and clock lock: time = tokens / (stock rate x throughput share), where the share follows the simulated SM clock
(prefill mostly compute-bound, decode mostly memory-bound; gpu/fake_model.py). It is given the card it simulates
on; it runs only in a run with a simulated GPU.

`SimulatedLoad` wraps each backend of such a run so the card is loaded while the backend computes: the simulated
power, clocks and energy counter respond to the work (the GPU protocol itself has no such hook). Prefill loads it
as compute-bound work, which has its own draw on presets that model one (h200).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, ClassVar

from luce_bench.backends.base import Backend, ModelSpec, StepResult
from luce_bench.clock import Clock
from luce_bench.gpu.fake import FakeGPU

NOTE = "SIMULATED backend: throughput comes from the FakeGPU's DVFS model, not from running a model"

# (prefill tok/s, decode tok/s) at the top clock, per FakeGPU preset; roughly a 0.8B model at batch 1. h200: measured
# on the team's H200 at the stock limit (h200.md): llama.cpp's pp520 and our megakernel's tg128.
STOCK_RATES: dict[str, tuple[float, float]] = {
    "rtx3090": (9000.0, 250.0),
    "h100-sxm": (24000.0, 420.0),
    "h200": (43694.0, 1636.0),
}
PREFILL_MEM_BOUND_SHARE = 0.2
DECODE_MEM_BOUND_SHARE = 0.7


class SimBackend(Backend):
    """Simulated engine whose speed follows the FakeGPU's SM clock."""

    name: ClassVar[str] = "sim"
    simulated: ClassVar[bool] = True

    def __init__(self, gpu: FakeGPU, clock: Clock, time_scale: float = 1.0) -> None:
        """A sim backend on the simulated card `gpu`, waiting on `clock`; `time_scale` multiplies every wait."""
        self.gpu, self.clock, self.time_scale = gpu, clock, time_scale
        self._vocab = 1000
        self._pos = 0
        self._last = 0
        self._saved: tuple[int, int] | None = None  # (position, last token) of a depth test's context
        self._rates = STOCK_RATES.get(gpu.preset.name, STOCK_RATES["rtx3090"])

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Always installable; the run refuses it without a simulated GPU (`simulated`)."""
        return None

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """No weights are read: only the vocabulary size matters."""
        self._vocab = int(model.config.vocab_size)
        self._device_kind = "cuda"
        print(f"luce-bench: {NOTE}", file=sys.stderr)
        self.reset()

    def reset(self) -> None:
        """Forget the sequence."""
        self._pos, self._last = 0, 0

    def save_context(self) -> None:
        """Keep the position and last token."""
        self._saved = (self._pos, self._last)

    def restore_context(self) -> None:
        """Back to the kept position and last token."""
        if self._saved is None:
            raise RuntimeError("restore_context() needs a save_context() first")
        self._pos, self._last = self._saved

    def _next_token(self, prev: int) -> int:
        self._pos += 1
        return (prev * 1103515245 + self._pos * 12345 + 7) % self._vocab

    def _compute(self, n_tokens: int, rate_tok_s: float, mem_bound_share: float) -> float:
        """Wait for the modelled time of `n_tokens`; return the elapsed seconds."""
        share = self.gpu.throughput_share(mem_bound_share)
        t0 = self.clock.now_s()
        self.clock.sleep(self.time_scale * n_tokens / (rate_tok_s * share))
        return self.clock.now_s() - t0

    def _logits(self, tokens: Sequence[int]) -> Any:
        import numpy as np

        rows = np.zeros((len(tokens), self._vocab), dtype=np.float32)
        rows[np.arange(len(tokens)), list(tokens)] = 1.0
        return rows

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Simulate the prompt pass; return one pseudo token."""
        elapsed_s = self._compute(len(token_ids), self._rates[0], PREFILL_MEM_BOUND_SHARE)
        prev = int(sum(token_ids)) % self._vocab if token_ids else 0
        self._pos += len(token_ids) - 1
        self._last = self._next_token(prev)
        return StepResult((self._last,), elapsed_s, self._logits([self._last]) if logits else None)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Simulate `n` greedy steps; return `n` pseudo tokens."""
        if inputs is not None and len(inputs) != n:
            raise ValueError("len(inputs) must equal n")
        elapsed_s = self._compute(n, self._rates[1], DECODE_MEM_BOUND_SHARE)
        out: list[int] = []
        for i in range(n):
            self._last = self._next_token(int(inputs[i]) if inputs is not None else self._last)
            out.append(self._last)
        return StepResult(tuple(out), elapsed_s, self._logits(out) if logits else None)

    def generate(self, seed: int, n: int) -> StepResult:
        """Simulate a new sequence's `n` greedy steps from `seed`: `decode(n)` from it (the seed's step too)."""
        self._check_generate_n(n)
        self._last = int(seed) % self._vocab
        return self.decode(n)

    def info(self) -> dict[str, Any]:
        """Provenance: says it is simulated."""
        return {"simulated": True, "note": NOTE, "stock_rates_tok_s": list(self._rates)}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Static facts for `luce-bench info`."""
        return {"simulated": True, "note": NOTE}


class SimulatedLoad(Backend):
    """`inner` with the simulated card loaded during each prefill, decode and generate call."""

    def __init__(self, inner: Backend, gpu: FakeGPU) -> None:
        """Wrap `inner`, loading `gpu` while it computes."""
        self.inner, self.gpu = inner, gpu
        self.name = inner.name  # type: ignore[misc]  # reported under the inner backend's name
        self.simulated = inner.simulated  # type: ignore[misc]  # and is a simulation where it is one

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The inner backend's reason was checked before it was created."""
        return None

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Load the inner backend."""
        self.inner.load(model, device)

    def reset(self) -> None:
        """Reset the inner backend."""
        self.inner.reset()

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """The inner prefill, with the card loaded by compute-bound work."""
        self.gpu.set_load(True, compute_bound=True)
        try:
            return self.inner.prefill(token_ids, logits)
        finally:
            self.gpu.set_load(False)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """The inner decode, with the card loaded."""
        self.gpu.set_load(True)
        try:
            return self.inner.decode(n, logits, inputs)
        finally:
            self.gpu.set_load(False)

    def generate(self, seed: int, n: int) -> StepResult:
        """The inner generate, with the card loaded as for decode steps."""
        self.gpu.set_load(True)
        try:
            return self.inner.generate(seed, n)
        finally:
            self.gpu.set_load(False)

    def save_context(self) -> None:
        """The inner backend keeps its context."""
        self.inner.save_context()

    def restore_context(self) -> None:
        """The inner backend goes back to its context (a state copy: the card is not loaded as for compute)."""
        self.inner.restore_context()

    @property
    def device_kind(self) -> str:
        """Where the inner backend runs."""
        return self.inner.device_kind

    def info(self) -> dict[str, Any]:
        """The inner backend's provenance."""
        return self.inner.info()

    def close(self) -> None:
        """Close the inner backend."""
        self.inner.close()
