"""Which code a transformers Qwen3.5 model runs: GDN and conv1d kernels, the cache argument, a CUDA build of torch.

transformers (5.17 to 5.25 at least) binds each GDN helper of `modeling_qwen3_5` once, at import, to the fast package
when it imports (flash-linear-attention: `fla`, causal-conv1d) and to its own pure-torch reference otherwise
(`use_kernel_func_from_hub_with_fallback` keeps both in the wrapper's closure). With the `kernels` package installed
(a dependency of transformers 5.25) the helper is a small `nn.Module` whose forward calls that wrapper. Reading that
binding tells the path without running the model; the "falling back" warning it logs is a `warning_once` and so
appears only for the first model of a process (the eager and the compiled HF backends share one process in
`compare`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

# modeling function -> what it computes
GDN_FUNCTIONS = {
    "torch_chunk_gated_delta_rule": "chunk_gated_delta_rule",  # prefill
    "torch_recurrent_gated_delta_rule": "fused_recurrent_gated_delta_rule",  # one-token decode
}
CONV_FUNCTIONS = {"causal_conv1d_fn": "causal_conv1d_fn", "causal_conv1d_update": "causal_conv1d_update"}

FLA = "fla kernels"
CAUSAL_CONV1D = "causal-conv1d kernels"
FALLBACK = "pure-torch fallback"


def _fallback_wrapper(fn: Any) -> Any:
    """The plain function behind a GDN helper: `fn` itself, or the one a `kernels` Func module's forward calls.

    None if it is neither.
    """
    if inspect.isfunction(fn):
        return fn
    forward = getattr(type(fn), "forward", None)
    inner = inspect.getclosurevars(forward).nonlocals.get("func") if inspect.isfunction(forward) else None
    return inner if inspect.isfunction(inner) else None


def bound_kernels(model: Any) -> dict[str, str] | None:
    """{kernel: module of the implementation bound to it} of `model`'s GDN helpers; None if transformers hides it.

    A kernel on its pure-torch fallback maps to transformers' own modeling module.
    """
    module = sys.modules.get(type(model).__module__)
    out: dict[str, str] = {}
    for fn_name, kernel in {**GDN_FUNCTIONS, **CONV_FUNCTIONS}.items():
        fn = _fallback_wrapper(getattr(module, fn_name, None))
        if fn is None:
            return None
        bound = inspect.getclosurevars(fn).nonlocals
        impl = bound.get("implementation")
        if impl is None or "torch_function" not in bound:
            return None
        out[kernel] = "torch" if impl is bound["torch_function"] else getattr(impl, "__module__", "?")
    return out


def _torch_path(fn: Any) -> Callable[..., Any] | None:
    """The pure-torch fallback of a GDN helper bound to a fast package; None if it runs on torch already.

    Called as transformers calls the helper: keywords the fallback does not take are dropped, as its wrapper does.
    """
    inner = _fallback_wrapper(fn)
    bound = inspect.getclosurevars(inner).nonlocals if inner is not None else {}
    torch_fn, impl = bound.get("torch_function"), bound.get("implementation")
    if not inspect.isfunction(torch_fn) or impl is None or impl is torch_fn:
        return None
    params = inspect.signature(torch_fn).parameters
    any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())

    @functools.wraps(torch_fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        return torch_fn(*args, **(kwargs if any_keyword else {k: v for k, v in kwargs.items() if k in params}))

    return call


@contextlib.contextmanager
def helpers_for(model: Any, device_type: str) -> Iterator[None]:
    """While `model` runs on `device_type`: GDN helpers that device can run.

    transformers binds fla's and causal-conv1d's kernels whatever the device, and they run on CUDA only: a CPU model
    in a process that has them fails ("Pointer argument ... cannot be accessed from Triton"). On the CPU the helpers
    are their pure-torch fallbacks for the duration (module globals, put back after: a CUDA model of the same process
    keeps the fast ones).
    """
    module = sys.modules.get(type(model).__module__)
    swaps = {}
    if device_type == "cpu" and module is not None:
        for name in {**GDN_FUNCTIONS, **CONV_FUNCTIONS}:
            call = _torch_path(getattr(module, name, None))
            if call is not None:
                swaps[name] = (getattr(module, name), call)
    for name, (_, call) in swaps.items():
        setattr(module, name, call)
    try:
        yield
    finally:
        for name, (original, _) in swaps.items():
            setattr(module, name, original)


def paths(model: Any, logged_fallbacks: set[str], device_type: str = "cuda") -> dict[str, Any]:
    """`gdn_path`, `conv1d_path` and `torch_fallbacks` for meta.json.

    `logged_fallbacks`: kernel names transformers logged as falling back; used when the binding cannot be read. On
    the CPU every helper runs its fallback (helpers_for).
    """
    bound = bound_kernels(model)
    if device_type == "cpu":
        fallbacks = {*GDN_FUNCTIONS.values(), *CONV_FUNCTIONS.values()}
        known = "the CPU runs every fallback"
    elif bound is None:
        fallbacks = set(logged_fallbacks)
        known = "from transformers' log"
    else:
        fallbacks = {k for k, impl in bound.items() if impl == "torch"} | set(logged_fallbacks)
        known = "bound at import"
    gdn_slow = fallbacks & set(GDN_FUNCTIONS.values())
    conv_slow = fallbacks & set(CONV_FUNCTIONS.values())
    return {
        "gdn_path": FALLBACK if gdn_slow else FLA,
        "conv1d_path": FALLBACK if conv_slow else CAUSAL_CONV1D,
        "torch_fallbacks": sorted(fallbacks),
        "kernel_paths_source": known,
        **({"kernel_modules": bound} if bound is not None else {}),
    }


def packages_for(fallbacks: list[str] | set[str]) -> list[str]:
    """The packages whose kernels would replace these fallbacks: fla-core (GDN), causal-conv1d (the short conv)."""
    need = {"fla-core": set(GDN_FUNCTIONS.values()), "causal-conv1d": set(CONV_FUNCTIONS.values())}
    return [pkg for pkg, names in need.items() if names & set(fallbacks)]


def fallback_warning(fallbacks: list[str]) -> str:
    """The report's line on kernels that ran as transformers' pure-torch fallbacks: which part, and what to install.

    The GDN layers' delta rule comes from fla-core and their short convolution from causal-conv1d: a run with fla-core
    and without causal-conv1d is slow only in the convolution, and says so.
    """
    packages = packages_for(fallbacks) or ["fla-core", "causal-conv1d"]
    part = {
        ("fla-core",): "the GDN layers' delta rule",
        ("causal-conv1d",): "the GDN layers' short convolution",
    }.get(tuple(packages), "the GDN layers (delta rule and short convolution)")
    return (
        f"{part} ran on transformers' pure-torch fallbacks ({', '.join(fallbacks)}): install "
        f"{' and '.join(packages)} for the fast path"
    )


def cache_kwarg(model: Any) -> str:
    """The name `model.forward` takes its cache under: `past_key_values` (transformers 5.17) or `cache` (5.24)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cuda_of_version_file(text: str) -> str | None:
    """The `cuda` value of a torch/version.py text ("13.0"); None for a CPU-only build; "unknown" if it has none."""
    m = re.search(r"^cuda\s*(?::[^=\n]*)?=\s*(.+)$", text, re.MULTILINE)
    if m is None:
        return "unknown"
    value = m.group(1).strip().strip("'\"")
    return None if value == "None" else value


def torch_cuda_version() -> str | None:
    """The CUDA version torch was built for, read without importing torch (cheap); None: a CPU-only build.

    "unknown" when torch/version.py cannot be read (load decides then).
    """
    spec = importlib.util.find_spec("torch")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    try:
        return cuda_of_version_file((Path(locations[0]) / "version.py").read_text())
    except (IndexError, OSError):
        return "unknown"
