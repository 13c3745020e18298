"""`make setup`'s decisions (luce_bench/setup/decide.py) for machines described by hand.

GPU or not, nvcc, cuBLAS, the driver's CUDA version, the torch already there, online or offline (WHEELS). Each case
names the steps it expects and the one-line gaps, so a change of behaviour shows up as a changed list.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from luce_bench.setup.decide import TOOL_USE, decide, decide_llamacpp_cuda, requirement_name, torch_cuda_tag
from luce_bench.setup.plan import Options
from luce_bench.setup.probe import Gpu, Machine, PythonFacts, Toolkit, Wheels

H200 = Gpu("NVIDIA H200", "90", "570.86.15", (12, 8))
TOOLKIT = Toolkit("/usr/local/cuda/bin/nvcc", (13, 0), "/usr/local/cuda/lib64/libcublas.so.13")
HOST = PythonFacts("/usr/bin/python3")
CUDA_TORCH = PythonFacts("/usr/bin/python3", torch="2.11.0+cu130", torch_cuda="13.0", torch_gpu=True)
VENV = Path("/repo/.venv")
PY = str(VENV / "bin" / "python")


def titles(plan) -> list[str]:
    return [s.title.split(" (")[0] for s in plan.steps]


def step(plan, title_start: str):
    (found,) = [s for s in plan.steps if s.title.startswith(title_start)]
    return found


def machine(**kw) -> Machine:
    return Machine(**{"gpu": None, "toolkit": Toolkit(), "host": HOST, **kw})


def test_no_gpu_fresh_machine_online_is_the_cpu_setup_of_old():
    o = Options(venv=VENV, llamacpp_cmake_args="-DGGML_NATIVE=OFF")
    plan = decide(machine(), o)
    assert titles(plan) == [
        "creating the virtual environment /repo/.venv",
        "upgrading pip",
        "installing CPU torch",
        "building llama-cpp-python for the CPU",
        "installing the dependencies",
        "installing the test tools",
        "installing luce-bench",
    ]
    assert step(plan, "creating").argv == ("/usr/bin/python3", "-m", "venv", "/repo/.venv")
    assert step(plan, "installing CPU torch").argv == (PY, "-m", "pip", "install", "-q", "torch==2.13.0")
    llama = step(plan, "building llama-cpp-python")
    assert llama.argv[-1] == "llama-cpp-python==0.3.36" and dict(llama.env)["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"
    assert plan.gaps == [] and not plan.system_site


def test_no_gpu_with_everything_installed_only_refreshes_the_package():
    venv = PythonFacts(PY, torch="2.13.0+cpu", llama_cpp="0.3.36")
    plan = decide(machine(venv=venv), Options(venv=VENV))
    assert titles(plan) == ["installing the dependencies", "installing the test tools", "installing luce-bench"]
    deps = step(plan, "installing the dependencies").argv
    assert "gguf>=0.19" in deps and "diskcache>=5.6" in deps
    assert not any(requirement_name(a) in ("torch", "llama-cpp-python") for a in deps)


def test_no_gpu_with_a_cuda_llama_cpp_rebuilds_it_for_the_cpu():
    venv = PythonFacts(PY, torch="2.13.0+cpu", llama_cpp="0.3.36", llama_cpp_cuda=True)
    plan = decide(machine(venv=venv), Options(venv=VENV, llamacpp_cmake_args="-DGGML_NATIVE=OFF"))
    llama = step(plan, "rebuilding llama-cpp-python for the CPU")
    assert llama.argv[-5:] == (
        "--force-reinstall",
        "--no-deps",
        "--no-binary",
        "llama-cpp-python",
        "llama-cpp-python==0.3.36",
    )
    assert dict(llama.env)["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF" and plan.gaps == []


def test_gpu_with_toolkit_and_a_system_cuda_torch_online():
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, host=CUDA_TORCH), Options(venv=VENV))
    assert plan.system_site and plan.gaps == []
    assert step(plan, "creating").argv == ("/usr/bin/python3", "-m", "venv", "--system-site-packages", "/repo/.venv")
    assert not [t for t in titles(plan) if "torch" in t and "fla" not in t]  # the preinstalled CUDA torch is kept
    assert titles(plan)[2:] == [
        "downloading the llama-cpp-python sdist",
        "installing the build tools",
        "building llama-cpp-python with CUDA for sm_90",
        "installing the dependencies",
        "installing the test tools",
        "installing luce-bench",
        "installing fla-core",
        "compiling the megakernel for sm_90",
    ]
    build = step(plan, "building llama-cpp-python with CUDA")
    assert build.argv == ("bash", "scripts/build-llamacpp-cuda.sh", "build/sdist", "build/llamacpp-cuda")
    assert dict(build.env) == {"PYTHON": PY, "CUDA_ARCH": "90"} and not build.required
    assert step(plan, "installing the build tools").argv[-3:] == ("scikit-build-core", "cmake", "ninja")
    fla = step(plan, "installing fla-core").argv
    assert fla[-1] == "fla-core" and not [a for a in fla if a.startswith("torch")]  # the CUDA torch is left alone
    assert step(plan, "compiling the megakernel").argv == ("/repo/.venv/bin/luce-bench", "kernel", "build")


@pytest.mark.parametrize(
    ("driver_cuda", "tag"),
    [((13, 1), "cu130"), ((13, 0), "cu130"), ((12, 9), "cu128"), ((12, 8), "cu128"), ((12, 6), "cu126"),
     ((12, 4), None), ((11, 8), None), (None, None)],
)  # fmt: skip
def test_the_torch_cuda_tag_follows_the_driver(driver_cuda, tag):
    assert torch_cuda_tag(driver_cuda) == tag


def test_gpu_without_torch_gets_the_cuda_build_the_driver_runs():
    gpu = Gpu("NVIDIA A100", "80", "580.65", (13, 0))
    plan = decide(machine(gpu=gpu, toolkit=TOOLKIT), Options(venv=VENV))
    torch = step(plan, "installing CUDA torch")
    assert torch.title == "installing CUDA torch (cu130, for the driver's CUDA 13.0)"
    assert torch.argv[-3:] == ("--index-url", "https://download.pytorch.org/whl/cu130", "torch==2.13.0")
    assert "--force-reinstall" not in torch.argv and not plan.system_site


def test_gpu_with_a_cpu_torch_in_the_venv_reinstalls_it_with_cuda():
    venv = PythonFacts(PY, torch="2.13.0+cpu", llama_cpp="0.3.36", llama_cpp_cuda=True)
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, venv=venv), Options(venv=VENV))
    torch = step(plan, "installing CUDA torch")
    assert "--force-reinstall" in torch.argv and torch.argv[-2:] == (
        "https://download.pytorch.org/whl/cu128",
        "torch==2.13.0",
    )
    assert (
        torch.closes.piece == "torch" and torch.closes.problem == "2.13.0+cpu does not see the GPU: HF runs on the CPU"
    )
    assert not [t for t in titles(plan) if "llama" in t]  # a CUDA llama.cpp is kept


def test_a_driver_too_old_for_cuda_torch_says_so_and_installs_the_cpu_one():
    old = Gpu("Tesla V100", "70", "535.54", (12, 2))
    plan = decide(machine(gpu=old, toolkit=TOOLKIT), Options(venv=VENV))
    assert [g.line for g in plan.gaps] == [
        "NVIDIA driver: 535.54 runs CUDA 12.2, too old for CUDA torch (>= 12.6): HF runs on the CPU "
        "(fix: update the NVIDIA driver, then make setup)"
    ]
    assert step(plan, "installing CPU torch").argv[-1] == "torch==2.13.0"
    assert "fla-core" not in " ".join(titles(plan))  # no torch that sees the GPU: no fla kernels either


def test_gpu_without_nvcc_runs_what_can_run_and_names_the_fix():
    plan = decide(machine(gpu=H200, toolkit=Toolkit(), host=CUDA_TORCH), Options(venv=VENV))
    assert [(g.piece, g.problem) for g in plan.gaps] == [
        ("nvcc and cuBLAS", "llama.cpp cannot be built with CUDA; it is not installed: compare runs without llamacpp"),
        ("nvcc", "the megakernel cannot be compiled: compare runs without it"),
    ]
    assert all("install the CUDA toolkit" in g.fix for g in plan.gaps)
    assert not [t for t in titles(plan) if "llama" in t or "megakernel" in t]  # no CPU llama.cpp on a GPU host


def test_gpu_without_cublas_still_compiles_the_megakernel():
    no_cublas = Toolkit(TOOLKIT.nvcc, (13, 0), None)
    venv = PythonFacts(PY, torch="2.11.0+cu130", torch_gpu=True, llama_cpp="0.3.36", modules=frozenset({"fla"}))
    plan = decide(machine(gpu=H200, toolkit=no_cublas, venv=venv), Options(venv=VENV))
    assert [g.line for g in plan.gaps] == [
        "cuBLAS: llama.cpp cannot be built with CUDA; it is a CPU build, refused on a GPU host: compare runs without "
        "llamacpp (fix: install the CUDA toolkit (nvcc, cuBLAS) or put its bin/ on PATH, then make setup)"
    ]
    assert titles(plan)[-1] == "compiling the megakernel for sm_90"


def test_nvidia_smi_that_fails_is_one_gap_and_the_cpu_setup():
    plan = decide(machine(gpu_problem="nvidia-smi found no GPU: NVIDIA-SMI has failed"), Options(venv=VENV))
    assert plan.gaps[0].piece == "NVIDIA GPU" and "CPU setup" in plan.gaps[0].problem
    assert "building llama-cpp-python for the CPU" in titles(plan)


def wheels(tmp: str = "/carry/.whl", **kw) -> Wheels:
    names = {"llama-cpp-python", "gguf", "diskcache", "fla-core", "pydantic", "platformdirs"}
    return Wheels(tmp, names=frozenset(names), **kw)


def test_offline_h200_installs_the_carried_cuda_wheel_and_links_the_package():
    w = wheels(llama_cuda="/carry/.whl/llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl", llama_cuda_arch="90")
    plan = decide(
        machine(gpu=H200, toolkit=TOOLKIT, host=CUDA_TORCH, wheels=w), Options(venv=VENV, wheels=Path(w.path))
    )
    assert plan.system_site
    assert [(g.piece, g.problem) for g in plan.gaps] == [
        ("pytest", "not installed and not in WHEELS: make test cannot run"),
        ("ruff", "not installed and not in WHEELS: make lint cannot run"),
        ("hypothesis", "not installed and not in WHEELS: make test cannot run"),
        ("pytest-xdist", "not installed and not in WHEELS: make test runs in one process"),
    ]
    assert titles(plan) == [
        "creating the virtual environment /repo/.venv",
        "installing llama-cpp-python with CUDA",
        "installing the dependencies",
        "linking luce-bench into the venv",
        "installing fla-core",
        "compiling the megakernel for sm_90",
    ]
    for s in plan.steps:
        if "pip" in s.argv:
            assert s.argv[3:7] == ("install", "-q", "--no-index", "--find-links") and s.argv[7] == "/carry/.whl"
    assert step(plan, "installing llama-cpp-python").argv[-3:] == ("--force-reinstall", "--no-deps", w.llama_cuda)
    assert step(plan, "linking").argv == (PY, "-m", "luce_bench.setup.link")


def test_offline_with_the_build_backend_installs_editable_without_isolation():
    host = PythonFacts("/usr/bin/python3", torch="2.11.0+cu130", torch_gpu=True, modules=frozenset({"hatchling"}))
    w = wheels(llama_cuda="/carry/.whl/llama.whl")
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, host=host, wheels=w), Options(venv=VENV, wheels=Path(w.path)))
    assert step(plan, "installing luce-bench").argv[-4:] == (
        "--no-deps",
        "--no-build-isolation",
        "-e",
        str(Path(__file__).parents[1]),
    )


def test_offline_wheel_for_another_arch_is_not_used_and_the_sdist_is_built():
    w = wheels(
        llama_cuda="/carry/.whl/llama.whl",
        llama_cuda_arch="86",
        llama_sdist="/carry/.whl/llama_cpp_python-0.3.36.tar.gz",
    )
    m = machine(gpu=H200, toolkit=TOOLKIT, host=CUDA_TORCH, wheels=w, tools=frozenset({"cmake", "ninja"}))
    plan = decide(m, Options(venv=VENV, wheels=Path(w.path)))
    assert plan.gaps[0].problem.startswith("the CUDA wheel in WHEELS is built for sm_86, this GPU is sm_90")
    assert "downloading the llama-cpp-python sdist" not in titles(plan)  # offline: nothing is downloaded
    assert step(plan, "installing the build tools").argv[-1] == "scikit-build-core"  # cmake, ninja are on PATH
    assert step(plan, "building llama-cpp-python").argv[2] == w.llama_sdist


def test_offline_without_llama_cpp_or_torch_in_wheels_names_both():
    w = Wheels("/carry/.whl", names=frozenset({"gguf"}))
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, wheels=w), Options(venv=VENV, wheels=Path(w.path)))
    assert [g.piece for g in plan.gaps] == ["torch", "llama.cpp", "pytest", "ruff", "hypothesis", "pytest-xdist"]
    assert plan.gaps[0].problem == "not installed and WHEELS has no CUDA torch: HF cannot run"
    assert plan.gaps[1].fix == "put the sdist there (scripts/repack-llamacpp-sdist.sh)"
    assert not [t for t in titles(plan) if "torch" in t or "llama" in t or "fla" in t]


def test_offline_cpu_machine_uses_the_system_torch_when_wheels_has_none():
    host = PythonFacts("/usr/bin/python3", torch="2.13.0+cpu")
    w = wheels(llama_sdist="/carry/.whl/llama_cpp_python-0.3.36.tar.gz")
    plan = decide(machine(host=host, wheels=w), Options(venv=VENV, wheels=Path(w.path)))
    assert plan.system_site and "--system-site-packages" in step(plan, "creating").argv
    assert "installing CPU torch" not in titles(plan) and "upgrading pip" not in titles(plan)


def test_make_llamacpp_cuda_rebuilds_for_another_arch_without_a_gpu():
    venv = PythonFacts(
        PY, torch="2.13.0", llama_cpp="0.3.36", llama_cpp_cuda=True, modules=frozenset({"scikit_build_core"})
    )
    m = machine(toolkit=TOOLKIT, venv=venv, tools=frozenset({"cmake", "ninja"}))
    plan = decide_llamacpp_cuda(m, Options(venv=VENV, sdist=Path("/s/llama_cpp_python-0.3.36.tar.gz")), "89")
    assert titles(plan) == ["building llama-cpp-python with CUDA for sm_89"]
    assert step(plan, "building").argv[2] == "/s/llama_cpp_python-0.3.36.tar.gz"
    assert dict(step(plan, "building").env)["CUDA_ARCH"] == "89"
    assert step(plan, "building").required  # what `make llamacpp-cuda` asked for: its failure fails the target


def test_make_llamacpp_cuda_without_cublas_on_a_machine_without_a_gpu_says_what_stays():
    venv = PythonFacts(PY, torch="2.13.0", llama_cpp="0.3.36", modules=frozenset({"scikit_build_core"}))
    m = machine(toolkit=Toolkit(TOOLKIT.nvcc, (13, 0), None), venv=venv, tools=frozenset({"cmake", "ninja"}))
    plan = decide_llamacpp_cuda(m, Options(venv=VENV), "90")
    assert plan.steps == [] and [g.line for g in plan.gaps] == [
        "cuBLAS: llama.cpp cannot be built with CUDA; it is a CPU build: compare here runs the CPU build "
        f"(fix: {plan.gaps[0].fix})"
    ]


def test_a_host_python_that_is_itself_a_venv_is_seen_through_a_pth():
    # the H200's python3 is /opt/torch/.venv/bin/python3: a venv made from it with --system-site-packages sees
    # /usr/lib/python3/dist-packages, not /opt/torch/.venv's torch and typer, so setup adds those by a .pth
    site = "/opt/torch/.venv/lib/python3.12/site-packages"
    host = PythonFacts(
        "/opt/torch/.venv/bin/python3", torch="2.11.0+cu130", torch_cuda="13.0", torch_gpu=True, venv_site=(site,)
    )
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, host=host), Options(venv=VENV))
    assert titles(plan)[:2] == ["creating the virtual environment /repo/.venv", f"letting the venv see {site}"]
    assert step(plan, "letting").argv == (PY, "-m", "luce_bench.setup.link", "--host-site", site)


def test_a_plain_host_python_needs_no_pth():
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, host=CUDA_TORCH), Options(venv=VENV))
    assert not [t for t in titles(plan) if t.startswith("letting")]


def test_offline_test_tools_come_from_wheels_or_the_image_and_only_the_rest_is_a_gap():
    # the H200 image has pytest, hypothesis and pytest-xdist (imported as xdist) but no ruff; WHEELS carries hypothesis
    host = dataclasses.replace(CUDA_TORCH, modules=frozenset({"pytest", "hypothesis", "xdist"}))
    w = Wheels("/carry/.whl", names=frozenset({"llama-cpp-python", "gguf", "diskcache", "hypothesis"}))
    plan = decide(machine(gpu=H200, toolkit=TOOLKIT, host=host, wheels=w), Options(venv=VENV, wheels=Path(w.path)))
    assert step(plan, "installing the test tools").argv[-1] == "hypothesis>=6.100"
    assert [(g.piece, g.fix) for g in plan.gaps if g.piece in TOOL_USE] == [
        ("ruff", "put its wheel in WHEELS, then make setup")
    ]
