"""The bundled CUDA decode megakernel: build (nvcc, cached), load (ctypes) and describe it.

`build_info()` feeds `luce-bench info`; the heavy lifting lives in `build.py` (nvcc driver), `lib.py` (ctypes ABI)
and `luce_bench/backends/megakernel.py` (the backend).
"""

from __future__ import annotations

from typing import Any


def build_info(arch: str | None = None, build: bool = False) -> dict[str, Any]:
    """Nvcc version, arch, cache path, registers/spills of the kernel build for `arch` (default: detected).

    Without `build`, reports only what is already cached (never runs nvcc); errors become an `error` field.
    """
    from luce_bench.errors import UserError
    from luce_bench.kernels import build as b

    info: dict[str, Any] = {"nvcc": None, "arch": None, "cache": None, "built": False}
    try:
        from luce_bench.kernels.prefill import PREFILL_ENV, mode_from_env

        info["prefill"] = f"{mode_from_env()} (${PREFILL_ENV}: kernel, the chunked prefill, or tokens)"
    except UserError as exc:
        info["prefill"] = f"error: {exc}"
    from luce_bench.kernels.abi import build_options
    from luce_bench.kernels.cublas import describe

    try:
        info["prefill_gemm"] = describe(int({**build_options(), **b.options_from_env()}["MK_PF_CUBLAS"]))
    except UserError as exc:  # ($LUCE_BENCH_KERNEL_OPTIONS names an option the kernel does not read, or a bad value)
        info["options"] = f"error: {exc}"
    try:
        nvcc = b.find_nvcc()
        if nvcc is None:
            info["error"] = b.NO_NVCC
            return info
        version = b.nvcc_version(nvcc)
        info["nvcc"] = version.splitlines()[-1]
        arch_n = b.normalize_arch(arch) if arch else b.detect_arch()
        info["arch"] = arch_n
        src = b.source_dir()
        options = b.options_from_env()
        if options:
            info["options"] = options
        flags = [*b.BASE_FLAGS, *b.define_flags(options), *b.gencode_flags((arch_n,))]
        key = b.build_key(src, flags, version)
        cache = b.cache_root() / key
        info["cache"] = str(cache)
        if build:
            res = b.build((arch_n,))
            cache = res.lib.parent
        report = cache / b.REPORT_NAME
        if report.is_file():
            info["built"] = True
            info["kernels"] = [
                {
                    "function": r.function,
                    "arch": r.arch,
                    "registers": r.registers,
                    "stack_bytes": r.stack_bytes,
                    "spill_stores": r.spill_stores,
                    "spill_loads": r.spill_loads,
                }
                for r in b.parse_ptxas(report.read_text())
            ]
    except UserError as exc:
        info["error"] = str(exc)
    return info
