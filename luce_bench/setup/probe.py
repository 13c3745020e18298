"""What this machine has for luce-bench: the GPU (nvidia-smi), the CUDA toolkit, torch and llama.cpp, a wheel directory.

Every probe reads, none changes anything. The GPU comes from nvidia-smi (its name, compute capability, driver and the
highest CUDA version the driver supports), the toolkit from nvcc and the cuBLAS library next to it. Python packages
are looked up without importing llama_cpp: a CUDA build is one whose `llama_cpp/lib` holds `libggml-cuda`.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import site
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (pyproject.toml, Makefile, scripts/)
PROBE_TIMEOUT_S = 60.0
# Python modules whose presence changes a setup decision: the build backends of luce-bench and llama-cpp-python,
# flash-linear-attention (HF's fast GDN kernels on a GPU), and the test tools (offline: already there, or a gap)
MODULES = ("hatchling", "scikit_build_core", "fla", "pytest", "hypothesis", "ruff", "xdist")


@dataclass(frozen=True)
class Gpu:
    """The first NVIDIA GPU as nvidia-smi reports it."""

    name: str
    arch: str  # compute capability without the dot, e.g. "90"
    driver: str  # e.g. "570.86.15"
    driver_cuda: tuple[int, int] | None  # the highest CUDA version this driver runs, e.g. (12, 8)

    @property
    def cuda_text(self) -> str:
        """The driver's CUDA version as text, e.g. "12.8" ("unknown" when nvidia-smi did not say)."""
        return ".".join(map(str, self.driver_cuda)) if self.driver_cuda else "unknown"


@dataclass(frozen=True)
class Toolkit:
    """The CUDA toolkit found here: nvcc, its release, and cuBLAS (what llama.cpp's CUDA build links)."""

    nvcc: str | None = None
    release: tuple[int, int] | None = None
    cublas: str | None = None


@dataclass(frozen=True)
class PythonFacts:
    """What one Python environment has installed."""

    python: str
    torch: str | None = None  # version
    torch_cuda: str | None = None  # torch.version.cuda: None for a CPU build
    torch_gpu: bool = False  # torch.cuda.is_available()
    llama_cpp: str | None = None  # version of llama-cpp-python
    llama_cpp_cuda: bool = False  # its lib/ holds libggml-cuda
    modules: frozenset[str] = frozenset()  # those of MODULES that are importable
    system_site: bool = False  # a venv that sees the system's site-packages
    # its own site-packages when this Python is itself a venv (conda's or an image's python3, say): a venv made from
    # it with --system-site-packages sees only the base interpreter's, so setup points the new venv at these too
    venv_site: tuple[str, ...] = ()


@dataclass(frozen=True)
class Wheels:
    """A directory of pre-downloaded wheels and sdists (WHEELS=...): what setup looks for in it."""

    path: str
    torch: str | None = None  # a torch wheel
    llama_cuda: str | None = None  # a llama-cpp-python wheel with CUDA inside
    llama_cuda_arch: str | None = None  # the arch it was built for, where its build marker says
    llama_sdist: str | None = None  # a llama-cpp-python sdist (to build from)
    names: frozenset[str] = frozenset()  # normalised distribution names of every file


@dataclass(frozen=True)
class Machine:
    """Everything `decide` needs to know."""

    gpu: Gpu | None
    gpu_problem: str | None = None  # nvidia-smi exists but failed: its first line
    toolkit: Toolkit = Toolkit()
    host: PythonFacts = PythonFacts(python=sys.executable)  # the Python that creates the venv
    venv: PythonFacts | None = None  # None: no venv yet
    wheels: Wheels | None = None  # None: online (a package index)
    tools: frozenset[str] = field(default_factory=frozenset)  # cmake, ninja on PATH


Runner = Callable[..., "subprocess.CompletedProcess[str]"]


