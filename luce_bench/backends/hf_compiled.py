"""HF transformers as its users tune it: a static cache sized from the test and a compiled decode step.

This is what `model.generate(..., cache_implementation="static")` does (transformers 5.17 to 5.24), split so the
benchmark can time prefill and decode apart:
* a `StaticCache` sized from the longest test: preallocated KV for the full-attention layers, fixed conv and recurrent
  state buffers for the GDN layers, all at fixed addresses and updated in place;
* the prompt runs through the eager model (prefill as transformers runs it, into the static cache);
* every one-token decode step runs through `model.get_compiled_call(CompileConfig(...))`, the very torch.compile of the
  forward that generate uses: mode "reduce-overhead" on CUDA (inductor kernels replayed as CUDA graphs), "default" on
  CPU; `LUCE_BENCH_HF_COMPILE` picks another mode, or `none` (static cache, eager decode). Like generate, the step's
  input ids are cloned in and its logits copied out as float32 before the next replay reuses the output buffer.

A plain `torch.compile(model.forward, mode="reduce-overhead")` over the dynamic hybrid cache fails on the H200
("accessing tensor output of CUDAGraphs that has been overwritten by a subsequent run"): that cache's tensors are
outputs of one replay read after the next. The static cache's in-place updates avoid it.

`load` compiles and warms up (CUDA-graph recording) before any measured window and records both times, then compares
the compiled decode with the eager model on the same weights and the eager model's history: greedy tokens (near ties
counted, `agreement.py`) and the logits' relative L2, which must stay within rounding (`REL_L2_BOUND`; a warning in
the report otherwise). A compilation that fails raises BackendUnavailable with one line: an optional backend is skipped.
"""

from __future__ import annotations

import os
import time
from typing import Any

from luce_bench.backends.base import BackendUnavailable, ModelSpec
from luce_bench.backends.hf import HFBackend
from luce_bench.backends.hf_paths import torch_cuda_version
from luce_bench.errors import UserError

ENV_MODE = "LUCE_BENCH_HF_COMPILE"
COMPILE_MODES = ("reduce-overhead", "default", "max-autotune", "max-autotune-no-cudagraphs", "none")
CHECK_PROMPT = 8  # tokens of the agreement check's prompt
WARMUP_STEPS = 4  # decode steps after the compiling one: CUDA-graph trees run, then record, then replay
# Largest relative L2 of the logits (compiled vs eager, same history) that rounding explains. bf16: eager HF in bf16
# is up to 0.105 off float32 on the 0.8B random weights (H200 parity tests), two bf16 engines up to 0.108 apart on the
# tiny model (CPU); a wrong cache or position gives ~1. float32: ~1e-5 measured (CPU, tiny).
REL_L2_BOUND = {"bfloat16": 0.25, "float16": 0.05, "float32": 1e-3}


def _mode_from_env() -> str | None:
    mode = os.environ.get(ENV_MODE, "").strip()
    if mode and mode not in COMPILE_MODES:
        raise UserError(f"{ENV_MODE}={mode!r}: expected one of {', '.join(COMPILE_MODES)}")
    return mode or None


def _one_line(exc: BaseException) -> str:
    lines = [s.strip() for s in str(exc).splitlines() if s.strip()]
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def _dynamo_counts() -> dict[str, int]:
    """Graphs compiled, graph breaks and graphs left without CUDA graphs so far in this process (torch's counters)."""
    from torch._dynamo.utils import counters

    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "graph_breaks": int(sum(counters["graph_break"].values())),
        "cudagraph_skips": int(counters["inductor"].get("cudagraph_skips", 0)),
    }


