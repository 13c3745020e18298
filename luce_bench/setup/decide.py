"""What `make setup` installs on this machine: `decide(machine, options) -> SetupPlan`, steps and gaps.

No GPU (no nvidia-smi): the CPU setup of old: CPU torch (`TORCH_SPEC`), llama-cpp-python compiled for the CPU, the
package with its extras. With an NVIDIA GPU:

* torch: a torch that already sees the GPU is kept (the system's, through a venv with system site-packages, or the
  venv's own); else a CUDA build for the newest CUDA the driver runs (`TORCH_CUDA_TAGS`); a driver older than all of
  them keeps or installs the CPU torch, and HF runs on the CPU.
* llama.cpp: a CUDA build is kept; else a CUDA wheel from WHEELS (built for this arch, where its marker says), else
  the CUDA build recipe (`scripts/build-llamacpp-cuda.sh`, nvcc + cuBLAS needed) from an sdist in WHEELS or PyPI.
  Without nvcc or cuBLAS nothing is installed (llama.cpp's CPU build is refused on a GPU host) and `compare` skips it.
* fla-core (HF's fast GDN kernels) where torch sees the GPU; the megakernel compiled once when nvcc is here.

Offline (WHEELS=dir): every pip call gets `--no-index --find-links dir`. The venv sees the system's site-packages
where a preinstalled torch is what can be had. A `Gap` is one thing that cannot be had: what runs instead, the fix.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from luce_bench.setup.plan import Gap, Options, Planner, SetupPlan
from luce_bench.setup.probe import ROOT, Machine

# The driver must run at least this CUDA version for the torch wheels of that tag (newest first)
TORCH_CUDA_TAGS = (((13, 0), "cu130"), ((12, 8), "cu128"), ((12, 6), "cu126"))
TOOLKIT_FIX = "install the CUDA toolkit (nvcc, cuBLAS) or put its bin/ on PATH, then make setup"


def torch_cuda_tag(driver_cuda: tuple[int, int] | None) -> str | None:
    """The newest torch CUDA tag the driver runs (cu130, cu128, cu126), or None for an older or unknown driver."""
    if driver_cuda is None:
        return None
    return next((tag for need, tag in TORCH_CUDA_TAGS if driver_cuda >= need), None)


def _venv(p: Planner) -> None:
    m, o = p.m, p.o
    if m.venv is not None:
        p.plan.system_site = m.venv.system_site
        return
    host = m.host
    keep_cuda = m.gpu is not None and host.torch_gpu
    offline_torch = m.wheels is not None and host.torch is not None and m.wheels.torch is None
    p.plan.system_site = keep_cuda or offline_torch
    flag = ("--system-site-packages",) if p.plan.system_site else ()
    why = f" (keeps the system's torch {host.torch})" if p.plan.system_site else ""
    p.add(f"creating the virtual environment {o.venv}{why}", (host.python, "-m", "venv", *flag, str(o.venv)))
    if p.plan.system_site and host.venv_site:  # the host is a venv: its packages are not the "system site"
        dirs = ", ".join(host.venv_site)
        p.add(f"letting the venv see {dirs}", (p.py, "-m", "luce_bench.setup.link", "--host-site", *host.venv_site))
    if p.plan.system_site:
        p.env = dataclasses.replace(host, python=p.py, system_site=True)
    if m.wheels is None:
        p.add("upgrading pip", p.pip("--upgrade", "pip"), required=False)


def _cpu_torch(p: Planner, why: str) -> None:
    if p.env.torch is not None:
        return
    if not p.have("torch"):
        p.gap("torch", "not installed and not in WHEELS: HF cannot run", "put a torch wheel in WHEELS")
        return
    p.add(f"installing CPU torch ({p.o.torch_spec})", p.pip(p.o.torch_spec), closes=Gap("torch", why, "make setup"))
    p.now_has(torch=p.o.torch_spec, torch_cuda=None, torch_gpu=False)


def _torch(p: Planner) -> None:
    m, o, env = p.m, p.o, p.env
    if m.gpu is None:
        _cpu_torch(p, "not installed: HF cannot run")
        return
    if env.torch is not None and env.torch_gpu:
        return
    tag = torch_cuda_tag(m.gpu.driver_cuda)
    if tag is None:
        p.gap(
            "NVIDIA driver",
            f"{m.gpu.driver} runs CUDA {m.gpu.cuda_text}, too old for CUDA torch (>= 12.6): HF runs on the CPU",
            "update the NVIDIA driver, then make setup",
        )
        _cpu_torch(p, "not installed: HF cannot run")
        return
    state = f"{env.torch} does not see the GPU" if env.torch else "not installed"
    if m.wheels is not None and m.wheels.torch is None:
        runs = "HF runs on the CPU" if env.torch else "HF cannot run"
        p.gap("torch", f"{state} and WHEELS has no CUDA torch: {runs}", "put a CUDA torch wheel in WHEELS")
        return
    extra = () if m.wheels is not None else ("--index-url", f"{o.torch_index}/{tag}")
    if env.torch is not None:  # a CPU torch of the same version number counts as installed for pip
        extra = ("--force-reinstall", *extra)
    p.add(
        f"installing CUDA torch ({tag}, for the driver's CUDA {m.gpu.cuda_text})",
        p.pip(*extra, o.torch_spec),
        closes=Gap("torch", f"{state}: HF runs on the CPU", "make setup"),
    )
    p.now_has(torch=o.torch_spec, torch_cuda=tag, torch_gpu=True)


def _llamacpp_cpu(p: Planner) -> None:
    o = p.o
    if p.env.llama_cpp is not None and not p.env.llama_cpp_cuda:
        return
    if not p.have("llama-cpp-python"):
        p.gap("llama.cpp", "not installed and not in WHEELS: compare runs without it", "put its sdist in WHEELS")
        return
    env = (("CMAKE_ARGS", o.llamacpp_cmake_args), ("CMAKE_BUILD_PARALLEL_LEVEL", str(_cpus())))
    if p.env.llama_cpp_cuda:  # a CUDA build cannot load a model where there is no GPU (llama.cpp crashes)
        argv = p.pip("--force-reinstall", "--no-deps", "--no-binary", "llama-cpp-python", o.llamacpp_spec)
        p.add("rebuilding llama-cpp-python for the CPU (the CUDA build needs a GPU; a few minutes)", argv, env=env)
        return
    p.add("building llama-cpp-python for the CPU (a few minutes)", p.pip(o.llamacpp_spec), env=env)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


LLAMA_CUDA_GAP = "make llamacpp-cuda"


def _llamacpp_cuda_wheel(p: Planner, arch: str, closes: Gap) -> bool:
    """Install a CUDA wheel from WHEELS built for `arch` (or for an arch it does not name); True if planned."""
    w = p.m.wheels
    if w is None or w.llama_cuda is None or p.o.sdist is not None:
        return False
    if w.llama_cuda_arch not in (None, arch):
        p.gap(
            "llama.cpp wheel",
            f"the CUDA wheel in WHEELS is built for sm_{w.llama_cuda_arch}, this GPU is sm_{arch}: building instead",
            "put a wheel built for this GPU in WHEELS",
        )
        return False
    name = Path(w.llama_cuda).name
    argv = p.pip("--force-reinstall", "--no-deps", w.llama_cuda)
    p.add(f"installing llama-cpp-python with CUDA ({name})", argv, closes=closes)
    return True


def _llamacpp_build(p: Planner, arch: str, closes: Gap) -> None:
    """The CUDA build recipe from an sdist (SDIST, WHEELS or PyPI), with its build tools."""
    m, o = p.m, p.o
    sdist = str(o.sdist) if o.sdist else (m.wheels.llama_sdist if m.wheels else None)
    if sdist is None and m.wheels is not None:
        p.gap(
            "llama.cpp",
            "WHEELS has no CUDA llama-cpp-python wheel and no sdist: compare runs without llamacpp",
            "put the sdist there (scripts/repack-llamacpp-sdist.sh)",
        )
        return
    if sdist is None:
        sdist = "build/sdist"
        dl = (p.py, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", sdist, o.llamacpp_spec)
        p.add("downloading the llama-cpp-python sdist", dl)
    need = [] if "scikit_build_core" in p.env.modules else ["scikit-build-core"]
    need += [t for t in ("cmake", "ninja") if t not in m.tools]
    if need:
        p.add(f"installing the build tools ({', '.join(need)})", p.pip(*need))
    p.add(
        f"building llama-cpp-python with CUDA for sm_{arch} (several minutes)",
        ("bash", "scripts/build-llamacpp-cuda.sh", sdist, "build/llamacpp-cuda"),
        env=(("PYTHON", p.py), ("CUDA_ARCH", arch)),
        required=False,
        fail_note="llama.cpp: the CUDA build failed (the log says why): compare runs without llamacpp",
        closes=closes,
    )


def _llamacpp(p: Planner, cuda_arch: str | None = None, redo: bool = False) -> None:
    m = p.m
    if m.gpu is None and cuda_arch is None:
        _llamacpp_cpu(p)
        return
    if p.env.llama_cpp_cuda and not redo:
        return
    arch = cuda_arch or m.gpu.arch  # type: ignore[union-attr]
    if m.gpu is not None:
        state = "a CPU build, refused on a GPU host" if p.env.llama_cpp else "not installed"
        costs = "compare runs without llamacpp"
    else:  # a build for another machine's GPU (CUDA_ARCH): this one keeps what it has
        state = "a CPU build" if p.env.llama_cpp else "not installed"
        costs = "compare here runs the CPU build" if p.env.llama_cpp else "compare here runs without llamacpp"
    closes = Gap("llama.cpp", f"{state}: {costs}", LLAMA_CUDA_GAP)
    if _llamacpp_cuda_wheel(p, arch, closes):
        return
    lacking = [what for what, ok in (("nvcc", m.toolkit.nvcc), ("cuBLAS", m.toolkit.cublas)) if not ok]
    if lacking:
        what = " and ".join(lacking)
        p.gap(what, f"llama.cpp cannot be built with CUDA; it is {state}: {costs}", TOOLKIT_FIX)
        return
    _llamacpp_build(p, arch, closes)


def pyproject_requirements(root: Path = ROOT) -> dict[str, list[str]]:
    """{"base": [...], "hf": [...], "llamacpp": [...], "dev": [...]} from pyproject.toml."""
    import tomllib

    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return {"base": list(project["dependencies"]), **project.get("optional-dependencies", {})}


def requirement_name(req: str) -> str:
    """'torch>=2.4' -> 'torch'; 'llama_cpp_python' -> 'llama-cpp-python'."""
    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~;\[ ]", req, maxsplit=1)[0]).lower()


def _deps(p: Planner) -> None:
    reqs = pyproject_requirements()
    own_steps = {"torch", "llama-cpp-python"}  # installed (or not) by their own steps above
    run = [r for g in ("base", "hf", "llamacpp") for r in reqs.get(g, []) if requirement_name(r) not in own_steps]
    p.add("installing the dependencies", p.pip(*run))
    _test_tools(p, reqs.get("dev", []))


# what a missing test tool costs (the dev extra of pyproject.toml), and the module it is imported as where that differs
TOOL_USE = {
    "pytest": "make test cannot run",
    "hypothesis": "make test cannot run",
    "ruff": "make lint cannot run",
    "pytest-xdist": "make test runs in one process",
}
TOOL_MODULE = {"pytest-xdist": "xdist"}


def _test_tools(p: Planner, dev: list[str]) -> None:
    """The dev extra.

    Offline, a tool WHEELS lacks is not asked of pip (one missing name fails the whole install); it is a gap only if
    the venv does not have it already (an image's pytest, say).
    """
    if p.m.wheels is not None:
        for req in dev:
            name = requirement_name(req)
            if not p.have(name) and TOOL_MODULE.get(name, name) not in p.env.modules:
                use = TOOL_USE.get(name, "a test tool is missing")
                p.gap(name, f"not installed and not in WHEELS: {use}", "put its wheel in WHEELS, then make setup")
        dev = [r for r in dev if p.have(requirement_name(r))]
    if dev:
        p.add(
            "installing the test tools",
            p.pip(*dev),
            required=False,
            fail_note="the test tools are missing: make run works, make test does not",
        )


def _package(p: Planner) -> None:
    if p.m.wheels is None:
        p.add("installing luce-bench (editable)", p.pip("--no-deps", "-e", str(ROOT)))
    elif "hatchling" in p.env.modules:
        p.add("installing luce-bench (editable)", p.pip("--no-deps", "--no-build-isolation", "-e", str(ROOT)))
    else:  # offline without the build backend: the same result as an editable install, without building
        p.add("linking luce-bench into the venv (no build backend offline)", (p.py, "-m", "luce_bench.setup.link"))


def _gpu_extras(p: Planner) -> None:
    """fla-core for HF's fast GDN path, and the megakernel compiled once (both may fail: one line, go on)."""
    m = p.m
    if m.gpu is None:
        return
    if p.env.torch_gpu and "fla" not in p.env.modules and p.have("fla-core"):
        slow = "HF runs its GDN layers on slow pure-torch fallbacks"
        # fla-core itself needs only einops (torch is an extra), so the torch that sees the GPU is left alone. No pin
        # on it either: an image's torch reports 2.11.0+cu130 where its metadata may say otherwise, and pip offline
        # then finds "no matching distribution for torch==2.11.0+cu130" (the H200, 2026-12-03)
        p.add(
            "installing fla-core (HF's fast GDN kernels)",
            p.pip("fla-core"),
            required=False,
            fail_note=f"fla-core could not be installed: {slow}",
            closes=Gap("fla-core", f"not installed: {slow}", "make setup"),
        )
    if m.toolkit.nvcc is None:
        p.gap("nvcc", "the megakernel cannot be compiled: compare runs without it", TOOLKIT_FIX)
        return
    p.add(
        f"compiling the megakernel for sm_{m.gpu.arch} (nvcc)",
        (str(p.o.venv / "bin" / "luce-bench"), "kernel", "build"),
        required=False,
        fail_note="megakernel: the build failed (the log says why)",
    )


def decide(m: Machine, o: Options) -> SetupPlan:
    """The whole setup for machine `m` (see the module docstring)."""
    p = Planner(m, o)
    if m.gpu_problem:
        p.gap("NVIDIA GPU", f"{m.gpu_problem}: the CPU setup", "check the driver with nvidia-smi, then make setup")
    _venv(p)
    _torch(p)
    _llamacpp(p)
    _deps(p)
    _package(p)
    _gpu_extras(p)
    return p.plan


def decide_llamacpp_cuda(m: Machine, o: Options, cuda_arch: str | None) -> SetupPlan:
    """`make llamacpp-cuda`: (re)build llama.cpp with CUDA for this GPU, or for `cuda_arch` on another machine."""
    p = Planner(m, o)
    _llamacpp(p, cuda_arch=cuda_arch, redo=True)
    # the build is what was asked for: its failure fails the target (in `make setup` it may fail, and compare skips it)
    p.plan.steps = [dataclasses.replace(s, required=True) for s in p.plan.steps]
    return p.plan
