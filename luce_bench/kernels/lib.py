"""ctypes binding of `cuda/luce_mk.h`: structs, argtypes, and loading a built library (no torch needed)."""

from __future__ import annotations

import ctypes
from pathlib import Path

from luce_bench.errors import UserError

ABI_VERSION = 12
# 4: the decode only (libraries built before the prefill, e.g. for side-by-side benchmarks); 6: + the prefill from
# position 0; 7: + the prefill at any position (LuceMkPrefillParams.pos, appended: ABI 6 libraries ignore it);
# 8: + the prefill's GEMMs through cuBLAS (kernels/cublas.py); 9: + LuceMkParams.tune (appended: older libraries
# ignore it and run their compiled tuning); 10: + the screened LM head (LuceMkTune.lm_screen, LuceMkParams.lm8 and
# .lm_rescored, appended); 11: + LuceMkParams.grid (blocks per launch, appended: kernels/tune.py's `grid`); 12: +
# LuceMkParams.deep_phases, .inflight_deep and .pause_ready (appended: kernels/tune.py's fields of the same names)
DECODE_ABIS = (4, 6, 7, 8, 9, 10, 11, 12)
PREFILL_SYMBOLS = ("luce_mk_prefill", "luce_mk_prefill_workspace", "luce_mk_prefill_launches")
SYMBOLS = (
    "luce_mk_abi_version",
    "luce_mk_get_layout",
    "luce_mk_launch_info",
    "luce_mk_decode",
    "luce_mk_error_string",
    "luce_mk_trace_points",
)

_p = ctypes.c_void_p


class LuceMkTune(ctypes.Structure):
    """Mirror of `LuceMkTune` (kernels/tune.py chooses the values; its `grid` goes to LuceMkParams.grid)."""

    _fields_ = [
        ("inflight", ctypes.c_int),
        ("inflight_lm", ctypes.c_int),
        ("pause_mask", ctypes.c_int),
        ("spin_sleep_ns", ctypes.c_int),
        ("lm_screen", ctypes.c_int),
    ]


class LuceMkParams(ctypes.Structure):
    """Mirror of `LuceMkParams` (field order and types must match luce_mk.h)."""

    _fields_ = [
        ("wblob", _p),
        ("sblob", _p),
        ("embed", _p),
        ("kcache", _p),
        ("vcache", _p),
        ("gdn_state", _p),
        ("conv_hist", _p),
        ("scratch", _p),
        ("sync", _p),
        ("best", _p),
        ("last_token", _p),
        ("in_tokens", _p),
        ("out_tokens", _p),
        ("logits", _p),
        ("logits_first", ctypes.c_int),
        ("pos", ctypes.c_int),
        ("n_steps", ctypes.c_int),
        ("max_seq", ctypes.c_int),
        ("sync_base", ctypes.c_uint),
        ("step_base", ctypes.c_uint),
        ("debug_flags", ctypes.c_int),
        ("trace", _p),
        ("tune", LuceMkTune),
        ("lm8", _p),
        ("lm_rescored", _p),
        ("grid", ctypes.c_int),
        ("deep_phases", ctypes.c_int),
        ("inflight_deep", ctypes.c_int),
        ("pause_ready", ctypes.c_int),
    ]


class LuceMkPrefillParams(ctypes.Structure):
    """Mirror of `LuceMkPrefillParams`."""

    _fields_ = [
        ("wblob16", _p),
        ("sblob", _p),
        ("embed", _p),
        ("kcache", _p),
        ("vcache", _p),
        ("gdn_state", _p),
        ("conv_hist", _p),
        ("last_token", _p),
        ("tokens", _p),
        ("n_tokens", ctypes.c_int),
        ("max_seq", ctypes.c_int),
        ("workspace", _p),
        ("logits", _p),
        ("n_layers", ctypes.c_int),
        ("hidden", _p),
        ("pos", ctypes.c_int),
    ]


class LuceMkLayout(ctypes.Structure):
    """Mirror of `LuceMkLayout`."""

    _fields_ = [
        ("wblob_elems", ctypes.c_int64),
        ("layer_woff", ctypes.c_int64 * 24),
        ("sblob_floats", ctypes.c_int64),
        ("sp_stride", ctypes.c_int64),
        ("scratch_floats", ctypes.c_int64),
        ("gdn_state_floats", ctypes.c_int64),
        ("conv_hist_floats", ctypes.c_int64),
        ("kv_elems_per_pos", ctypes.c_int64),
        ("syncs_per_step", ctypes.c_int),
        ("vocab", ctypes.c_int),
        ("hidden", ctypes.c_int),
        ("gdn_out_transposed", ctypes.c_int),
    ]


