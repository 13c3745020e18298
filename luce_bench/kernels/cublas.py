"""cuBLAS for the prefill's GEMMs (the default build, MK_PF_CUBLAS=1), found where a user has it.

The kernel library is built without cuBLAS (CI's machine has neither its headers nor the library) and loads it at run
time from the path this module finds, in this order:
1. `LUCE_BENCH_CUBLAS`: a libcublas.so file, or a folder that holds one;
2. the libcublas this process has loaded already (torch's, once it has run a GEMM): one copy, one version;
3. the `nvidia-cublas` wheel that a CUDA build of torch brings (site-packages/nvidia/.../lib);
4. the CUDA toolkit: `CUDA_HOME` / `CUDA_PATH`, the folder of the nvcc on PATH, /usr/local/cuda.
In 3 and 4 the CUDA major version of the torch in this process wins, else the newest. libcublasLt, which libcublas
needs, is loaded from the same folder first unless the process has one (the toolkit's libraries carry no search path
of their own). Without cuBLAS the prefill keeps its own GEMM kernels, and `attach` says in one line what was missing
and how to point at it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

ENV = "LUCE_BENCH_CUBLAS"
_SONAME = re.compile(r"^libcublas\.so(?:\.(\d+))?(?:\.[\d.]+)?$")


def _major(p: Path) -> int:
    m = _SONAME.match(p.name)
    return int(m.group(1) or -1) if m else -1


def _torch_major() -> int | None:
    """The CUDA major version of the torch this process imported (None: no torch, or a CPU build)."""
    version = getattr(getattr(sys.modules.get("torch"), "version", None), "cuda", None)
    return int(str(version).split(".")[0]) if version else None


def _libraries(*folders: Path) -> list[Path]:
    """The libcublas.so* files in `folders`: torch's CUDA major first, then the highest (the bare .so last).

    Sorted stably: among equals, the earlier folder's comes first.
    """
    found = [p for f in folders if f.is_dir() for p in sorted(f.glob("libcublas.so*")) if _SONAME.match(p.name)]
    want = _torch_major()
    return sorted(found, key=lambda p: (_major(p) != want, -_major(p), len(p.name)))


def _mapped(prefix: str) -> list[Path]:
    """Files named `prefix`* that this process has mapped (Linux; empty elsewhere)."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    fields = (ln.split(maxsplit=5) for ln in lines)
    paths = {Path(f[5]) for f in fields if len(f) == 6}
    return sorted(p for p in paths if p.name.startswith(prefix))


def _wheel_folders() -> list[Path]:
    """The lib folders of installed nvidia-cublas wheels (nvidia/cublas/lib, or a CUDA-major one: nvidia/cu13)."""
    try:
        spec = importlib.util.find_spec("nvidia")
    except (ImportError, ValueError):
        spec = None
    roots = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted({p.parent for root in roots for p in root.glob("*/lib/libcublas.so*")})


def _toolkit_folders() -> list[Path]:
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        homes.append(str(Path(nvcc).resolve().parent.parent))
    homes.append("/usr/local/cuda")
    out = []
    for home in filter(None, homes):
        out += [Path(home) / "lib64", Path(home) / "targets" / "x86_64-linux" / "lib", Path(home) / "lib"]
    return out


def find_cublas() -> tuple[Path | None, str]:
    """(the libcublas to load, where it came from), or (None, what was searched)."""
    explicit = os.environ.get(ENV, "").strip()
    if explicit:
        p = Path(explicit).expanduser()
        libs = _libraries(p) if p.is_dir() else ([p] if p.is_file() else [])
        return (libs[0], ENV) if libs else (None, f"{ENV}={explicit}: no libcublas.so there")
    loaded = [p for p in _mapped("libcublas.so") if _SONAME.match(p.name)]
    if loaded:
        return loaded[0], "this process (loaded already)"
    for where, folders in (("the nvidia-cublas wheel", _wheel_folders()), ("the CUDA toolkit", _toolkit_folders())):
        libs = _libraries(*folders)
        if libs:
            return libs[0], where
    return None, "no libcublas.so in the nvidia-cublas wheel or the CUDA toolkit (set LUCE_BENCH_CUBLAS to its path)"


def _preload_lt(lib: Path) -> None:
    """Load libcublasLt of `lib`'s major version from its folder, globally, so that libcublas finds it.

    Nothing if the process has a libcublasLt already: a second copy under the same name would not be the one bound.
    """
    if _mapped("libcublasLt.so"):
        return
    major = _major(lib)
    names = [f"libcublasLt{lib.name.removeprefix('libcublas')}", f"libcublasLt.so.{major}"] if major >= 0 else []
    for lt in (lib.parent / n for n in names):
        if lt.is_file():
            ctypes.CDLL(str(lt), mode=ctypes.RTLD_GLOBAL)
            return


def attach(lib: ctypes.CDLL) -> str:
    """Give a kernel library built with MK_PF_CUBLAS=1 (the default) its cuBLAS, on the current CUDA device.

    Returns what the prefill's GEMMs run on, in one line (why not cuBLAS, where it is not).
    """
    if lib.luce_mk_abi_version() < 8 or not lib.luce_mk_prefill_gemm_option():
        return "own tensor-core kernels (pf_gemm.cuh)"
    path, where = find_cublas()
    if path is None:
        return f"own tensor-core kernels: {where}"
    try:
        _preload_lt(path)
    except OSError as exc:
        return f"own tensor-core kernels: cuBLAS's libcublasLt next to {path} does not load ({exc})"
    rc = lib.luce_mk_prefill_cublas(str(path).encode())
    if rc != 0:
        return f"own tensor-core kernels: {path} ({where}): {lib.luce_mk_error_string(rc).decode()}"
    version = int(lib.luce_mk_prefill_cublas_version())
    major, minor, patch = version // 10000, version // 100 % 100, version % 100
    return f"cuBLAS {major}.{minor}.{patch} ({path}, from {where})"


def describe(option: int) -> str:
    """For `luce-bench info` (nothing loaded): what the prefill's GEMMs would run on with build option `option`."""
    path, where = find_cublas()
    found = f"{path} (from {where})" if path else f"not found: {where}"
    if option:
        return f"cuBLAS, {found}" if path else f"own tensor-core kernels: cuBLAS is {found}"
    return f"own tensor-core kernels (a build with MK_PF_CUBLAS=0; cuBLAS is {found})"
