"""HF transformers baseline: `AutoModelForCausalLM`, bf16, greedy, cache-based decode.

The next token stays on the device between steps (no `.item()` per token), so the measured time is the model's, and
the host syncs once per call. transformers runs Qwen3.5's GDN layers through flash-linear-attention / causal-conv1d
when they are installed, else through slow pure-torch fallbacks; `info()` records which path ran.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import time
from collections.abc import Sequence
from typing import Any

from luce_bench.backends.base import Backend, ModelSpec, StepResult
from luce_bench.errors import UserError

_FALLBACK_MARK = "falling back to its reference PyTorch implementation"


class _FallbackRecorder(logging.Handler):
    """Collects the names of kernels transformers reports as running on their pure-torch fallback."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fallbacks: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if _FALLBACK_MARK in msg:
            self.fallbacks.add(msg.split("`")[1] if "`" in msg else msg[:60])


class HFBackend(Backend):
    """transformers `Qwen3_5ForCausalLM` with its own hybrid cache (KV + GDN conv/recurrent state)."""

    name = "hf"

    def __init__(self, dtype: str = "bfloat16", sdpa_cudnn: bool = False) -> None:
        self.dtype_name = dtype
        # On the H100, SDPA picked cuDNN attention for decode, and cuDNN built a new plan on the host for every new KV
        # length: 6.9 ms of CPU per call, 41 ms of a 106 ms token (experiments/profile_hf.py). Off by default, recorded.
        self.sdpa_cudnn = sdpa_cudnn
        self._model: Any = None
        self._cache: Any = None
        self._last: Any = None  # last produced token, [1, 1] on the device
        self._saved: Any = None  # (cache, last token) of a depth test's context
        self._cache_kw = "past_key_values"  # `cache` from transformers 5.24 (load reads the model's signature)
        self._recorder = _FallbackRecorder()
        self._hooked = False  # transformers' log handler replaced by the recorder (load), put back by close

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why HF cannot run here (torch or transformers missing), or None."""
        for pkg in ("torch", "transformers"):
            if importlib.util.find_spec(pkg) is None:
                return f"{pkg} is not installed (pip install 'luce-bench[hf]')"
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Versions of torch, transformers and the GDN kernel packages."""
        import torch
        import transformers

        return {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "fla": _version_of("fla"),
            "causal_conv1d": _version_of("causal_conv1d"),
        }

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Load the checkpoint in `dtype` on `device` (cuda when available for "auto")."""
        import torch
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging

        from luce_bench.backends.hf_paths import cache_kwarg

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError("HF backend: --device cuda asked for, but torch sees no CUDA GPU")
        self._device = torch.device(device)
        if self._device.type == "cuda" and self._device.index is None:
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._device_kind = self._device.type
        if self._device.type == "cuda":
            torch.backends.cuda.enable_cudnn_sdp(self.sdpa_cudnn)
        hf_logging.get_logger("transformers").addHandler(self._recorder)
        self._hooked = True
        # The fallback warnings are recorded (info()["torch_fallbacks"], and the report's notes) instead of printed
        # four times in the middle of the progress bars; the weight-loading bar is noise next to ours.
        hf_logging.disable_default_handler()
        hf_logging.disable_progress_bar()
        dtype = getattr(torch, self.dtype_name)
        self._model = AutoModelForCausalLM.from_pretrained(str(model.path), dtype=dtype).to(self._device).eval()
        self._cache_kw = cache_kwarg(self._model)  # the output carries the cache under the same name
        self.reset()

    def _no_grad(self) -> Any:
        """The autograd mode of every forward (inference mode: the eager path keeps no tensor across modes)."""
        import torch

        return torch.inference_mode()

    def _running(self) -> contextlib.AbstractContextManager[Any]:
        """What every forward runs under: `_no_grad`, and on the CPU the GDN helpers it can run (hf_paths)."""
        from luce_bench.backends.hf_paths import helpers_for

        if self._device.type != "cpu":  # nothing to swap: the timed steps on a GPU pay for no extra context
            return self._no_grad()
        stack = contextlib.ExitStack()
        stack.enter_context(self._no_grad())
        stack.enter_context(helpers_for(self._model, self._device.type))
        return stack

    def reset(self) -> None:
        """Drop the cache (KV and GDN state)."""
        self._cache = None
        self._last = None

    def save_context(self) -> None:
        """Keep a copy of the cache (KV and GDN state) and the last token."""
        import copy

        self._saved = (copy.deepcopy(self._cache), self._last)

    def restore_context(self) -> None:
        """Continue from a fresh copy of the kept cache (decode updates the GDN state in place)."""
        import copy

        if self._saved is None:
            raise RuntimeError("restore_context() needs a save_context() first")
        cache, self._last = self._saved
        self._cache = copy.deepcopy(cache)

    def _forward(self, ids: Any) -> Any:
        out = self._model(input_ids=ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: self._cache})
        self._cache = getattr(out, self._cache_kw)
        return out.logits[:, -1, :]  # [1, vocab]

    def _sync(self) -> None:
        if self._device.type == "cuda":
            import torch

            torch.cuda.synchronize(self._device)

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Run the prompt in one forward pass; return the argmax next token."""
        import torch

        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self._device)
        self._sync()
        t0 = time.perf_counter()
        with self._running():
            last = self._forward(ids)
            self._last = last.argmax(dim=-1, keepdim=True)
        self._sync()
        elapsed = time.perf_counter() - t0
        rows = last.float().cpu().numpy() if logits else None
        return StepResult(tokens=(int(self._last.item()),), elapsed_s=elapsed, logits=rows)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Greedy-decode `n` tokens, one forward step each (teacher-forced with `inputs`)."""
        import torch

        if self._last is None and inputs is None:
            raise RuntimeError("decode() needs a prefill() first")
        forced = None
        if inputs is not None:
            if len(inputs) != n:
                raise ValueError("len(inputs) must equal n")
            forced = torch.tensor(list(inputs), dtype=torch.long, device=self._device).view(n, 1, 1)
        toks, rows = [], []
        self._sync()
        t0 = time.perf_counter()
        with self._running():
            nxt = self._last
            for i in range(n):
                step_in = forced[i] if forced is not None else nxt
                last = self._forward(step_in)
                nxt = last.argmax(dim=-1, keepdim=True)
                toks.append(nxt)
                if logits:
                    rows.append(last.float())
            self._last = nxt
        self._sync()
        elapsed = time.perf_counter() - t0
        tokens = tuple(int(t) for t in torch.cat(toks).view(-1).tolist()) if toks else ()
        out_rows = torch.cat(rows).cpu().numpy() if logits and rows else None
        return StepResult(tokens=tokens, elapsed_s=elapsed, logits=out_rows)

    def info(self) -> dict[str, Any]:
        """dtype, device, attention, GDN and conv1d paths (fast kernels or pure-torch fallbacks) for meta.json."""
        from luce_bench.backends.hf_paths import fallback_warning, paths

        info = self.describe()
        info.update(
            dtype=self.dtype_name,
            device=str(getattr(self, "_device", "")),
            attn_implementation=getattr(getattr(self._model, "config", None), "_attn_implementation", None),
            sdpa_cudnn=self.sdpa_cudnn,
        )
        if self._model is not None:
            info.update(paths(self._model, self._recorder.fallbacks, self._device.type))
            info["setup"] = self.setup_text(info)
        if info.get("torch_fallbacks") and info.get("device", "").startswith("cuda"):  # the kernels are CUDA-only
            info["warning"] = fallback_warning(info["torch_fallbacks"])
        return info

    def setup_text(self, info: dict[str, Any]) -> str:
        """What this row measured, in one line for the report."""
        return (
            f"eager transformers {info.get('transformers')}: one Python forward per token over the dynamic hybrid "
            f"cache, no compile; GDN {info.get('gdn_path')}, conv1d {info.get('conv1d_path')}"
        )

    def close(self) -> None:
        """Release the model and restore transformers' log handler (if load got as far as replacing it)."""
        if self._hooked:
            from transformers.utils import logging as hf_logging

            hf_logging.get_logger("transformers").removeHandler(self._recorder)
            hf_logging.enable_default_handler()
            hf_logging.enable_progress_bar()
            self._hooked = False
        self._model = self._cache = self._last = self._saved = None


def _version_of(pkg: str) -> str | None:
    if importlib.util.find_spec(pkg) is None:
        return None
    try:
        from importlib.metadata import version

        return version({"fla": "fla-core", "causal_conv1d": "causal-conv1d"}.get(pkg, pkg))
    except Exception:
        return "installed"
