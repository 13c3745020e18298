"""llama.cpp baseline through llama-cpp-python's C API, on raw token ids (no tokenizer) and a GGUF of the same weights.

Timing follows llama-bench: a prompt goes in `n_batch` chunks of `llama_decode`, decode is one token per `llama_decode`,
and every timed call ends with `llama_synchronize`. The synchronize after each decode step also keeps llama.cpp's own
counters honest: it attributes queued work at the next synchronize, so two unsynchronised single-token decodes would be
booked as prompt evaluation (`qwen35.md` §4.7). The next token is the argmax of the last position's logits.

A CPU-only llama.cpp on a machine with an NVIDIA GPU is refused unless `allow_cpu=True` (or device "cpu"): silently
comparing a CPU llama.cpp with GPU engines would be a defect.

Known hazard (H100, llama-cpp-python 0.3.36 CUDA build, torch 2.11+cu130): CUDA llama_cpp loaded into a process that had
already imported torch crashed: with pynvml initialised, a segfault inside `llama_model_load_from_file`; without pynvml,
the benchmark ran but a later `import torch.nn` aborted with "free(): invalid pointer". Run this backend in a process of
its own (no torch, NVML read elsewhere) for GPU measurements.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.backends.base import Backend, BackendUnavailable, ModelSpec, StepResult, UnavailableAndBadInput
from luce_bench.errors import UserError

# Vendored llama.cpp commit of llama-cpp-python releases (read from the sdist's git submodule), used when the build
# itself does not know its commit (a build from a tree without .git reports "unknown").
KNOWN_COMMITS = {"0.3.36": "0c1e57098"}
BUILD_MARKER = "_luce_build.json"  # written into the package by scripts/build-llamacpp-cuda.sh
CUDA_RECIPE = "scripts/build-llamacpp-cuda.sh"

_log_lines: list[str] = []
_log_state: dict[str, Any] = {"cb": None, "echo": False}


class CpuBuildOnGpuHost(UnavailableAndBadInput):
    """A CPU-only llama.cpp was about to run on a machine that has an NVIDIA GPU."""


class CudaBuildWithoutGpu(UnavailableAndBadInput):
    """A CUDA llama.cpp was about to load a model where it sees no GPU (it segfaults there, even for the CPU)."""


def _install_log_capture(echo: bool) -> None:
    """Route llama.cpp's log into `_log_lines` (and stderr if `echo`); the callback must stay referenced."""
    import llama_cpp

    _log_state["echo"] = echo
    if _log_state["cb"] is None:

        def _cb(level: int, text: bytes, _user: Any) -> None:
            line = text.decode("utf-8", "replace")
            _log_lines.append(line)
            del _log_lines[:-2000]
            if _log_state["echo"]:
                sys.stderr.write(line)

        _log_state["cb"] = llama_cpp.llama_log_callback(_cb)
        llama_cpp.llama_log_set(_log_state["cb"], None)


HIDING = ("", "-1")  # CUDA_VISIBLE_DEVICES values that hide every GPU


