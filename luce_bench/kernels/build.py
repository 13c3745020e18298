"""Build the decode megakernel with nvcc (no torch, no cuBLAS) and cache the shared library by content hash.

The cache key is sha256(sources + flags + `nvcc --version`); a build happens in a temporary directory next to the
final one and is renamed into place (luce_bench.files.atomic_path), so no reader sees a half-written library, and a
builder that finds a complete build of the same key there (a concurrent one finished first) keeps it. The ptxas
report (`-Xptxas -v`: registers, stack, spills per kernel and arch) is kept next to the .so as `ptxas.txt`.

CLI: `python -m luce_bench.kernels.build --arch sm_80,sm_90 --out DIR`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.files import atomic_path

LIB_NAME = "libluce_mk.so"
REPORT_NAME = "ptxas.txt"
OPTIONS_NAME = "options.json"  # the build options, beside the library (read back for a prebuilt one)
KEY_NAME = "build_key.txt"  # sources + flags + nvcc: a directory named by the caller is reused only if equal
MAIN_SOURCE = "mk_decode.cu"
SOURCES = (MAIN_SOURCE, "mk_prefill.cu")  # one library: the decode kernel and the prefill
BASE_FLAGS = (
    "-O3",
    "-std=c++17",
    "-shared",
    "-Xcompiler",
    "-fPIC",
    "-cudart",
    "static",
    "-Xptxas",
    "-v",
    "--threads",
    "0",
    "-lineinfo",
)
_ARCH = re.compile(r"^(?:sm_|compute_)?(\d{2,3}a?)$")
MIN_ARCH = 80  # bf16 tensor cores, cp.async


@dataclass
class KernelReport:
    """ptxas facts for one kernel (function) on one arch."""

    arch: str
    function: str
    registers: int = 0
    stack_bytes: int = 0
    spill_stores: int = 0
    spill_loads: int = 0


@dataclass
class BuildResult:
    """A built (or cached) library."""

    lib: Path
    archs: tuple[str, ...]
    nvcc_version: str
    cached: bool
    reports: list[KernelReport] = field(default_factory=list)
    # the build options it was compiled with (OPTIONS_NAME in its directory); None: a library built without that file
    options: dict[str, int] | None = None

    @property
    def report_path(self) -> Path:
        """The ptxas report next to the library."""
        return self.lib.parent / REPORT_NAME


def source_dir() -> Path:
    """The CUDA sources: package data of an installed wheel (`luce_bench/_cuda`), else the checkout's `cuda/`."""
    pkg = Path(__file__).resolve().parent.parent
    for cand in (pkg / "_cuda", pkg.parent / "cuda"):
        if (cand / MAIN_SOURCE).is_file():
            return cand
    raise UserError(f"megakernel CUDA sources not found (looked in {pkg / '_cuda'} and {pkg.parent / 'cuda'})")


def find_nvcc() -> str | None:
    """Path of nvcc: $CUDACXX, else PATH, else $CUDA_HOME/bin, else /usr/local/cuda/bin."""
    for cand in (os.environ.get("CUDACXX"), shutil.which("nvcc")):
        if cand and Path(cand).is_file():
            return cand
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    return None


