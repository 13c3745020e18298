"""The one seam every inference backend implements (hf, llamacpp, megakernel).

Prompts are token ids (as in llama-bench): no tokenizer is needed. Decoding is greedy (argmax). Every timed call
synchronises its own device before it stops the clock, so `elapsed_s` is the device time of the work, not of its launch.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from luce_bench.errors import UserError
from luce_bench.model.spec import TextConfig


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model: a local HF-layout directory (config.json + safetensors) and its text config."""

    name: str  # what the user asked for: "synthetic-0.8b", "tiny", a hub id or a path
    path: Path  # local directory in HF layout
    config: TextConfig
    synthetic: bool = False
    seed: int | None = None  # generation seed of a synthetic checkpoint


@dataclass(frozen=True)
class StepResult:
    """What a prefill or decode call produced.

    tokens: greedy (argmax) token ids, one per produced position.
    elapsed_s: wall time of the call, measured after a device synchronise.
    logits: float32 array [len(tokens), vocab] when asked for, else None.
    """

    tokens: tuple[int, ...]
    elapsed_s: float
    logits: Any = None


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (missing package, no GPU, no build); the message says why."""


class UnavailableAndBadInput(BackendUnavailable, UserError):
    """Cannot run here in a way the user must fix (a CPU-only llama.cpp on a GPU machine).

    A backend the run named is refused as bad input; one it only offered (a default, `all`) is skipped with the reason.
    """


class Backend(ABC):
    """Inference engine under test. Load once, then any number of reset/prefill/decode cycles."""

    name: ClassVar[str]
    # True: run in a child process of its own (see backends/isolated.py); its classmethod `prepare(model, **kwargs)`,
    # if defined, runs in the parent first
    isolate: ClassVar[bool] = False
    # True: a simulation of a GPU engine (backends/sim.py); runs only with a simulated GPU (--fake-gpu)
    simulated: ClassVar[bool] = False

    @classmethod
    @abstractmethod
    def unavailable_reason(cls) -> str | None:
        """Why this backend cannot run on this machine, or None if it can. Must be cheap (no heavy imports)."""

    @classmethod
    def model_reason(cls, model: ModelSpec) -> str | None:
        """Why this backend cannot run `model` at all (e.g. other shapes than it is built for), else None; cheap.

        Unlike check_model's bad input, this is a fact of the backend: compare skips a default backend for it.
        """
        return None

    @classmethod  # noqa: B027 - optional: most backends need no check of their own
    def check_model(cls, model: ModelSpec, **kwargs: Any) -> None:
        """Refuse (UserError) model files this backend would fail on, while the plan is made; cheap; nothing written.

        `kwargs` are the backend's constructor options. The checkpoint itself was checked already (model/check.py).
        """

    @abstractmethod
    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Load weights once. `device` is "auto", "cpu" or "cuda"/"cuda:N". Heavy imports happen here."""

    @abstractmethod
    def reset(self) -> None:
        """Forget the sequence: clear KV cache, recurrent and conv state. Not timed."""

    @abstractmethod
    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Process the prompt after the current sequence; return the argmax next token (1 token).

        With `logits`, also return the last position's logits as float32 [1, vocab].
        """

    @abstractmethod
    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Greedy-decode `n` tokens, one forward step each, continuing from the last produced token.

        `inputs` (teacher forcing): step i feeds inputs[i] instead of the previous argmax; len(inputs) == n.
        With `logits`, return float32 [n, vocab] (one row per step).
        """

    def generate(self, seed: int, n: int) -> StepResult:
        """A new sequence's n greedy tokens from one seed token: n one-token forward steps, as llama-bench's tg.

        Step 0 feeds `seed`, each later step the previous argmax; `tokens` are the n argmaxes and `elapsed_s` times
        all n steps. Call after `reset()`. This default is `prefill([seed])` then `decode(n - 1)`; a backend may run
        the same steps in one call.
        """
        self._check_generate_n(n)
        first = self.prefill([seed])
        if n == 1:
            return first
        rest = self.decode(n - 1)
        return StepResult(tokens=first.tokens + rest.tokens, elapsed_s=first.elapsed_s + rest.elapsed_s)

    @staticmethod
    def _check_generate_n(n: int) -> None:
        """Refuse n < 1: the argument check of `generate`, shared by the backends that override it."""
        if n < 1:
            raise ValueError("generate() needs n >= 1")

    def save_context(self) -> None:
        """Keep the current sequence (a depth test's prefilled context) so `restore_context` can go back to it.

        Not timed. One context is kept; a new call replaces it, `reset` leaves it alone.
        """
        raise NotImplementedError(f"backend {self.name} cannot keep a context: depth tests (@d<D>) need it")

    def restore_context(self) -> None:
        """Go back to the sequence `save_context` kept, as if its prefill had just finished. Not timed."""
        raise NotImplementedError(f"backend {self.name} cannot keep a context: depth tests (@d<D>) need it")

    def close(self) -> None:  # noqa: B027 - optional: most backends free their memory here
        """Free device memory."""

    @property
    def device_kind(self) -> str:
        """Where the work actually ran: "cuda" or "cpu" (set by `load`)."""
        return getattr(self, "_device_kind", "cpu")

    def info(self) -> dict[str, Any]:
        """Provenance for meta.json after `load`: versions, build, which fast paths ran."""
        return {}

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Static facts for `luce-bench info` (version, build kind); may import its package, never loads a model."""
        return {}


def argmax_tokens(rows: Any) -> tuple[int, ...]:
    """Argmax of each row of a [n, vocab] numpy array, as plain ints."""
    return tuple(int(i) for i in rows.argmax(axis=-1))


def load_class(target: str) -> type[Backend]:
    """The backend class at "package.module:Class" (imports the module)."""
    import importlib

    module, cls = target.split(":")
    return getattr(importlib.import_module(module), cls)
