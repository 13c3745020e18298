"""cuBLAS for the prefill's GEMMs (a kernel built with MK_PF_CUBLAS=1), found where a user has it.

The kernel library is built without cuBLAS (CI's machine has neither its headers nor the library) and loads it at run
time from the path this module finds, in this order:
1. `LUCE_BENCH_CUBLAS`: a libcublas.so file, or a folder that holds one;
2. the `nvidia-cublas` wheel that a CUDA build of torch brings (site-packages/nvidia/.../lib);
3. the CUDA toolkit: `CUDA_HOME` / `CUDA_PATH`, the folder of the nvcc on PATH, /usr/local/cuda.
The newest major version found first wins in each place. libcublasLt, which libcublas needs, is loaded from the same
folder first (the toolkit's libraries carry no search path of their own). Without cuBLAS the prefill keeps its own
GEMM kernels, and `attach` says in one line what was missing and how to point at it.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import shutil
from pathlib import Path

ENV = "LUCE_BENCH_CUBLAS"
_SONAME = re.compile(r"^libcublas\.so(?:\.(\d+))?(?:\.[\d.]+)?$")


def _libraries(folder: Path) -> list[Path]:
    """libcublas.so* files in `folder`, the highest major version first (the bare .so last)."""
    found = []
    for p in folder.glob("libcublas.so*") if folder.is_dir() else []:
        m = _SONAME.match(p.name)
        if m:
            found.append((int(m.group(1) or -1), len(p.name), p))
    return [p for _, _, p in sorted(found, key=lambda t: (-t[0], t[1]))]


def _wheel_folders() -> list[Path]:
    """The lib folders of installed nvidia-cublas wheels (nvidia/cublas/lib, or a CUDA-major one: nvidia/cu13)."""
    spec = importlib.util.find_spec("nvidia")
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
    for where, folders in (("the nvidia-cublas wheel", _wheel_folders()), ("the CUDA toolkit", _toolkit_folders())):
        for folder in folders:
            libs = _libraries(folder)
            if libs:
                return libs[0], where
    return None, "no libcublas.so in the nvidia-cublas wheel or the CUDA toolkit (set LUCE_BENCH_CUBLAS to its path)"


def _preload_lt(lib: Path) -> None:
    """Load libcublasLt from the folder of `lib`, globally, so that libcublas finds it."""
    suffix = lib.name.removeprefix("libcublas")
    for lt in (lib.with_name(f"libcublasLt{suffix}"), *sorted(lib.parent.glob("libcublasLt.so*"), reverse=True)):
        if lt.is_file():
            ctypes.CDLL(str(lt), mode=ctypes.RTLD_GLOBAL)
            return


def attach(lib: ctypes.CDLL) -> str:
    """Give a kernel library built with MK_PF_CUBLAS=1 its cuBLAS, on the current CUDA device.

    Returns what the prefill's GEMMs run on, in one line (why not cuBLAS, where it is not).
    """
    if lib.luce_mk_abi_version() < 8 or not lib.luce_mk_prefill_gemm_option():
        return "own tensor-core kernels (pf_gemm.cuh)"
    path, where = find_cublas()
    if path is None:
        return f"own tensor-core kernels: MK_PF_CUBLAS=1 but {where}"
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