def nvidia_gpu_present() -> bool:
    """True if an NVIDIA GPU is visible to this process (driver's /proc entry; honours CUDA_VISIBLE_DEVICES="")."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in HIDING:
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return gpus.is_dir() and any(gpus.iterdir())


def cuda_build_files() -> bool | None:
    """Whether the installed llama.cpp libraries include the CUDA backend, told from the files alone (no import).

    None when they cannot tell (no library folder found). The folder is the one llama-cpp-python loads from:
    LLAMA_CPP_LIB_PATH if set, else the package's lib/ (a wheel's layout).
    """
    spec = importlib.util.find_spec("llama_cpp")
    dirs = [Path(os.environ["LLAMA_CPP_LIB_PATH"])] if os.environ.get("LLAMA_CPP_LIB_PATH") else []
    dirs += [Path(where) / "lib" for where in (spec.submodule_search_locations or [])] if spec else []
    for lib in dirs:
        if lib.is_dir() and any(lib.glob("*llama.*")):  # libllama.so, llama.dll
            return any(lib.glob("*ggml-cuda*"))
    return None


def cuda_build() -> bool:
    """Whether the installed llama-cpp-python has llama.cpp's CUDA backend, whether or not it sees a GPU now.

    `llama_supports_gpu_offload()` says whether a GPU device is registered, which a CUDA build answers False where
    CUDA_VISIBLE_DEVICES hides every GPU; the system info lists the backends built in, and the files say what was
    installed. Loads llama.cpp: call it where llama.cpp is to run (the child process), not in a torch process.
    """
    import llama_cpp

    return _cuda_in(_system_info(llama_cpp), bool(llama_cpp.llama_supports_gpu_offload()))


def _system_info(llama_cpp: Any) -> str:
    return (llama_cpp.llama_print_system_info() or b"").decode("utf-8", "replace").strip()


def _cuda_in(system_info: str, offload: bool) -> bool:
    """cuda_build() from what the loaded library says (its backends, whether it offloads) and the installed files."""
    return "CUDA" in system_info or offload or bool(cuda_build_files())


def no_gpu_for_the_cuda_build() -> str:
    """Why a CUDA llama.cpp cannot run in this process: it sees no GPU (and would crash loading even on the CPU)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible in HIDING:
        why = f"CUDA_VISIBLE_DEVICES={visible!r} hides the GPUs"
    elif visible is not None:
        why = f"CUDA_VISIBLE_DEVICES={visible!r} names no GPU it can use"
    elif nvidia_gpu_present():
        why = "none usable, though the driver lists one: a driver older than the build's CUDA?"
    else:
        why = "no NVIDIA driver or GPU here"
    return (
        f"this llama-cpp-python is a CUDA build and sees no GPU ({why}); a CUDA build cannot load a model without "
        "one, not even on the CPU (llama.cpp crashes): make a GPU visible, or install a CPU build of llama-cpp-python"
    )


def build_info() -> dict[str, Any]:
    """Which llama-cpp-python / llama.cpp build is installed: version, commit, CUDA or CPU, system info."""
    import llama_cpp

    commit = "unknown"
    marker: dict[str, Any] = {}
    path = Path(llama_cpp.__file__).with_name(BUILD_MARKER)
    if path.is_file():
        marker = json.loads(path.read_text())
        commit = marker.get("llama_cpp_commit", commit)
    if commit == "unknown":
        try:
            fn = llama_cpp.llama_cpp._lib.ggml_commit  # exported by libggml-base, reachable through libllama
            fn.restype = __import__("ctypes").c_char_p
            commit = (fn() or b"unknown").decode()
        except (AttributeError, OSError):
            pass
    if commit in ("unknown", "") or commit.startswith("unknown"):
        commit = KNOWN_COMMITS.get(llama_cpp.__version__, "unknown")
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    system = _system_info(llama_cpp)
    return {
        "llama_cpp_python": llama_cpp.__version__,
        "build_commit": commit,
        "build": "cuda" if _cuda_in(system, offload) else "cpu",
        "gpu_offload": offload,
        "system_info": system,
        "build_recipe": marker.get("recipe"),
        "cuda_arch": marker.get("cuda_arch"),
    }