class LuceMkLaunchInfo(ctypes.Structure):
    """Mirror of `LuceMkLaunchInfo`."""

    _fields_ = [
        ("grid", ctypes.c_int),
        ("threads", ctypes.c_int),
        ("smem_bytes", ctypes.c_int),
        ("ring_slots", ctypes.c_int),
        ("sm_count", ctypes.c_int),
        ("occupancy", ctypes.c_int),
    ]


def load_library(path: Path) -> ctypes.CDLL:
    """Dlopen the library, set argtypes/restypes and check the ABI version."""
    try:
        lib = ctypes.CDLL(str(path))
    except OSError as exc:
        raise UserError(f"cannot load megakernel library {path}: {exc}") from exc
    lib.luce_mk_trace_points.argtypes = []
    lib.luce_mk_trace_points.restype = ctypes.c_int
    lib.luce_mk_abi_version.argtypes = []
    lib.luce_mk_abi_version.restype = ctypes.c_int
    lib.luce_mk_get_layout.argtypes = [ctypes.POINTER(LuceMkLayout)]
    lib.luce_mk_get_layout.restype = None
    lib.luce_mk_launch_info.argtypes = [ctypes.POINTER(LuceMkLaunchInfo)]
    lib.luce_mk_launch_info.restype = ctypes.c_int
    lib.luce_mk_decode.argtypes = [ctypes.POINTER(LuceMkParams), ctypes.c_void_p]
    lib.luce_mk_decode.restype = ctypes.c_int
    lib.luce_mk_error_string.argtypes = [ctypes.c_int]
    lib.luce_mk_error_string.restype = ctypes.c_char_p
    abi = lib.luce_mk_abi_version()
    if abi not in DECODE_ABIS:
        raise UserError(f"{path}: ABI version {abi}, this luce-bench reads {DECODE_ABIS}; rebuild the kernel")
    if abi >= 6:
        lib.luce_mk_prefill_workspace.argtypes = [ctypes.c_int]
        lib.luce_mk_prefill_workspace.restype = ctypes.c_int64
        lib.luce_mk_prefill.argtypes = [ctypes.POINTER(LuceMkPrefillParams), ctypes.c_void_p]
        lib.luce_mk_prefill.restype = ctypes.c_int
        lib.luce_mk_prefill_launches.argtypes = [ctypes.c_int]
        lib.luce_mk_prefill_launches.restype = ctypes.c_int
    if abi >= 8:
        lib.luce_mk_prefill_gemm_option.argtypes = []
        lib.luce_mk_prefill_gemm_option.restype = ctypes.c_int
        lib.luce_mk_prefill_cublas.argtypes = [ctypes.c_char_p]
        lib.luce_mk_prefill_cublas.restype = ctypes.c_int
        lib.luce_mk_prefill_cublas_version.argtypes = []
        lib.luce_mk_prefill_cublas_version.restype = ctypes.c_int
    return lib


def has_prefill(lib: ctypes.CDLL) -> bool:
    """The library has the prefill entry points (ABI 6 and later)."""
    return lib.luce_mk_abi_version() >= 6


def prefill_continues(lib: ctypes.CDLL) -> bool:
    """The library's prefill can start at a position > 0, continuing the cached ones (ABI 7 and later)."""
    return lib.luce_mk_abi_version() >= 7


def layout(lib: ctypes.CDLL) -> LuceMkLayout:
    """Buffer sizes and weight offsets of the compiled kernel."""
    out = LuceMkLayout()
    lib.luce_mk_get_layout(ctypes.byref(out))
    return out


class LuceMkError(RuntimeError):
    """A luce_mk call failed; `code` is its return code (luce_mk.h's LUCE_MK_ERR_*, or a cudaError_t)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def check(lib: ctypes.CDLL, rc: int, what: str) -> None:
    """Raise a LuceMkError naming the CUDA / luce_mk error if rc != 0."""
    if rc != 0:
        raise LuceMkError(f"{what}: {lib.luce_mk_error_string(rc).decode()} (code {rc})", rc)