def _run(argv: list[str], run: Runner = subprocess.run) -> subprocess.CompletedProcess[str] | None:
    try:
        return run(argv, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_gpu(
    which: Callable[[str], str | None] = shutil.which, run: Runner = subprocess.run
) -> tuple[Gpu | None, str | None]:
    """(the first GPU, None), (None, why nvidia-smi failed), or (None, None) without nvidia-smi."""
    smi = which("nvidia-smi")
    if not smi:
        return None, None
    query = _run([smi, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"], run)
    lines = [ln for ln in (query.stdout if query else "").splitlines() if ln.strip()]
    if query is None or query.returncode != 0 or not lines:
        why = ((query.stdout + query.stderr) if query else "did not run").strip().splitlines()
        return None, f"nvidia-smi found no GPU: {why[0] if why else 'no output'}"
    name, cap, driver = ([p.strip() for p in lines[0].split(",")] + ["", "", ""])[:3]
    header = _run([smi], run)
    m = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", header.stdout if header else "")
    return Gpu(name, cap.replace(".", ""), driver, (int(m[1]), int(m[2])) if m else None), None


def _cublas_dirs(nvcc: str | None) -> list[Path]:
    dirs = []
    if nvcc:
        home = Path(nvcc).resolve().parent.parent
        dirs += [home / "lib64", home / "lib", *sorted(home.glob("targets/*/lib"))]
    return dirs + [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib/aarch64-linux-gnu")]


def find_cublas(nvcc: str | None, extra_dirs: Iterable[Path] = ()) -> str | None:
    """Path of libcublas.so* in the toolkit of `nvcc` (lib64, lib, targets/*/lib) or the system's lib directories."""
    for d in [*extra_dirs, *_cublas_dirs(nvcc)]:
        hits = sorted(d.glob("libcublas.so*")) if d.is_dir() else []
        if hits:
            return str(hits[0])
    return None


def toolkit(run: Runner = subprocess.run) -> Toolkit:
    """The toolkit: nvcc (found as the megakernel build finds it: $CUDACXX, PATH, $CUDA_HOME/bin, ...) and cuBLAS."""
    from luce_bench.kernels.build import find_nvcc

    nvcc = find_nvcc()
    if nvcc is None:
        return Toolkit(cublas=find_cublas(None))
    out = _run([nvcc, "--version"], run)
    m = re.search(r"release (\d+)\.(\d+)", out.stdout if out else "")
    return Toolkit(nvcc, (int(m[1]), int(m[2])) if m else None, find_cublas(nvcc))


def _llama_cpp_facts() -> tuple[str | None, bool]:
    from importlib.metadata import PackageNotFoundError, version

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None, False
    try:
        ver = version("llama_cpp_python")
    except PackageNotFoundError:
        ver = "unknown"
    lib = Path(next(iter(spec.submodule_search_locations))) / "lib"
    return ver, any(lib.glob("libggml-cuda*"))


def python_facts() -> PythonFacts:
    """What this Python has (imports torch, if installed, to ask it whether it sees a GPU)."""
    torch_v = torch_cuda = None
    torch_gpu = False
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            torch_v, torch_cuda, torch_gpu = torch.__version__, torch.version.cuda, bool(torch.cuda.is_available())
        except Exception:  # noqa: BLE001 - a broken torch counts as none
            pass
    llama_v, llama_cuda = _llama_cpp_facts()
    modules = frozenset(m for m in MODULES if importlib.util.find_spec(m) is not None)
    in_venv = sys.prefix != sys.base_prefix
    system_site = in_venv and _sees_system_site()
    # (Debian's Python names dist-packages folders too, which a venv may not have)
    venv_site = tuple(d for d in site.getsitepackages() if Path(d).is_dir()) if in_venv else ()
    return PythonFacts(
        sys.executable, torch_v, torch_cuda, torch_gpu, llama_v, llama_cuda, modules, system_site, venv_site
    )


def _sees_system_site() -> bool:
    cfg = Path(sys.prefix) / "pyvenv.cfg"
    text = cfg.read_text() if cfg.is_file() else ""
    return bool(re.search(r"include-system-site-packages\s*=\s*true", text, re.I))


def venv_facts(venv: Path, run: Runner = subprocess.run) -> PythonFacts | None:
    """`python_facts()` of the venv at `venv`, in a child process; None when it has no Python yet."""
    python = venv / "bin" / "python"
    if not python.exists():
        return None
    code = (
        f"import sys, json, dataclasses; sys.path.insert(0, {str(ROOT)!r}); "
        "from luce_bench.setup.probe import python_facts; "
        "print(json.dumps(dataclasses.asdict(python_facts()), default=sorted))"
    )
    out = _run([str(python), "-c", code], run)
    try:
        data = json.loads(out.stdout.strip().splitlines()[-1]) if out is not None and out.returncode == 0 else None
    except (ValueError, IndexError):
        data = None
    if not isinstance(data, dict):  # a venv whose Python runs but cannot tell: as good as empty
        return PythonFacts(python=str(python))
    data["modules"] = frozenset(data["modules"])
    data["venv_site"] = tuple(data.get("venv_site", ()))
    return PythonFacts(**data)


def dist_name(filename: str) -> str:
    """The normalised distribution name of a wheel or sdist file name, e.g. 'llama-cpp-python'."""
    stem = re.split(r"-\d", filename, maxsplit=1)[0]
    return re.sub(r"[-_.]+", "-", stem).lower()


def _wheel_cuda_arch(path: Path) -> tuple[bool, str | None]:
    """(has CUDA inside, the arch its build marker names) of a llama-cpp-python wheel."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            cuda = any("libggml-cuda" in n for n in names)
            marker = next((n for n in names if n.endswith("llama_cpp/_luce_build.json")), None)
            arch = json.loads(zf.read(marker)).get("cuda_arch") if marker else None
    except (OSError, zipfile.BadZipFile, ValueError):
        return False, None
    return cuda, str(arch) if arch else None


def read_wheels(path: Path) -> Wheels:
    """What the wheel directory `path` holds that setup cares about (newest file first where several match)."""
    files = sorted((p for p in path.iterdir() if p.is_file()), key=lambda p: p.name, reverse=True)
    torch = next((p.name for p in files if dist_name(p.name) == "torch" and p.suffix == ".whl"), None)
    llama = [p for p in files if dist_name(p.name) == "llama-cpp-python"]
    sdist = next((str(p) for p in llama if p.name.endswith(".tar.gz")), None)
    cuda_wheel, cuda_arch = None, None
    for p in (p for p in llama if p.suffix == ".whl"):
        cuda, arch = _wheel_cuda_arch(p)
        if cuda:
            cuda_wheel, cuda_arch = str(p), arch
            break
    names = frozenset(dist_name(p.name) for p in files)
    return Wheels(str(path), torch, cuda_wheel, cuda_arch, sdist, names)


@dataclass(frozen=True)
class Hardware:
    """The quick probes (no Python imports): GPU, toolkit, build tools on PATH."""

    gpu: Gpu | None
    gpu_problem: str | None
    toolkit: Toolkit
    tools: frozenset[str]


def probe_hardware(run: Runner = subprocess.run) -> Hardware:
    """nvidia-smi, nvcc and cuBLAS, cmake and ninja: what decides the setup, read in well under a second."""
    gpu, problem = nvidia_gpu(run=run)
    return Hardware(gpu, problem, toolkit(run), frozenset(t for t in ("cmake", "ninja") if shutil.which(t)))


def probe(hw: Hardware, venv: Path, wheels: Path | None, run: Runner = subprocess.run) -> Machine:
    """The whole machine: `hw`, the host Python's facts (this process), the venv's (a child), the wheel directory."""
    return Machine(
        gpu=hw.gpu,
        gpu_problem=hw.gpu_problem,
        toolkit=hw.toolkit,
        host=python_facts(),
        venv=venv_facts(venv, run),
        wheels=read_wheels(wheels) if wheels else None,
        tools=hw.tools,
    )