def _copied(value: Any) -> Any:
    """A copy of a cache layer's state: tensors cloned, dicts and lists copied, other values (flags, ints) kept."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copied(v) for v in value]
    return value


def _copied_into(current: Any, kept: Any) -> Any:
    """`kept` (from `_copied`) as the new value of `current`: into the same tensor, dict or list where they match."""
    import torch

    if isinstance(kept, torch.Tensor):
        same = isinstance(current, torch.Tensor) and (current.shape, current.dtype, current.device) == (
            kept.shape,
            kept.dtype,
            kept.device,
        )
        return current.copy_(kept) if same else kept.clone()
    if isinstance(kept, dict) and isinstance(current, dict):
        for k, v in kept.items():
            current[k] = _copied_into(current.get(k), v)
        for k in set(current) - set(kept):
            del current[k]
        return current
    if isinstance(kept, list) and isinstance(current, list) and len(kept) == len(current):
        current[:] = [_copied_into(c, v) for c, v in zip(current, kept, strict=True)]
        return current
    return _copied(kept)


class HFCompiledBackend(HFBackend):
    """transformers' Qwen3.5 with a `StaticCache` and the decode step compiled as `generate` compiles it."""

    name = "hf-compiled"

    def __init__(
        self,
        dtype: str = "bfloat16",
        sdpa_cudnn: bool = False,
        max_cache_len: int = 1024,
        compile_mode: str | None = None,
        compile_backend: str = "inductor",
        allow_cpu: bool = False,
        check_steps: int = 16,
    ) -> None:
        """`max_cache_len`: positions of the static cache (the longest test + 1; at least the agreement check's).

        `compile_mode`: torch.compile mode, or "none"; default `LUCE_BENCH_HF_COMPILE`, else "reduce-overhead" on
        CUDA and "default" on CPU. `allow_cpu`: run on the CPU (tests); otherwise a CPU device is BackendUnavailable.
        """
        super().__init__(dtype, sdpa_cudnn)
        if compile_mode is not None and compile_mode not in COMPILE_MODES:
            raise UserError(f"hf-compiled: compile mode {compile_mode!r}: expected one of {', '.join(COMPILE_MODES)}")
        self.check_steps = check_steps
        self.max_cache_len = max(int(max_cache_len), CHECK_PROMPT + check_steps)
        self.compile_mode = compile_mode
        self.compile_backend = compile_backend
        self.allow_cpu = allow_cpu
        self._static: Any = None  # the StaticCache
        self._step: Any = None  # the compiled call (or the eager one with mode "none")
        self._pos = 0  # positions filled in the static cache
        self._times: dict[str, float] = {}
        self._counts: dict[str, int] = {}  # graphs and graph breaks torch.compile made in load
        self._dynamo_at_load: dict[str, int] = {}  # torch._dynamo's process-wide counters at the end of load
        self._check: dict[str, Any] = {}  # the load-time comparison with the eager model

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why it cannot run here: HF's reasons, a CPU-only torch, no NVIDIA GPU; None if it can."""
        reason = super().unavailable_reason()
        if reason:
            return reason
        if torch_cuda_version() is None:
            return "torch is a CPU-only build: the decode step is compiled for CUDA (install a CUDA build of torch)"
        from luce_bench.backends.llamacpp import nvidia_gpu_present

        if not nvidia_gpu_present():
            return "no NVIDIA GPU visible: the decode step is compiled for CUDA"
        return None

    @classmethod
    def check_model(cls, model: ModelSpec, **kwargs: Any) -> None:
        """Refuse a bad `LUCE_BENCH_HF_COMPILE` while the run is planned."""
        _mode_from_env()

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """HF's versions, and the cache and compile mode a run would use."""
        return {**super().describe(), "cache": "static", "compile_mode": _mode_from_env() or "reduce-overhead (CUDA)"}

    def _no_grad(self) -> Any:
        # no_grad, as generate: the cache's buffers outlive a call, and a tensor made in inference mode cannot be
        # zeroed in place outside it (reset)
        import torch

        return torch.no_grad()

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Load as HF does, then build the static cache, compile and warm up the decode step, check it against eager."""
        import torch

        on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
        if on_cpu and not self.allow_cpu:
            raise BackendUnavailable("no CUDA device to compile the decode step for (a CPU run)")
        mode = self.compile_mode or _mode_from_env()
        t0 = time.perf_counter()
        super().load(model, device)
        self._times["load_s"] = time.perf_counter() - t0
        self.compile_mode = mode or ("reduce-overhead" if self._device.type == "cuda" else "default")
        before = _dynamo_counts()
        try:
            self._compile()
            self._check_agreement(model.config.vocab_size)  # runs the compiled step at other positions
        except (UserError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - any compile failure makes the backend unavailable, in one line
            raise BackendUnavailable(f"compiling the decode step failed: {_one_line(exc)}") from exc
        self._dynamo_at_load = _dynamo_counts()
        self._counts = {k: self._dynamo_at_load[k] - before[k] for k in before}

    def _compile(self) -> None:
        """Static cache, compiled step; the first decode step compiles, the next ones warm up (timed apart)."""
        from transformers import CompileConfig, StaticCache

        self._static = StaticCache(config=self._model.config, max_cache_len=self.max_cache_len)
        if self.compile_mode == "none":
            self._step = self._model.__call__
        else:
            config = CompileConfig(mode=self.compile_mode, backend=self.compile_backend)
            self._step = self._model.get_compiled_call(config)
        self.reset()
        self.prefill([1])
        t0 = time.perf_counter()
        self.decode(1)
        t1 = time.perf_counter()
        self.decode(WARMUP_STEPS)
        self._times.update(compile_s=t1 - t0, warmup_s=time.perf_counter() - t1)
        self.reset()

    def _eager_greedy(self, prompt: list[int], steps: int) -> tuple[list[int], Any]:
        """The eager model (its dynamic cache, as the `hf` backend runs it): `steps` greedy tokens and their logits."""
        import numpy as np
        import torch
        from transformers import DynamicCache

        cache = DynamicCache(config=self._model.config)
        ids = torch.tensor([prompt], dtype=torch.long, device=self._device)
        tokens, rows = [], []
        with self._running():
            for _ in range(steps):
                out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
                last = out.logits[0, -1].float()
                ids = last.argmax().view(1, 1)
                tokens.append(int(ids))
                rows.append(last.cpu().numpy())
        return tokens, np.stack(rows)

    def _check_agreement(self, vocab_size: int) -> None:
        """Greedy tokens and logits of this backend on the eager model's history vs the eager model's (agreement.py)."""
        import numpy as np

        from luce_bench.agreement import greedy_agreement, rel_l2
        from luce_bench.measure import make_prompt

        t0 = time.perf_counter()
        prompt = make_prompt(CHECK_PROMPT, vocab_size, seed=17)
        ref_tokens, ref_logits = self._eager_greedy(prompt, self.check_steps)
        self.reset()
        first = self.prefill(prompt, logits=True)
        forced = self.decode(self.check_steps - 1, logits=True, inputs=ref_tokens[:-1])
        agreement = greedy_agreement([*first.tokens, *forced.tokens], ref_tokens, ref_logits)
        rel = float(rel_l2(np.concatenate([first.logits, forced.logits]), ref_logits).max())
        bound = REL_L2_BOUND.get(self.dtype_name, REL_L2_BOUND["bfloat16"])
        self._check = {
            **agreement.to_dict(),
            "logits_rel_l2_max": rel,
            "rel_l2_bound": bound,
            "same_function": rel <= bound,
        }
        self.reset()
        self._times["check_s"] = time.perf_counter() - t0

    def reset(self) -> None:
        """Empty the static cache in place (its addresses stay, so the compiled step stays valid)."""
        self._last = None
        self._pos = 0
        if self._static is not None:
            with self._running():
                self._static.reset()

    def save_context(self) -> None:
        """Keep a copy of the static cache's state (KV, conv and recurrent states, counters), its fill, last logits."""
        if self._static is None:
            raise RuntimeError("save_context() needs a loaded backend")
        with self._running():
            self._saved = ([_copied(vars(layer)) for layer in self._static.layers], self._pos, self._last)

    def restore_context(self) -> None:
        """Go back to the kept state, copied into the cache's own tensors: the compiled step's addresses stay valid."""
        if self._saved is None:
            raise RuntimeError("restore_context() needs a save_context() first")
        layers, self._pos, self._last = self._saved
        with self._running():
            for layer, kept in zip(self._static.layers, layers, strict=True):
                for name, value in kept.items():
                    setattr(layer, name, _copied_into(getattr(layer, name, None), value))

    def _forward(self, ids: Any) -> Any:
        """Last position's logits [1, vocab]; prompts run eager, one-token steps run the compiled call."""
        import torch

        n = ids.shape[1]
        if self._pos + n > self.max_cache_len:
            need = self._pos + n
            raise RuntimeError(f"the static cache holds {self.max_cache_len} positions; this sequence needs {need}")
        kwargs = {"use_cache": True, "logits_to_keep": 1, self._cache_kw: self._static}
        if self._pos == 0 or n > 1:
            last = self._model(input_ids=ids, **kwargs).logits[:, -1, :]
        else:
            out = self._step(input_ids=ids.clone(), **kwargs)
            last = out.logits[:, -1, :].to(copy=True, dtype=torch.float32)
        self._pos += n
        return last

    def info(self) -> dict[str, Any]:
        """HF's provenance plus the cache, the compile mode, compile and warm-up times, and the agreement check."""
        info = super().info()
        info.update(
            cache="static",
            max_cache_len=self.max_cache_len,
            compile_mode=self.compile_mode,
            compile_backend=self.compile_backend if self.compile_mode != "none" else None,
            **{k: round(v, 3) for k, v in self._times.items()},
            **self._counts,
        )
        warnings = [info["warning"]] if info.get("warning") else []
        if self._dynamo_at_load:
            late = _dynamo_counts()["graphs"] - self._dynamo_at_load["graphs"]
            info["graphs_compiled_after_load"] = late
            if late:
                warnings.append(f"torch.compile compiled {late} more graph(s) after load: inside measured windows")
        if self._counts.get("cudagraph_skips"):
            warnings.append(
                f"{self._counts['cudagraph_skips']} compiled graph(s) ran without CUDA graphs "
                "(TORCH_LOGS=perf_hints says why)"
            )
        if self._check:
            info["greedy_vs_eager"] = self._check
            if not self._check["same_function"]:
                warnings.append(
                    f"compiled decode's logits are {self._check['logits_rel_l2_max']:.2g} (rel L2) off eager HF's, "
                    f"more than rounding explains ({self._check['rel_l2_bound']:g}): {self._check['text']}"
                )
        if warnings:
            info["warning"] = "; ".join(warnings)
        if self._model is not None:
            info["setup"] = self.setup_text(info)
        return info

    def setup_text(self, info: dict[str, Any]) -> str:
        """What this row measured, in one line for the report."""
        compiled = (
            "eager (LUCE_BENCH_HF_COMPILE=none)"
            if info.get("compile_mode") == "none"
            else f"torch.compile mode={info.get('compile_mode')} backend={info.get('compile_backend')}"
        )
        text = (
            f"transformers {info.get('transformers')} as generate(cache_implementation='static') runs it: "
            f"StaticCache({info.get('max_cache_len')} positions), prefill eager, decode step {compiled}; "
            f"GDN {info.get('gdn_path')}, conv1d {info.get('conv1d_path')}"
        )
        if "compile_s" in info:
            text += f"; compiled in {info['compile_s']:.1f} s + warm-up {info['warmup_s']:.1f} s before the windows"
        if "greedy_vs_eager" in info:
            check = info["greedy_vs_eager"]
            text += f"; greedy vs eager HF: {check['text']}, logits rel L2 <= {check['logits_rel_l2_max']:.1e}"
        return text

    def close(self) -> None:
        """Release the model, the cache and the compiled code (dynamo's caches hold the model)."""
        compiled = self._step is not None and self.compile_mode != "none"
        super().close()
        self._static = self._step = None
        if compiled:
            import torch

            torch._dynamo.reset()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
