"""The bundled CUDA decode megakernel as a backend: one cooperative kernel launch per decode call (all steps).

Weights are repacked once at load into the kernel's streaming layout (see cuda/luce_mk.h): fused in_proj / qkv rows,
interleaved gate|up rows, (1 + w) norm weights, -exp(A_log). Prefill feeds the prompt token by token through the
same kernel (one launch for the whole prompt). torch is used only for device buffers, pointers and the stream.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from luce_bench.backends.base import Backend, ModelSpec, StepResult
from luce_bench.errors import UserError

if TYPE_CHECKING:
    from luce_bench.kernels.tune import Tune

_SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "intermediate_size",
    "vocab_size",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "linear_num_key_heads",
    "linear_num_value_heads",
    "linear_key_head_dim",
    "linear_value_head_dim",
    "linear_conv_kernel_dim",
    "layer_types",
    "rope_theta",
    "partial_rotary_factor",
    "rms_norm_eps",
    "tie_word_embeddings",
)


# The state a decode step reads and changes besides the KV cache: a depth test's context is these plus the position.
# KV rows below the position are never written again, and scratch, sync and the step tags keep running forward.
CONTEXT_BUFFERS = ("gdn_state", "conv_hist", "best", "last_token")


def _gpu_present() -> bool:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return pynvml.nvmlDeviceGetCount() > 0
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return Path("/dev/nvidia0").exists()


def shape_reason(cfg: Any) -> str | None:
    """Why `cfg` cannot run on the kernel (it is compiled for exactly the Qwen3.5-0.8B shapes), or None."""
    from luce_bench.model.spec import QWEN35_08B

    bad = [f for f in _SHAPE_FIELDS if getattr(cfg, f) != getattr(QWEN35_08B, f)]
    if not bad:
        return None
    return "the megakernel supports only the exact Qwen3.5-0.8B shapes; this model differs in " + ", ".join(bad)


def check_config(cfg: Any) -> None:
    """UserError unless `cfg` has exactly the Qwen3.5-0.8B shapes the kernel is compiled for."""
    reason = shape_reason(cfg)
    if reason:
        raise UserError(reason)


class MegakernelBackend(Backend):
    """Persistent decode megakernel (bf16 weights, f32 DeltaNet state, bf16 KV cache), greedy.

    Besides the Backend interface, the kernel tools (`luce-bench kernel bench/trace`, the GPU tests) use the public
    kernel entry: `from_state_dict` (weights already in memory, optional build options or a prebuilt library),
    `run_steps` (one launch, with debug flags and the timing trace), `launch`, `layout` and `trace_points`.
    """

    name = "megakernel"
    PREFILL_CHUNK = 512  # prompt steps per launch

    def __init__(
        self,
        max_seq: int = 4096,
        arch: str | None = None,
        options: dict[str, int] | None = None,
        lib_dir: Path | None = None,
        prefill: str | None = None,
        tune: Tune | None = None,
    ) -> None:
        """A backend to load later.

        `options`: kernel build options (default: $LUCE_BENCH_KERNEL_OPTIONS); `lib_dir`: a prebuilt library;
        `tune`: the kernel's run-time tuning (default: the measured values for this GPU, kernels/tune.py);
        `prefill`: "kernel" or "tokens" (default: $LUCE_BENCH_PREFILL, else "kernel"; see kernels/prefill.py).
        """
        from luce_bench.kernels.prefill import MODES, mode_from_env

        if prefill is not None and prefill not in MODES:
            raise UserError(f"prefill path {prefill!r}: expected one of {', '.join(MODES)}")
        self.prefill_mode = prefill or mode_from_env()
        self.prefill_used: str | None = None  # the path the last prefill took
        self.prompt_path: str | None = None  # the path the last prompt of 2 tokens or more took (meta.json)
        self.prefill_gemm: str | None = None  # what the kernel prefill's GEMMs run on (kernels/cublas.py attach)
        self.prefill_fallback: str | None = None  # why the last prefill took the token path while "kernel" was chosen
        self._kprefill: Any = None
        self._prefill_refused: str | None = None  # why this device cannot run the kernel prefill, once it said so
        self.max_seq = max_seq
        self.arch = arch
        self.options = options
        self.lib_dir = lib_dir
        self.tune = tune  # None until _open picks the device's (and None for a library without a tune)
        self._lib: Any = None
        self._abi = 0
        self._seq_grid = 0  # see reset()
        self._screened_steps = 0  # decode steps whose LM head was screened, since load
        self._rescored_rows = 0  # rows those steps recomputed from the bf16 head (lm_rescored() adds them up)
        self._build: Any = None
        self.layout: Any = None
        self.launch: Any = None
        self._pos = 0
        self._sync_count = 0
        self._step_count = 0  # steps run on the scratch since it was zeroed (epoch tags of exchanged activations)
        self._bufs: dict[str, Any] = {}
        self._saved: tuple[int, dict[str, Any]] | None = None  # (position, CONTEXT_BUFFERS copies)
        self._saved_overwritten = False  # KV rows below the kept position were written since save_context()
        self._timing_launch = False  # a debug-flag launch ran since the last reset(): the sequence is invalid

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """Why the kernel cannot run here: no torch, no nvcc, no GPU or one older than sm_80; None if it can."""
        if importlib.util.find_spec("torch") is None:
            return "torch is not installed (needed for device buffers)"
        from luce_bench.kernels.build import find_nvcc

        if find_nvcc() is None:
            return "nvcc not found (the megakernel is compiled on first use; install the CUDA toolkit)"
        if not _gpu_present():
            return "no CUDA GPU visible"
        from luce_bench.errors import UserError
        from luce_bench.kernels.build import detect_arch

        try:
            detect_arch()
        except UserError as exc:  # a GPU older than sm_80, or one whose arch nothing can tell
            return str(exc)
        return None

    @classmethod
    def model_reason(cls, model: ModelSpec) -> str | None:
        """Other shapes than Qwen3.5-0.8B's: the kernel is compiled for exactly those."""
        return shape_reason(model.config)

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """The kernel build facts for `luce-bench info` (never compiles)."""
        from luce_bench.kernels import build_info

        return {"kernel": build_info()}

    # ---------------------------------------------------------------- load
    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Build or find the library, then repack the model's weights onto the GPU (CUDA only)."""
        from luce_bench.model.weights import load_text_weights

        check_config(model.config)
        if device == "cpu":
            raise UserError("the megakernel backend runs on CUDA only (--device cuda)")
        self._open(device)
        self.load_state_dict(load_text_weights(model.path))

    @classmethod
    def from_state_dict(
        cls,
        sd: dict[str, Any],
        max_seq: int,
        device: str = "cuda",
        options: dict[str, int] | None = None,
        lib_dir: Path | None = None,
        tune: Tune | None = None,
    ) -> MegakernelBackend:
        """A loaded backend from HF-named CPU tensors of the 0.8B shapes (kernel tools and tests)."""
        be = cls(max_seq=max_seq, options=options, lib_dir=lib_dir, tune=tune)
        be._open(device)
        be.load_state_dict(sd)
        return be

    def _open(self, device: str) -> None:
        """Pick the CUDA device, build (or find) the library, load it and read its layout and launch sizes."""
        import torch

        from luce_bench.kernels import lib as klib
        from luce_bench.kernels.build import build, prebuilt
        from luce_bench.kernels.cublas import attach

        if not torch.cuda.is_available():
            raise UserError("megakernel backend: torch sees no CUDA GPU")
        self._device = torch.device("cuda" if device == "auto" else device)
        if self._device.index is None:  # torch.cuda.set_device() refuses a bare "cuda"
            self._device = torch.device("cuda", torch.cuda.current_device())
        self._device_kind = "cuda"
        torch.cuda.set_device(self._device)
        self._build = prebuilt(self.lib_dir) if self.lib_dir else build(self.arch, defines=self.options)
        self._lib = klib.load_library(self._build.lib)
        self.layout = klib.layout(self._lib)
        self.launch = klib.LuceMkLaunchInfo()
        klib.check(self._lib, self._lib.luce_mk_launch_info(self.launch), "launch info")
        self.prefill_gemm = attach(self._lib)
        from luce_bench.kernels.tune import TUNE_ENV, Tune, for_device, for_library

        abi = self._abi = int(self._lib.luce_mk_abi_version())
        gpu = torch.cuda.get_device_name(self._device)
        if abi < 9:  # a library from before the run-time tune runs its compiled values
            unasked = (None, Tune(), for_device(gpu))  # (kernel bench passes the GPU's own tune)
            asked = self.tune.as_dict() if self.tune not in unasked else os.environ.get(TUNE_ENV)
            if asked:
                raise UserError(
                    f"{self._build.lib}: ABI {abi} has no run-time tune "
                    f"(asked for {asked}); rebuild the kernel or drop the tune fields"
                )
            self.tune = None
        else:
            tune = self.tune if self.tune is not None else for_device(gpu)
            self.tune = for_library(tune, gpu, abi)  # (an older library lacks some fields)
        _ = self.grid  # a grid this GPU or library cannot launch is refused here, before any weights move
        self._check_abi12_fields()

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Repack HF-named CPU tensors into the kernel layout on the device and allocate the state buffers."""
        import torch

        from luce_bench.kernels.pack import pack_lm_screen, pack_small, pack_weights

        dev = self._device
        lay = self.layout
        self._bufs = {}
        b = self._bufs
        b["wblob"] = pack_weights(sd, lay, dev)
        b["sblob"] = pack_small(sd, lay).to(dev)
        b["embed"] = sd["model.embed_tokens.weight"].to(device=dev, dtype=torch.bfloat16).contiguous()
        if self._abi >= 10:  # the LM head's screening copy (None for a head with a non-finite weight, or a grid
            # whose blocks hold too many rows to use it)
            b["lm8"] = pack_lm_screen(b["embed"]) if self._grid_refuses_screen(self.launch.grid) is None else None
            b["lm_rescored"] = torch.zeros(self.launch.grid, dtype=torch.int32, device=dev)
        kv = self.max_seq * lay.kv_elems_per_pos
        b["kcache"] = torch.zeros(kv, dtype=torch.bfloat16, device=dev)
        b["vcache"] = torch.zeros(kv, dtype=torch.bfloat16, device=dev)
        b["gdn_state"] = torch.zeros(lay.gdn_state_floats, dtype=torch.float32, device=dev)
        b["conv_hist"] = torch.zeros(lay.conv_hist_floats, dtype=torch.float32, device=dev)
        b["scratch"] = torch.zeros(lay.scratch_floats, dtype=torch.float32, device=dev)
        b["sync"] = torch.zeros(32, dtype=torch.int32, device=dev)
        b["best"] = torch.zeros(2, dtype=torch.int64, device=dev)
        b["last_token"] = torch.zeros(1, dtype=torch.int32, device=dev)
        self._sync_count = 0
        self.reset()

    @property
    def grid(self) -> int:
        """Blocks per launch: the tune's `grid` (ABI 11) or one per SM (the library's launch info)."""
        asked = self.tune.grid if self.tune is not None else 0
        if not asked:
            return int(self.launch.grid)
        if self._abi < 11:
            raise UserError(
                f"kernel tune grid={asked}: {self._build.lib} is ABI {self._abi}, which launches one block per SM; "
                "rebuild the kernel or drop the grid"
            )
        if asked > self.launch.sm_count:
            raise UserError(
                f"kernel tune grid={asked}: this GPU has {self.launch.sm_count} SMs (one block per SM at most)"
            )
        return asked

    def _check_abi12_fields(self) -> None:
        """Refuse a tune with deep phases or pause_ready (ABI 12) for an older library, which would ignore them."""
        from luce_bench.kernels.tune import ABI12_FIELDS

        if self._abi >= 12 or self.tune is None:
            return
        for name, instead in ABI12_FIELDS.items():
            if value := getattr(self.tune, name):
                raise UserError(
                    f"kernel tune {name}={value}: {self._build.lib} is ABI {self._abi}, {instead}; rebuild the kernel "
                    f"or drop {name}"
                )

    # ---------------------------------------------------------------- run
    def reset(self) -> None:
        """Start a new sequence: zero the recurrent and conv states, argmax slots, scratch and barrier count."""
        # scratch too: its residual buffers receive split-K f32 reductions that expect zeroed targets (kept zeroed
        # by every complete launch; a fresh zero makes a sequence independent of an interrupted one). The barrier
        # counter too (no launch is in flight on this stream): a launch that ran but reported an error cannot leave
        # the host's count behind the device's for good
        for k in ("gdn_state", "conv_hist", "best", "scratch", "sync"):
            self._bufs[k].zero_()
        self._sync_count = 0
        self._step_count = 0  # the tags restart with the zeroed scratch
        self._seq_grid = 0  # the grid of this sequence's launches (0: none yet): the barrier counter grows by it
        self._pos = 0
        self._timing_launch = False

    def save_context(self) -> None:
        """Keep the position and device copies of CONTEXT_BUFFERS (~19 MB)."""
        self._saved = (self._pos, {k: self._bufs[k].clone() for k in CONTEXT_BUFFERS})
        self._saved_overwritten = False

    def restore_context(self) -> None:
        """Copy CONTEXT_BUFFERS back and return to the kept position.

        The KV rows below it are not copied: they must be unchanged since the save (a refusal otherwise).
        """
        if self._saved is None:
            raise RuntimeError("restore_context() needs a save_context() first")
        if self._saved_overwritten:
            raise RuntimeError(
                "restore_context(): KV cache rows below the kept position were written since save_context() "
                "(a reset and a new prompt); save the context again instead"
            )
        pos, bufs = self._saved
        for k, v in bufs.items():
            self._bufs[k].copy_(v)
        self._pos = pos

    def _check_room(self, n: int) -> None:
        if self._pos + n > self.max_seq:
            raise UserError(
                f"sequence of {self._pos + n} tokens exceeds the megakernel's KV cache "
                f"({self.max_seq}); construct the backend with a larger max_seq"
            )

    def _check_valid(self) -> None:
        if self._timing_launch:
            raise RuntimeError(
                "a timing launch (debug flags) left this sequence invalid (its barriers and waits were skipped); "
                "call reset() first"
            )

    def _writes_at(self, pos: int) -> None:
        """KV rows from `pos` on are about to be written: a kept context above it can no longer be restored."""
        if self._saved is not None and pos < self._saved[0]:
            self._saved_overwritten = True

    @property
    def device(self) -> Any:
        """The torch device the kernel runs on (after load)."""
        return self._device

    @property
    def trace_points(self) -> int:
        """Timestamps per step in a trace buffer (times the grid): luce_mk_trace_points()."""
        return int(self._lib.luce_mk_trace_points())

    def run_steps(
        self, n: int, inputs: Any = None, logits_first: int | None = None, debug_flags: int = 0, trace: Any = None
    ) -> tuple[Any, Any]:
        """One launch of n steps after the current sequence, not synchronised (time it with CUDA events).

        inputs: None (greedy) or an int32 device tensor [n] of forced input tokens (-1: the previous argmax).
        logits_first: None (no logits) or the first step whose logits are returned.
        debug_flags: luce_mk.h LuceMkDebugFlags bits (timing experiments; the results are invalid).
        trace: None or an int64 device tensor of n * trace_points * grid elements.
        Returns (out_tokens [n] int32, logits [n - logits_first, vocab] f32 or None), both on the device.
        """
        import torch

        from luce_bench.kernels.lib import LuceMkParams, check

        self._check_room(n)
        if not debug_flags:
            self._check_valid()
        grid = self.grid
        self._check_abi12_fields()  # (the tune may have changed since the library was opened)
        if self._seq_grid and grid != self._seq_grid:
            raise UserError(
                f"kernel tune grid: this sequence ran on {self._seq_grid} blocks and this launch asks for {grid}; "
                "call reset() before changing the grid"
            )
        self._writes_at(self._pos)
        b, dev = self._bufs, self._device
        out = torch.full((n,), -1, dtype=torch.int32, device=dev)  # poisoned: every step must write its token
        lg = None
        if logits_first is not None:  # poisoned so an unwritten logit shows as NaN
            lg = torch.full((n - logits_first, self.layout.vocab), float("nan"), dtype=torch.float32, device=dev)
        p = LuceMkParams()
        for k in (
            "wblob",
            "sblob",
            "embed",
            "kcache",
            "vcache",
            "gdn_state",
            "conv_hist",
            "scratch",
            "sync",
            "best",
            "last_token",
        ):
            setattr(p, k, b[k].data_ptr())
        p.in_tokens = inputs.data_ptr() if inputs is not None else None
        p.out_tokens = out.data_ptr()
        p.logits = lg.data_ptr() if lg is not None else None
        p.logits_first = logits_first or 0
        p.pos, p.n_steps, p.max_seq = self._pos, n, self.max_seq
        p.sync_base = self._sync_count & 0xFFFFFFFF
        p.step_base = self._step_count & 0xFFFFFFFF
        p.debug_flags = debug_flags
        if self.tune is not None:  # (None: a library from before ABI 9, which reads no tune)
            for k, _ in type(p.tune)._fields_:
                setattr(p.tune, k, getattr(self.tune, k))
        if self._abi >= 11:
            p.grid = grid
        if self._abi >= 12:
            p.deep_phases, p.inflight_deep = self.tune.deep_phases, self.tune.inflight_deep
            p.pause_ready = self.tune.pause_ready
        if self._abi >= 10:
            p.lm8 = b["lm8"].data_ptr() if b["lm8"] is not None else None
            p.lm_rescored = b["lm_rescored"].data_ptr()
            screened = b["lm8"] is not None and self.tune.lm_screen and self._grid_refuses_screen(grid) is None
            if screened and not debug_flags & 1:  # (NO_MATH: no rescoring)
                self._screened_steps += n if logits_first is None else logits_first
        if trace is not None:
            need = n * self.trace_points * grid
            if trace.numel() < need or trace.element_size() != 8:
                raise ValueError(f"trace buffer needs {need} 64-bit elements")
            p.trace = trace.data_ptr()
        stream = torch.cuda.current_stream(dev).cuda_stream
        check(self._lib, self._lib.luce_mk_decode(p, stream), "megakernel launch")
        self._seq_grid = grid
        if debug_flags:
            self._timing_launch = True
        if not debug_flags & 4:  # LUCE_MK_DEBUG_NO_BARRIERS: the device counter did not move
            self._sync_count += n * self.layout.syncs_per_step
        self._step_count += n  # every launch writes tags of these epochs, debug ones included
        self._pos += n
        return out, lg

    def _tokens(self, ids: Sequence[int]) -> Any:
        import torch

        return torch.tensor(list(ids), dtype=torch.int32, device=self._device)

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """Run the prompt: through the kernel prefill when chosen (at any position with ABI 7), else token by token.

        A one-token prompt is one decode step on either path: it gives the prefill's GEMMs nothing to batch, and the
        decode step reads the weights once as well, ~4x faster (cuda/NOTES.md, session 40). (A tg iteration does not
        come here: `generate` runs its seed step in the launch of its N steps.) A device
        whose shared memory per block the prefill's kernels do not fit (sm_86/89 today) takes the token path, with the
        reason in `prefill_fallback`, from its first prompt on.
        """
        ids = list(token_ids)
        if not ids:
            raise ValueError("empty prompt")
        self._check_room(len(ids))  # before any chunk runs: nothing half-prefilled
        self._check_valid()
        self.prefill_fallback = None
        if len(ids) == 1:
            return self._prefill_tokens(ids, logits)
        out = self._prefill_prompt(ids, logits)
        self.prompt_path = self.prefill_used
        return out

    def _prefill_prompt(self, ids: list[int], logits: bool) -> StepResult:
        """A prompt of 2 tokens or more on the chosen path, or on the token path with the reason it fell back."""
        from luce_bench.kernels.abi import error_codes
        from luce_bench.kernels.lib import LuceMkError, prefill_continues

        if self.prefill_mode == "kernel":
            if self._prefill_refused is not None:
                self.prefill_fallback = self._prefill_refused
            elif self._kernel_prefill() is None:
                self.prefill_fallback = "this megakernel library has no prefill (ABI < 6)"
            elif self._pos != 0 and not prefill_continues(self._lib):
                self.prefill_fallback = (
                    f"the prompt starts at position {self._pos} and this library's prefill starts at 0 (ABI 6)"
                )
            else:
                try:
                    self._kprefill.weights16(self._bufs["wblob"])
                except UserError as exc:  # (a weight beyond fp16's range): asked once, not at every prompt
                    self.prefill_fallback = self._prefill_refused = str(exc)
                else:
                    try:
                        return self._prefill_kernel(ids, logits)
                    except LuceMkError as exc:  # refused before any kernel ran: nothing to undo
                        if exc.code != error_codes()["PREFILL_SMEM"]:
                            raise
                        self.prefill_fallback = self._prefill_refused = str(exc)
        return self._prefill_tokens(ids, logits)

    def _kernel_prefill(self) -> Any:
        from luce_bench.kernels.lib import has_prefill
        from luce_bench.kernels.prefill import KernelPrefill

        if self._kprefill is None and has_prefill(self._lib):
            self._kprefill = KernelPrefill(self._lib, self._device)
        return self._kprefill

    def _prefill_kernel(self, ids: list[int], logits: bool) -> StepResult:
        import torch

        lg = torch.full((self.layout.vocab,), float("nan"), device=self._device) if logits else None
        tokens = self._tokens(ids)
        self._writes_at(self._pos)
        torch.cuda.synchronize(self._device)
        t0 = time.perf_counter()
        self._kprefill.run(self._bufs, tokens, self.max_seq, logits=lg, pos=self._pos)
        torch.cuda.synchronize(self._device)
        elapsed = time.perf_counter() - t0
        # the decode's argmax slots: step p combines into slot p % 2 and clears the other; a prefill of an odd length
        # after decode steps would leave the next step a slot holding an earlier step's argmax
        self._bufs["best"].zero_()
        self._pos += len(ids)
        self.prefill_used = "kernel"
        rows = lg[None].cpu().numpy() if lg is not None else None
        return StepResult(tokens=(int(self._bufs["last_token"].item()),), elapsed_s=elapsed, logits=rows)

    def prefill_hidden(self, token_ids: Sequence[int], n_layers: int) -> Any:
        """The residual stream [n, 1024] after the kernel prefill's first n_layers layers (a layer-by-layer check).

        The backend is reset before and after.
        """
        import torch

        if self._kernel_prefill() is None:
            raise UserError("this megakernel library has no prefill (ABI < 6)")
        self.reset()
        self._writes_at(0)
        hidden = torch.empty(len(token_ids), self.layout.hidden, dtype=torch.float32, device=self._device)
        self._kprefill.run(self._bufs, self._tokens(token_ids), self.max_seq, n_layers=n_layers, hidden=hidden)
        torch.cuda.synchronize(self._device)
        self.reset()
        return hidden

    def _prefill_tokens(self, ids: list[int], logits: bool) -> StepResult:
        import torch

        forced = self._tokens(ids)
        torch.cuda.synchronize(self._device)
        t0 = time.perf_counter()
        out = lg = None
        for s in range(0, len(ids), self.PREFILL_CHUNK):
            n = min(self.PREFILL_CHUNK, len(ids) - s)
            last = s + n == len(ids)
            out, lg = self.run_steps(n, forced[s : s + n], n - 1 if (logits and last) else None)
        torch.cuda.synchronize(self._device)
        elapsed = time.perf_counter() - t0
        self.prefill_used = "tokens"
        rows = lg.cpu().numpy() if lg is not None else None
        return StepResult(tokens=(int(out[-1].item()),), elapsed_s=elapsed, logits=rows)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """Greedy-decode n tokens in one launch (teacher-forced by `inputs` when given)."""
        if n < 1:
            return StepResult(tokens=(), elapsed_s=0.0)
        forced = None
        if inputs is not None:
            if len(inputs) != n:
                raise ValueError("len(inputs) must equal n")
            forced = self._tokens(inputs)
        elif self._pos == 0:
            raise RuntimeError("decode() needs a prefill() first")
        return self._timed_steps(n, forced, logits)

    def _timed_steps(self, n: int, forced: Any = None, logits: bool = False) -> StepResult:
        """One launch of n steps between two device synchronisations: their tokens, time and (optional) logits."""
        import torch

        torch.cuda.synchronize(self._device)
        t0 = time.perf_counter()
        out, lg = self.run_steps(n, forced, 0 if logits else None)
        torch.cuda.synchronize(self._device)
        elapsed = time.perf_counter() - t0
        return StepResult(
            tokens=tuple(int(t) for t in out.tolist()),
            elapsed_s=elapsed,
            logits=lg.cpu().numpy() if lg is not None else None,
        )

    def generate(self, seed: int, n: int) -> StepResult:
        """A new sequence's n greedy tokens from its seed token in one launch (Backend.generate's steps).

        Step 0 reads its input from the `last_token` slot, which holds `seed`; each later step feeds the previous
        argmax, as `prefill([seed])` then `decode(n - 1)` would in two launches (tests/gpu/test_megakernel.py).
        """
        self._check_generate_n(n)
        if self._pos != 0:
            raise RuntimeError("generate() starts a new sequence: call reset() first")
        if not 0 <= seed < self.layout.vocab:
            raise ValueError(f"seed token {seed} is outside the vocabulary (0..{self.layout.vocab - 1})")
        self._bufs["last_token"].fill_(seed)
        return self._timed_steps(n)

    def info(self) -> dict[str, Any]:
        """Kernel version (ABI, sources hash), library, build options, launch sizes and ptxas facts for meta.json."""
        from luce_bench.kernels.build import build_key, source_dir

        if self._build is None:
            return {}
        return {
            "abi_version": int(self._lib.luce_mk_abi_version()),
            "sources_sha256": build_key(source_dir(), [], ""),  # the kernel version: its sources alone, no flags
            "lib": str(self._build.lib),
            "archs": list(self._build.archs),
            "nvcc": self._build.nvcc_version,
            "grid": self.grid,
            "sm_count": self.launch.sm_count,
            "threads": self.launch.threads,
            "smem_bytes": self.launch.smem_bytes,
            "ring_slots": self.launch.ring_slots,
            "syncs_per_step": self.layout.syncs_per_step,
            "max_seq": self.max_seq,
            "options": self._build.options,  # None: a prebuilt library that does not record them
            "tune": self.tune.as_dict() if self.tune is not None else None,
            "prebuilt": str(self.lib_dir) if self.lib_dir else None,
            "prefill": self._prefill_info(),
            "lm_screen": self._lm_screen_info(),
            "lm_rescored_per_step": self._rescored_per_step(),
            "ptxas": [
                {"arch": r.arch, "registers": r.registers, "spill_stores": r.spill_stores, "spill_loads": r.spill_loads}
                for r in self._build.reports
            ],
        }

    @functools.cached_property
    def _lm8_max_rows(self) -> int:
        """The screen's bound array per block (luce_mk.h), read once: run_steps asks at every launch."""
        from luce_bench.kernels import abi

        return abi.lm_screen()["MAX_ROWS"]

    def _grid_refuses_screen(self, grid: int | None = None) -> str | None:
        """Why the blocks of `grid` (default: this launch's) hold too many LM-head rows for the screen, or None.

        The kernel makes the same test and then reads the bf16 head.
        """
        grid = grid or self.grid
        most = self._lm8_max_rows
        if -(-self.layout.vocab // grid) > most:
            return f"grid of {grid} blocks: more than {most} LM-head rows per block"
        return None

    def _lm_screen_info(self) -> str:
        """Whether greedy steps' LM head is screened on the int8 copy (cuda/mk_lm_head.cuh), or why not."""
        if self._abi < 10:
            return f"no (ABI {self._abi} library)"
        if self.tune is not None and not self.tune.lm_screen:
            return "no (tune lm_screen=0)"
        if why := self._grid_refuses_screen():
            return f"no ({why})"
        if not self._bufs:
            return "not loaded"
        if self._bufs.get("lm8") is None:
            return "no (the LM head holds a non-finite weight)"
        return "yes"

    def lm_rescored(self) -> int | None:
        """LM-head rows recomputed from the bf16 head by screened steps since the last call (all blocks).

        None when this library has no screen. Synchronises the device.
        """
        buf = self._bufs.get("lm_rescored")
        if buf is None:
            return None
        n = int(buf.sum().item())
        buf.zero_()
        self._rescored_rows += n
        return n

    def _rescored_per_step(self) -> float | None:
        """Rows recomputed per screened step since load (how well the screen prunes on this model), or None."""
        if not self._screened_steps or self.lm_rescored() is None:
            return None
        return self._rescored_rows / self._screened_steps

    def _prefill_info(self) -> dict[str, Any]:
        """Which prompt path was chosen and last ran; for the kernel prefill, its launches and CUDA graph use.

        "last_used" is the last prompt's of 2 tokens or more: one-token prompts are decode steps on every path.
        """
        out: dict[str, Any] = {
            "chosen": self.prefill_mode,
            "last_used": self.prompt_path,
            "one_token_prompts": "decode step",
            "gemm": self.prefill_gemm,
        }
        if self.prefill_fallback:
            out["fallback_reason"] = self.prefill_fallback
        kp = self._kprefill
        if kp is not None:
            out["launches_per_prefill"] = kp.launches(max(1, self._pos))
            out["cuda_graph"] = kp.graph and kp.graph_error is None
            if kp.graph_error:
                out["cuda_graph_error"] = kp.graph_error
        return out

    def close(self) -> None:
        """Free the device buffers."""
        self._bufs = {}
        self._saved = None
