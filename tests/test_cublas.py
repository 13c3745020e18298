"""Where the prefill's cuBLAS comes from (kernels/cublas.py), and the one line `attach` gives for each outcome.

The places: LUCE_BENCH_CUBLAS, torch's nvidia-cublas wheel, the CUDA toolkit. The folders are made here with empty
library files; loading a real cuBLAS into a real kernel is the GPU tests' part (the default build against
KERNEL_OPTION_SETS "prefill-own-gemm").
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from luce_bench.kernels import cublas


def _lib_dir(root: Path, *names: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for n in names:
        (root / n).write_bytes(b"")
    return root


@pytest.fixture
def nowhere(monkeypatch, tmp_path):
    """No cuBLAS anywhere: no variable, no wheel, a toolkit without it."""
    monkeypatch.delenv(cublas.ENV, raising=False)
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "no-cuda"))
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "no-bin"))
    monkeypatch.setattr(cublas, "_wheel_folders", list)
    monkeypatch.setattr(cublas, "_toolkit_folders", lambda: [tmp_path / "no-cuda" / "lib64"])
    _quiet_process(monkeypatch)
    return tmp_path


def _quiet_process(monkeypatch) -> None:
    """No cuBLAS mapped in this process and no CUDA torch to follow (a GPU machine's test process may have both)."""
    monkeypatch.setattr(cublas, "_mapped", lambda prefix: [])
    monkeypatch.setattr(cublas, "_torch_major", lambda: None)


def test_the_variable_names_a_file_or_a_folder_and_the_newest_major_wins(nowhere, monkeypatch):
    folder = _lib_dir(nowhere / "cb", "libcublas.so", "libcublas.so.12", "libcublas.so.13.1.0.3", "libcublasLt.so.13")
    monkeypatch.setenv(cublas.ENV, str(folder))
    assert cublas.find_cublas() == (folder / "libcublas.so.13.1.0.3", cublas.ENV)
    monkeypatch.setenv(cublas.ENV, str(folder / "libcublas.so.12"))
    assert cublas.find_cublas() == (folder / "libcublas.so.12", cublas.ENV)
    monkeypatch.setenv(cublas.ENV, str(nowhere / "missing"))
    path, why = cublas.find_cublas()
    assert path is None and why == f"{cublas.ENV}={nowhere / 'missing'}: no libcublas.so there"


def test_torch_s_wheel_comes_before_the_toolkit(nowhere, monkeypatch):
    monkeypatch.undo()  # the real folder finders, over folders made here
    _quiet_process(monkeypatch)
    monkeypatch.delenv(cublas.ENV, raising=False)
    site = nowhere / "site"
    wheel = _lib_dir(site / "nvidia" / "cu13" / "lib", "libcublas.so.13", "libcublasLt.so.13")
    # a regular package, first on the path, hides the namespace portions of a real wheel (a GPU machine's torch)
    (site / "nvidia" / "__init__.py").write_text("")
    toolkit = _lib_dir(nowhere / "cuda" / "lib64", "libcublas.so.13")
    monkeypatch.setenv("CUDA_HOME", str(nowhere / "cuda"))
    monkeypatch.syspath_prepend(str(site))
    for name in [m for m in sys.modules if m == "nvidia" or m.startswith("nvidia.")]:
        monkeypatch.delitem(sys.modules, name)
    importlib.invalidate_caches()
    assert cublas.find_cublas() == (wheel / "libcublas.so.13", "the nvidia-cublas wheel")
    monkeypatch.setattr(cublas, "_wheel_folders", list)
    assert cublas.find_cublas() == (toolkit / "libcublas.so.13", "the CUDA toolkit")


def test_the_process_s_own_cublas_then_torch_s_cuda_major_win(nowhere, monkeypatch):
    folder = _lib_dir(nowhere / "cuda" / "lib64", "libcublas.so.12", "libcublas.so.13")
    monkeypatch.setattr(cublas, "_toolkit_folders", lambda: [folder])
    assert cublas.find_cublas() == (folder / "libcublas.so.13", "the CUDA toolkit")  # the newest
    monkeypatch.setattr(cublas, "_torch_major", lambda: 12)
    assert cublas.find_cublas() == (folder / "libcublas.so.12", "the CUDA toolkit")  # torch's CUDA major
    torch_s = nowhere / "site" / "nvidia" / "cu12" / "lib" / "libcublas.so.12"
    monkeypatch.setattr(cublas, "_mapped", lambda prefix: [torch_s] if prefix == "libcublas.so" else [])
    assert cublas.find_cublas() == (torch_s, "this process (loaded already)")


def test_mapped_reads_this_process_s_libraries():
    libc = [p for p in cublas._mapped("libc.so") if p.name.startswith("libc.so")]
    assert libc and all(p.is_absolute() for p in libc)  # a Linux process maps its C library


def test_nothing_found_says_where_it_looked(nowhere):
    path, why = cublas.find_cublas()
    assert path is None and "nvidia-cublas wheel or the CUDA toolkit" in why and cublas.ENV in why


class _Lib:
    """The four entry points `attach` calls, answering as a kernel library of ABI `abi` built with `option` would."""

    def __init__(self, abi: int, option: int, rc: int = 0) -> None:
        self.abi, self.option, self.rc, self.loaded = abi, option, rc, None

    def luce_mk_abi_version(self) -> int:
        return self.abi

    def luce_mk_prefill_gemm_option(self) -> int:
        return self.option

    def luce_mk_prefill_cublas(self, path: bytes) -> int:
        self.loaded = path
        return self.rc

    def luce_mk_prefill_cublas_version(self) -> int:
        return 130100 if self.rc == 0 else 0

    def luce_mk_error_string(self, rc: int) -> bytes:
        return f"error {rc}".encode()


def test_attach_says_what_the_gemms_run_on(nowhere, monkeypatch):
    own = "own tensor-core kernels (pf_gemm.cuh)"
    assert cublas.attach(_Lib(7, 1)) == own and cublas.attach(_Lib(8, 0)) == own
    assert cublas.attach(_Lib(8, 1)).startswith("own tensor-core kernels: no libcublas.so")
    lib_file = _lib_dir(nowhere / "cb", "libcublas.so.13") / "libcublas.so.13"
    monkeypatch.setenv(cublas.ENV, str(lib_file))
    ok = _Lib(8, 1)
    assert cublas.attach(ok) == f"cuBLAS 13.1.0 ({lib_file}, from {cublas.ENV})" and ok.loaded == str(lib_file).encode()
    assert cublas.attach(_Lib(8, 1, rc=-7)) == f"own tensor-core kernels: {lib_file} ({cublas.ENV}): error -7"


def test_info_describes_the_gemms_without_loading_anything(nowhere, monkeypatch):
    assert cublas.describe(1).startswith("own tensor-core kernels: cuBLAS is not found: no libcublas.so in the nvidia")
    assert cublas.describe(0).startswith("own tensor-core kernels (a build with MK_PF_CUBLAS=0; cuBLAS is not found")
    lib_file = _lib_dir(nowhere / "cb", "libcublas.so.13") / "libcublas.so.13"
    monkeypatch.setenv(cublas.ENV, str(lib_file))
    assert cublas.describe(1) == f"cuBLAS, {lib_file} (from {cublas.ENV})"