class LlamaCppBackend(Backend):
    """llama.cpp on a BF16 (default), F16 or Q8_0 GGUF exported from the checkpoint under test."""

    name = "llamacpp"
    # The CUDA build crashed in a process that had imported torch (module docstring): run it in a child process.
    isolate = True

    @classmethod
    def prepare(cls, model: ModelSpec, gguf_type: str = "bf16", **_: Any) -> None:
        """Parent-side: export (or find) the GGUF, which needs torch, before the torch-free child loads it."""
        from luce_bench.gguf_export import ensure_gguf

        ensure_gguf(model.path, model.config, gguf_type)

    @classmethod
    def check_model(cls, model: ModelSpec, gguf_type: str = "bf16", **_: Any) -> None:
        """Refuse a cached GGUF export of `model` that is truncated or malformed (it is not re-exported silently)."""
        from luce_bench.gguf_export import cached_gguf
        from luce_bench.model.gguf_check import check_gguf

        path = cached_gguf(model.path, gguf_type)
        if path is not None:
            check_gguf(path)

    def __init__(
        self,
        flash_attn: bool = True,
        n_ctx: int | None = None,
        n_batch: int = 2048,
        n_ubatch: int = 512,
        n_threads: int | None = None,
        gguf_type: str = "bf16",
        allow_cpu: bool = False,
        verbose: bool = False,
    ) -> None:
        self.flash_attn = flash_attn
        self.n_ctx = n_ctx or 4096
        self.n_batch = n_batch
        self.n_ubatch = min(n_ubatch, n_batch)
        self.n_threads = n_threads or os.cpu_count() or 1
        self.gguf_type = gguf_type
        self.allow_cpu = allow_cpu
        self.verbose = verbose
        self._model: Any = None
        self._ctx: Any = None
        self._batch: Any = None
        self._n_past = 0
        self._last: int | None = None
        self._saved: tuple[Any, int, int | None] | None = None  # (sequence state, n_past, last) of a depth context
        self._info: dict[str, Any] = {}

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why llamacpp cannot run here (llama_cpp, diskcache or gguf missing; a CUDA build seeing no GPU), or None."""
        for pkg, hint in (
            ("llama_cpp", "pip install llama-cpp-python (CPU) or " + CUDA_RECIPE + " (CUDA)"),
            ("diskcache", "pip install diskcache (llama-cpp-python imports it)"),
            ("gguf", "pip install gguf"),
        ):
            if importlib.util.find_spec(pkg) is None:
                return f"{pkg} is not installed ({hint})"
        if os.environ.get("CUDA_VISIBLE_DEVICES") in HIDING and cuda_build_files():
            return no_gpu_for_the_cuda_build()  # other cases are told by load(), where llama.cpp itself is asked
        return None

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The installed build (version, commit, cuda/cpu, system info); warns of a CPU build on a GPU host."""
        reason = cls.unavailable_reason()
        if reason:
            return {"available": False, "reason": reason}
        info = build_info()
        if info["build"] == "cpu" and nvidia_gpu_present():
            info["warning"] = f"CPU-only llama.cpp on a GPU machine: build the CUDA one with {CUDA_RECIPE}"
        return info

    def _choose_device(self, device: str, offload: bool) -> tuple[str, int]:
        """(device kind, main GPU index) for `device`; refuses a CPU build on a GPU machine unless allowed."""
        if device == "cpu":
            return "cpu", 0
        if device.startswith("cuda"):
            if not offload:
                raise BackendUnavailable(
                    f"device {device} (--device, or `device:` in the config) but this llama-cpp-python build has no "
                    f"GPU support (build it with {CUDA_RECIPE})"
                )
            return "cuda", int(device.split(":")[1]) if ":" in device else 0
        if device != "auto":
            raise UserError(f"llamacpp: unknown device {device!r} (auto, cpu, cuda, cuda:N)")
        if offload:
            return "cuda", 0
        if nvidia_gpu_present() and not self.allow_cpu:
            raise CpuBuildOnGpuHost(
                "llamacpp: this llama-cpp-python is a CPU-only build but an NVIDIA GPU is present; "
                f"build the CUDA one with {CUDA_RECIPE}, or allow CPU explicitly"
            )
        return "cpu", 0

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Export (or reuse) the GGUF, load it fully on the GPU (CUDA build) or the CPU, create the context."""
        import llama_cpp as lc

        from luce_bench.gguf_export import ensure_gguf

        _install_log_capture(self.verbose)
        lc.llama_backend_init()
        offload = bool(lc.llama_supports_gpu_offload())
        if not offload and cuda_build():
            raise CudaBuildWithoutGpu(f"llamacpp: {no_gpu_for_the_cuda_build()}")
        kind, main_gpu = self._choose_device(device, offload)
        path = ensure_gguf(model.path, model.config, self.gguf_type)
        mark = len(_log_lines)
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = -1 if kind == "cuda" else 0
        mp.main_gpu = main_gpu
        self._model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self._model:
            raise RuntimeError(f"llama.cpp could not load {path}: {''.join(_log_lines[mark:])[-500:]}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = self.n_ctx
        cp.n_batch = self.n_batch
        cp.n_ubatch = self.n_ubatch
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = self.n_threads
        cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.no_perf = False
        self._ctx = lc.llama_init_from_model(self._model, cp)
        if not self._ctx:
            raise RuntimeError(f"llama.cpp could not create a context: {''.join(_log_lines[mark:])[-500:]}")
        self._n_vocab = lc.llama_vocab_n_tokens(lc.llama_model_get_vocab(self._model))
        self._ctx_len = int(lc.llama_n_ctx(self._ctx))  # llama.cpp may round the requested n_ctx up
        self._init_batch(lc)
        self._device_kind = kind
        load_log = "".join(_log_lines[mark:])
        offloaded = [ln.strip() for ln in load_log.splitlines() if "offloaded" in ln and "layers to GPU" in ln]
        self._info = {
            **build_info(),
            "gguf": str(path),
            "gguf_type": self.gguf_type,
            "gguf_bytes": path.stat().st_size,
            "device": kind,
            "n_gpu_layers": mp.n_gpu_layers,
            "offloaded": offloaded[-1] if offloaded else None,
            "flash_attn": self.flash_attn,
            "n_ctx": self._ctx_len,
            "n_batch": self.n_batch,
            "n_ubatch": self.n_ubatch,
            "n_threads": self.n_threads,
            "model_params": int(lc.llama_model_n_params(self._model)),
            "model_bytes": int(lc.llama_model_size(self._model)),
            "timing": "llama_decode per n_batch chunk / per token, llama_synchronize before the clock stops",
            # On the H100, CUDA llama_cpp in a process that had imported torch crashed (with pynvml initialised:
            # segfault in model load; without: heap corruption later). Recorded so a crash can be traced.
            "same_process": sorted(m for m in ("torch", "pynvml", "transformers") if m in sys.modules),
        }
        self.reset()

    def _init_batch(self, lc: Any) -> None:
        import numpy as np

        self._batch = lc.llama_batch_init(self.n_batch, 0, 1)
        b = self._batch
        for j in range(self.n_batch):  # one sequence (id 0) for every slot, set once
            b.n_seq_id[j] = 1
            b.seq_id[j][0] = 0
        self._tok = np.ctypeslib.as_array(b.token, shape=(self.n_batch,))
        self._pos = np.ctypeslib.as_array(b.pos, shape=(self.n_batch,))
        self._out = np.ctypeslib.as_array(b.logits, shape=(self.n_batch,))

    def reset(self) -> None:
        """Clear the KV cache and recurrent state, and llama.cpp's perf counters."""
        import llama_cpp as lc

        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        lc.llama_perf_context_reset(self._ctx)
        self._n_past = 0
        self._last = None

    def save_context(self) -> None:
        """Copy sequence 0's state (KV cache and recurrent state) to host memory, as llama-bench does for `-d`."""
        import ctypes

        import llama_cpp as lc

        lc.llama_synchronize(self._ctx)
        size = lc.llama_state_seq_get_size(self._ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        if lc.llama_state_seq_get_data(self._ctx, buf, size, 0) != size:
            raise RuntimeError(f"llama_state_seq_get_data did not copy the {size}-byte sequence state")
        self._saved = (buf, self._n_past, self._last)

    def restore_context(self) -> None:
        """Clear the memory and load the kept sequence state back."""
        import llama_cpp as lc

        if self._saved is None:
            raise RuntimeError("restore_context() needs a save_context() first")
        buf, n_past, last = self._saved
        lc.llama_memory_clear(lc.llama_get_memory(self._ctx), True)
        if lc.llama_state_seq_set_data(self._ctx, buf, len(buf), 0) == 0:
            raise RuntimeError("llama_state_seq_set_data could not load the kept sequence state")
        self._n_past, self._last = n_past, last

    def _decode_chunk(self, lc: Any, ids: Any) -> None:
        """Queue one `llama_decode` of `ids` (≤ n_batch) at the current position, logits for its last token."""
        import numpy as np

        n = len(ids)
        self._tok[:n] = ids
        self._pos[:n] = np.arange(self._n_past, self._n_past + n, dtype=np.int32)
        self._out[:n] = 0
        self._out[n - 1] = 1
        self._batch.n_tokens = n
        rc = lc.llama_decode(self._ctx, self._batch)
        if rc != 0:
            raise RuntimeError(f"llama_decode returned {rc} at position {self._n_past}")
        self._n_past += n

    def _last_logits(self, lc: Any) -> Any:
        import numpy as np

        return np.ctypeslib.as_array(lc.llama_get_logits_ith(self._ctx, -1), shape=(self._n_vocab,))

    def _check_room(self, n: int) -> None:
        if self._n_past + n > self._ctx_len:
            raise UserError(f"llamacpp: {self._n_past} + {n} tokens exceed n_ctx={self._ctx_len}; pass a larger n_ctx")

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Evaluate the prompt in n_batch chunks, synchronise, return the argmax next token."""
        import llama_cpp as lc
        import numpy as np

        ids = np.asarray(list(token_ids), dtype=np.int32)
        if ids.size == 0:
            raise ValueError("prefill() needs at least one token")
        self._check_room(ids.size)
        ctx = self._ctx
        lc.llama_synchronize(ctx)
        t0 = time.perf_counter()
        for s in range(0, ids.size, self.n_batch):
            self._decode_chunk(lc, ids[s : s + self.n_batch])
        lc.llama_synchronize(ctx)
        row = self._last_logits(lc)
        self._last = int(row.argmax())
        elapsed = time.perf_counter() - t0
        return StepResult(tokens=(self._last,), elapsed_s=elapsed, logits=row[None, :].copy() if logits else None)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Greedy-decode n tokens, one llama_decode + llama_synchronize each (teacher-forced with `inputs`)."""
        import llama_cpp as lc
        import numpy as np

        if inputs is not None and len(inputs) != n:
            raise ValueError("len(inputs) must equal n")
        if self._last is None and inputs is None:
            raise RuntimeError("decode() needs a prefill() first")
        self._check_room(n)
        forced = [int(t) for t in inputs] if inputs is not None else None
        rows = np.empty((n, self._n_vocab), dtype=np.float32) if logits else None
        toks: list[int] = []
        ctx, one = self._ctx, np.empty(1, dtype=np.int32)
        lc.llama_synchronize(ctx)
        t0 = time.perf_counter()
        nxt = self._last
        for i in range(n):
            one[0] = forced[i] if forced is not None else nxt
            self._decode_chunk(lc, one)
            lc.llama_synchronize(ctx)  # one token per sync: booked as decode, and the clock sees finished work
            row = self._last_logits(lc)
            nxt = int(row.argmax())
            toks.append(nxt)
            if rows is not None:
                rows[i] = row
        elapsed = time.perf_counter() - t0
        self._last = nxt
        return StepResult(tokens=tuple(toks), elapsed_s=elapsed, logits=rows)

    def perf(self) -> dict[str, float]:
        """llama.cpp's own counters since the last reset: prompt and decode token counts and milliseconds."""
        import llama_cpp as lc

        d = lc.llama_perf_context(self._ctx)
        return {"n_p_eval": d.n_p_eval, "t_p_eval_ms": d.t_p_eval_ms, "n_eval": d.n_eval, "t_eval_ms": d.t_eval_ms}

    def info(self) -> dict[str, Any]:
        """Build and run settings for meta.json (build_commit, build, gguf, flash_attn, n_ctx, offload, ...)."""
        return dict(self._info)

    def close(self) -> None:
        """Free the batch, context and model."""
        import llama_cpp as lc

        if self._batch is not None:
            lc.llama_batch_free(self._batch)
            self._batch = None
        self._saved = None
        if self._ctx:
            lc.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            lc.llama_model_free(self._model)
            self._model = None