def nvcc_version(nvcc: str) -> str:
    """The full `nvcc --version` text (part of the cache key)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=False)
    except OSError as exc:  # (not a write error: a file that cannot be run)
        raise UserError(f"cannot run {nvcc}: {exc.strerror or exc}: is it nvcc? (CUDACXX, PATH)") from None
    if out.returncode != 0:
        said = out.stderr.strip().splitlines()
        why = f" ({said[-1][:200]})" if said else ""
        raise UserError(f"{nvcc} --version failed with exit code {out.returncode}{why}: is it nvcc? (CUDACXX, PATH)")
    return out.stdout.strip()


def arch_number(arch: str) -> int:
    """'sm_90a', '90a' or '90' -> 90."""
    return int(arch.removeprefix("sm_").rstrip("a"))


def normalize_arch(arch: str) -> str:
    """'90', 'sm_90', 'compute_90', '9.0' -> 'sm_90'; loud error otherwise."""
    a = arch.strip().lower().replace(".", "")
    m = _ARCH.match(a)
    if not m:
        raise UserError(f"bad CUDA arch {arch!r}: expected e.g. sm_90, sm_80, 90 or 9.0")
    if arch_number(m.group(1)) < MIN_ARCH:
        raise UserError(f"CUDA arch {arch!r} is older than the kernels need: sm_{MIN_ARCH} (Ampere) or newer")
    return f"sm_{m.group(1)}"


def env_arch() -> str | None:
    """$LUCE_BENCH_CUDA_ARCH normalised (None when unset); a UserError naming the variable when it is no arch."""
    env = os.environ.get("LUCE_BENCH_CUDA_ARCH")
    if not env:
        return None
    try:
        return normalize_arch(env)
    except UserError as exc:
        raise UserError(f"LUCE_BENCH_CUDA_ARCH: {exc}") from None


def detect_arch() -> str:
    """Arch of GPU 0: $LUCE_BENCH_CUDA_ARCH, else torch, else NVML; a UserError when none can tell."""
    env = env_arch()
    if env:
        return env
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return normalize_arch(f"sm_{major}{minor}")  # (a GPU older than the kernels need: a UserError)
    except ImportError:
        pass
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(pynvml.nvmlDeviceGetHandleByIndex(0))
            found = f"sm_{major}{minor}"
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    else:
        return normalize_arch(found)
    raise UserError(
        "cannot tell the CUDA arch: no GPU visible to torch or NVML; pass --arch (e.g. sm_90) "
        "or set LUCE_BENCH_CUDA_ARCH"
    )


def gencode_flags(archs: tuple[str, ...]) -> list[str]:
    """-gencode pairs: SASS for every arch, plus PTX of the newest for forward compatibility."""
    flags: list[str] = []
    for a in archs:
        num = a[3:]
        flags += ["-gencode", f"arch=compute_{num},code=sm_{num}"]
    newest = archs[-1][3:]
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return flags


def cache_root() -> Path:
    """Where built libraries are cached: the user cache directory (luce_bench.files) + "kernels"."""
    from luce_bench.files import cache_dir

    return cache_dir() / "kernels"


def _sources(src: Path) -> list[Path]:
    return sorted(p for p in src.iterdir() if p.suffix in (".cu", ".cuh", ".h"))


def build_key(src: Path, flags: list[str], version: str) -> str:
    """sha256 over the sources (names + bytes), the flags and the nvcc version."""
    h = hashlib.sha256()
    for p in _sources(src):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update("\0".join(flags).encode() + b"\0" + version.encode())
    return h.hexdigest()


_FN = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_SPILL = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


_PROPS = re.compile(r"Function properties for (\S+)")


def parse_ptxas(text: str) -> list[KernelReport]:
    """Entries of a `-Xptxas -v` report: every kernel, plus every non-inlined device function (stack and spills)."""
    reports: list[KernelReport] = []
    cur: KernelReport | None = None  # the entry function being compiled
    target: KernelReport | None = None  # where the next stack/spill line belongs
    for line in text.splitlines():
        if m := _FN.search(line):
            cur = target = KernelReport(arch=m.group(2), function=m.group(1))
            reports.append(cur)
        elif m := _PROPS.search(line):
            if cur is not None and m.group(1) == cur.function:
                target = cur
            else:
                target = KernelReport(arch=cur.arch if cur else "?", function=m.group(1))
                reports.append(target)
        elif target is not None and (m := _SPILL.search(line)):
            target.stack_bytes, target.spill_stores, target.spill_loads = (int(x) for x in m.groups())
        elif cur is not None and (m := _REGS.search(line)):
            cur.registers = int(m.group(1))
    return reports


def define_flags(defines: dict[str, int] | None, src: Path | None = None) -> list[str]:
    """-DNAME=VALUE for the kernel's build options; a name the kernel does not read (cuda/mk_config.cuh) is refused.

    Values are checked by the kernel's own `#error` lines at compile time (see `build`).
    """
    from luce_bench.kernels.abi import build_options

    known = build_options(src)
    out = []
    for name, value in sorted((defines or {}).items()):
        if name not in known:
            raise UserError(
                f"unknown kernel option {name!r}; the kernel reads {', '.join(sorted(known))} (cuda/mk_config.cuh)"
            )
        out.append(f"-D{name}={int(value)}")
    return out


_HASH_ERROR = re.compile(r'#error(?: directive)?:?\s*"?([^"\n]+)"?')


# nvcc --threads compiles the archs in parallel, and now and then its device link cannot read one of its own
# intermediate files ("nvlink fatal : Could not read file '/tmp/tmpxft_..._dlink.reg.c'", seen once in CI): a rerun
# of the same command succeeds. Any other failure is reported as it is.
_NVCC_TMP_RACE = re.compile(r"Could not read file '[^']*tmpxft_")


def run_nvcc(cmd: list[str], tmp_dir: Path, run: Any = subprocess.run) -> subprocess.CompletedProcess[str]:
    """Run nvcc with its intermediate files in `tmp_dir` (its own, not the shared /tmp), once more on that race."""
    tmp_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp_dir)}
    proc = run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0 and _NVCC_TMP_RACE.search(proc.stdout + proc.stderr):
        proc = run(cmd, capture_output=True, text=True, check=False, env=env)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    return proc


def nvcc_error(report: str, returncode: int, options: dict[str, int] | None = None) -> UserError:
    """One line for a failed nvcc run: the kernel's own `#error` text when an option is out of range.

    The options are named with their values: a bare `-D MK_X` is MK_X=1, which the message should show.
    """
    if m := _HASH_ERROR.search(report):
        given = f" ({', '.join(f'{k}={v}' for k, v in sorted(options.items()))})" if options else ""
        return UserError(f"kernel build options{given}: {m.group(1).strip()}")
    return UserError(f"nvcc failed ({returncode}): " + " | ".join(report.strip().splitlines()[-6:]))


OPTIONS_ENV = "LUCE_BENCH_KERNEL_OPTIONS"
NO_NVCC = "nvcc not found (install the CUDA toolkit, put nvcc on PATH or set CUDACXX/CUDA_HOME)"


def parse_options(items: Iterable[str], where: str, several: str = "give each with its own -D") -> dict[str, int]:
    """["MK_A=1", "MK_B=0x10"] -> {"MK_A": 1, "MK_B": 16} ("MK_A" alone is 1); `where` names the source in errors.

    `several`: how the source gives several options, said when one item holds two (a space or ';' between them).
    """
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in items)):
        name, _, value = (t.strip() for t in item.partition("="))
        if not name:
            raise UserError(f"{where}: {item!r}: expected MK_NAME=INTEGER")
        if name in out:  # two values for one option: neither can be the one meant (tune fields refuse it too)
            raise UserError(f"{where}: {name} is given twice")
        try:
            out[name] = int(value or "1", 0)
        except ValueError:
            hint = f" (several options: {several})" if len(item.split()) > 1 or ";" in item else ""
            raise UserError(f"{where}: {item!r}: expected MK_NAME=INTEGER{hint}") from None
    return out


def options_from_env() -> dict[str, int]:
    """Build options from $LUCE_BENCH_KERNEL_OPTIONS, e.g. "MK_SLOT_KB=16,MK_PF_GBM=128" (empty: the defaults)."""
    out = parse_options(os.environ.get(OPTIONS_ENV, "").split(","), OPTIONS_ENV, "separate them by commas")
    try:
        define_flags(out)  # validates the names
    except UserError as exc:
        raise UserError(f"{OPTIONS_ENV}: {exc}") from None
    return out


def build(
    archs: str | list[str] | tuple[str, ...] | None = None,
    out_dir: Path | None = None,
    force: bool = False,
    verbose: bool = False,
    defines: dict[str, int] | None = None,
) -> BuildResult:
    """Build (or reuse) the library for `archs` (default: detected).

    `out_dir` overrides the cache directory; `defines` sets build options (e.g. {"MK_SLOT_KB": 16}; default:
    $LUCE_BENCH_KERNEL_OPTIONS) and is part of the cache key.
    """
    if defines is None:
        defines = options_from_env()
    src = source_dir()
    dflags = define_flags(defines, src)  # unknown names fail here, before anything else
    if archs is None:
        archs = (detect_arch(),)
    elif isinstance(archs, str):
        parts = archs.split(",")
        if len(parts) > 1 and not all(a.strip() for a in parts):
            raise UserError(f"--arch has an empty entry: {archs!r}")
        archs = tuple(a for a in parts if a.strip())
    arch_t = tuple(sorted({normalize_arch(a) for a in archs}, key=arch_number))
    if not arch_t:
        raise UserError("no CUDA arch given")
    if out_dir is not None:
        out_dir = _out_dir(Path(out_dir))
    nvcc = find_nvcc()
    if nvcc is None:
        raise UserError(NO_NVCC)
    version = nvcc_version(nvcc)
    flags = [*BASE_FLAGS, *dflags, *gencode_flags(arch_t)]
    key = build_key(src, flags, version)
    final = Path(out_dir) if out_dir else cache_root() / key
    lib = final / LIB_NAME
    options = {k: int(v) for k, v in sorted(defines.items())}
    if not force and _reusable(final, key, keyed=out_dir is None):
        if read_options(final) is None:  # a cache directory from before the options were recorded
            with contextlib.suppress(OSError):
                (final / OPTIONS_NAME).write_text(json.dumps(options) + "\n")
        reports = parse_ptxas((final / REPORT_NAME).read_text())
        return BuildResult(lib, arch_t, version.splitlines()[-1], True, reports, options)

    # Compiled beside `final`: what is there now (a forced rebuild, a directory without its report, one built with other
    # flags) stays readable until the new build replaces it
    def keep(existing: Path) -> bool:  # a concurrent builder's complete build of the same key is never undone
        return not force and _reusable(existing, key, keyed=out_dir is None)

    with atomic_path(final, existing=keep) as tmp:
        tmp.mkdir()
        cmd = [nvcc, *flags, "-I", str(src), "-o", str(tmp / LIB_NAME), *(str(src / f) for f in SOURCES)]
        proc = run_nvcc(cmd, tmp / "nvcc-tmp")
        report = proc.stdout + proc.stderr
        if proc.returncode != 0:
            raise nvcc_error(report, proc.returncode, options)
        (tmp / REPORT_NAME).write_text(report)
        (tmp / "build.txt").write_text(" ".join(cmd) + "\n" + version + "\n")
        (tmp / OPTIONS_NAME).write_text(json.dumps(options) + "\n")
        (tmp / KEY_NAME).write_text(key + "\n")
        if verbose:
            print(report)
    reports = parse_ptxas((final / REPORT_NAME).read_text())
    return BuildResult(lib, arch_t, version.splitlines()[-1], False, reports, options)


BUILD_FILES = frozenset({LIB_NAME, REPORT_NAME, KEY_NAME, OPTIONS_NAME, "build.txt"})  # what a build leaves


def _out_dir(out: Path) -> Path:
    """A directory named for the build, made absolute: new, empty or an earlier build's.

    The new build replaces the directory whole, so one holding anything else is bad input (it would be deleted).
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file, not a directory for the kernel build")
    resolved = out.resolve()
    if resolved == Path(resolved.anchor):
        raise UserError(f"{out} is the file system's root, not a directory for the kernel build")
    if out.is_dir():
        try:
            others = sorted(p.name for p in out.iterdir() if p.name not in BUILD_FILES)
        except OSError as exc:
            raise UserError(f"{out}: cannot list it ({exc.strerror})") from None
        if others:
            shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
            raise UserError(
                f"{out} holds other files ({shown}): the build replaces its directory whole, so name a new or empty "
                "one (or one a kernel build made)"
            )
    return resolved


def _reusable(final: Path, key: str, keyed: bool) -> bool:
    """A complete build of `key` in `final` (the keyed cache's directory name is its key; another records it)."""
    complete = (final / LIB_NAME).is_file() and (final / REPORT_NAME).is_file()
    return complete and (keyed or _read_text(final / KEY_NAME) == key)


def check_lib_dir(lib_dir: Path | None, where: str) -> None:
    """A prebuilt library's folder that is not there: one line naming `where` it was given, before any GPU work."""
    if lib_dir is not None and not Path(lib_dir).is_dir():
        raise UserError(f"{where}: no such directory (a built library's folder)")


def prebuilt(lib_dir: Path) -> BuildResult:
    """A library built earlier into `lib_dir` (libluce_mk.so, with ptxas.txt and build.txt when `build` made it)."""
    lib_dir = Path(lib_dir)
    lib = lib_dir / LIB_NAME
    if not lib.is_file():
        raise UserError(f"no {LIB_NAME} in {lib_dir}")
    report = lib_dir / REPORT_NAME
    reports = parse_ptxas(report.read_text()) if report.is_file() else []
    info = lib_dir / "build.txt"
    version = info.read_text().strip().splitlines()[-1] if info.is_file() else "unknown"
    archs = tuple(sorted({r.arch for r in reports}))
    return BuildResult(lib, archs, version, True, reports, read_options(lib_dir))


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def read_options(lib_dir: Path) -> dict[str, int] | None:
    """The build options recorded next to a library (None: none recorded, or unreadable)."""
    try:
        raw = json.loads((Path(lib_dir) / OPTIONS_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or not all(isinstance(k, str) and type(v) is int for k, v in raw.items()):
        return None
    return raw


def main(argv: list[str] | None = None) -> int:
    """`python -m luce_bench.kernels.build --arch sm_80,sm_90 --out DIR`."""
    ap = argparse.ArgumentParser(prog="python -m luce_bench.kernels.build", description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default=None, help="comma-separated archs (sm_80,sm_90); default: the GPU's")
    ap.add_argument("--out", type=Path, default=None, help="output directory (default: the content-hash cache)")
    ap.add_argument("--force", action="store_true", help="rebuild even if cached")
    ap.add_argument(
        "-D",
        dest="defines",
        action="append",
        default=[],
        metavar="MK_NAME=VALUE",
        help="build option (cuda/mk_config.cuh), repeatable",
    )
    args = ap.parse_args(argv)
    try:
        defines = parse_options(args.defines, "-D")
        res = build(args.arch, args.out, force=args.force, defines=defines or None)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{'cached' if res.cached else 'built'}: {res.lib}")
    for r in res.reports:
        print(
            f"  {r.arch} {r.function}: {r.registers} regs, {r.stack_bytes} B stack, "
            f"{r.spill_stores} B spill stores, {r.spill_loads} B spill loads"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
