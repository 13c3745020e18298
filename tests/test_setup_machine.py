"""`make setup` on simulated machines, with no network and no install.

Fake nvidia-smi / nvcc executables and CUDA toolkits in temporary directories, wheel directories, the step runner's
progress and log, and the Makefile itself in --dry-run.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from luce_bench.setup import probe, steps
from luce_bench.setup.__main__ import STAMP, fingerprint, main
from luce_bench.setup.plan import Options, SetupPlan, Step

ROOT = Path(__file__).resolve().parents[1]
SMI_OK = """#!/bin/sh
case "$*" in
  *--query-gpu*) echo "NVIDIA H200, 9.0, 570.86.15";;
  *) echo "| NVIDIA-SMI 570.86.15    Driver Version: 570.86.15    CUDA Version: 12.8 |";;
esac
"""
SMI_NO_DRIVER = """#!/bin/sh
echo "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
exit 9
"""


@pytest.fixture(autouse=True)
def _no_pythonpath(monkeypatch):
    """The child Pythons here see what a fresh shell's would: a caller's PYTHONPATH (another checkout) is not theirs."""
    monkeypatch.delenv("PYTHONPATH", raising=False)


def fake_exe(folder: Path, name: str, script: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(script)
    path.chmod(0o755)
    return path


def which_in(folder: Path):
    return lambda name: shutil.which(name, path=str(folder))


def test_nvidia_smi_gives_the_gpu_its_arch_and_the_drivers_cuda(tmp_path):
    fake_exe(tmp_path, "nvidia-smi", SMI_OK)
    gpu, problem = probe.nvidia_gpu(which=which_in(tmp_path))
    assert gpu == probe.Gpu("NVIDIA H200", "90", "570.86.15", (12, 8)) and problem is None


def test_a_failing_nvidia_smi_is_no_gpu_with_its_first_line(tmp_path):
    fake_exe(tmp_path, "nvidia-smi", SMI_NO_DRIVER)
    gpu, problem = probe.nvidia_gpu(which=which_in(tmp_path))
    assert gpu is None
    assert (
        problem
        == "nvidia-smi found no GPU: NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    )


def test_no_nvidia_smi_is_no_gpu_and_no_problem(tmp_path):
    assert probe.nvidia_gpu(which=which_in(tmp_path)) == (None, None)


def test_toolkit_reads_nvccs_release_and_finds_cublas_beside_it(tmp_path, monkeypatch):
    nvcc = fake_exe(
        tmp_path / "cuda" / "bin", "nvcc", '#!/bin/sh\necho "Cuda compilation tools, release 12.4, V12.4.131"\n'
    )
    (tmp_path / "cuda" / "targets" / "x86_64-linux" / "lib").mkdir(parents=True)
    cublas = tmp_path / "cuda" / "targets" / "x86_64-linux" / "lib" / "libcublas.so.12"
    cublas.write_bytes(b"")
    monkeypatch.setenv("CUDACXX", str(nvcc))
    assert probe.toolkit() == probe.Toolkit(str(nvcc), (12, 4), str(cublas))


def test_no_nvcc_anywhere(monkeypatch):
    monkeypatch.setattr("luce_bench.kernels.build.find_nvcc", lambda: None)
    tk = probe.toolkit()
    assert tk.nvcc is None and tk.release is None


def _llama_wheel(path: Path, cuda: bool, arch: str | None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("llama_cpp/lib/libllama.so", b"")
        if cuda:
            zf.writestr("llama_cpp/lib/libggml-cuda.so", b"")
        if arch:
            zf.writestr("llama_cpp/_luce_build.json", json.dumps({"cuda_arch": arch}))
    return path


def test_a_wheel_directory_is_read_for_torch_llama_cuda_wheels_and_sdists(tmp_path):
    _llama_wheel(tmp_path / "llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl", cuda=True, arch="90")
    _llama_wheel(tmp_path / "llama_cpp_python-0.3.35-cp312-cp312-linux_x86_64.whl", cuda=False, arch=None)
    for name in (
        "llama_cpp_python-0.3.36.tar.gz",
        "torch-2.11.0+cu130-cp312-cp312-linux_x86_64.whl",
        "fla_core-0.6.0-py3-none-any.whl",
        "pydantic_core-2.50.5-cp312-cp312-manylinux_2_17_x86_64.whl",
    ):
        (tmp_path / name).write_bytes(b"")  # fmt: skip
    w = probe.read_wheels(tmp_path)
    assert w.llama_cuda == str(tmp_path / "llama_cpp_python-0.3.36-cp312-cp312-linux_x86_64.whl")
    assert w.llama_cuda_arch == "90" and w.llama_sdist == str(tmp_path / "llama_cpp_python-0.3.36.tar.gz")
    assert w.torch == "torch-2.11.0+cu130-cp312-cp312-linux_x86_64.whl"
    assert w.names == {"llama-cpp-python", "torch", "fla-core", "pydantic-core"}


def test_venv_facts_come_from_the_venvs_python_and_a_broken_one_knows_nothing(tmp_path):
    facts = {"python": "/v/bin/python", "torch": "2.13.0+cpu", "torch_cuda": None, "torch_gpu": False,
             "llama_cpp": "0.3.36", "llama_cpp_cuda": True, "modules": ["hatchling"], "system_site": True}  # fmt: skip
    fake_exe(tmp_path / "v" / "bin", "python", f"#!/bin/sh\necho '{json.dumps(facts)}'\n")
    got = probe.venv_facts(tmp_path / "v")
    assert got == probe.PythonFacts(**{**facts, "modules": frozenset({"hatchling"})})
    fake_exe(tmp_path / "broken" / "bin", "python", "#!/bin/sh\nexit 1\n")
    assert probe.venv_facts(tmp_path / "broken") == probe.PythonFacts(python=str(tmp_path / "broken/bin/python"))
    assert probe.venv_facts(tmp_path / "none") is None


def test_python_facts_of_this_python_match_what_it_imports():
    facts = probe.python_facts()
    import torch

    assert facts.torch == torch.__version__ and facts.torch_gpu == torch.cuda.is_available()
    assert facts.python == sys.executable


def test_steps_show_a_header_the_time_and_the_telling_line_of_a_failure(tmp_path):
    py = sys.executable
    plan = SetupPlan(
        steps=[
            Step("a quick one", ("sh", "-c", "echo quiet")),  # a shell, not a Python: quick on a loaded machine too
            Step("a slow one", (py, "-c", "import time; time.sleep(1.5)")),
            Step("an optional one", (py, "-c", "print('ERROR: boom'); print('trailing'); raise SystemExit(1)"),
                 required=False, fail_note="that costs the fast path"),
            Step("a required one", (py, "-c", "print('ERROR: No matching distribution found for typer'); exit(1)")),
        ]
    )  # fmt: skip
    out = io.StringIO()
    runner = steps.StepRunner(
        tmp_path / "setup.log", out=out, tick_s=0.5
    )  # 16 busy workers on the H200: 0.1 s was short
    with pytest.raises(steps.SetupFailed, match="a required one: ERROR: No matching distribution found for typer"):
        runner.run_all(plan)
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["[setup 1/4] a quick one", "  done in 0s"]
    assert lines[2] == "[setup 2/4] a slow one" and lines[3] in ("  … still running (0s)", "  … still running (1s)")
    assert "[setup 3/4] an optional one" in lines and "  failed after 0s: ERROR: boom" in lines
    assert "setup: that costs the fast path" in lines
    log = (tmp_path / "setup.log").read_text()
    assert "quiet" in log and "trailing" in log and log.count("\n$ ") == 4  # every command and its output


@pytest.mark.parametrize(("seconds", "text"), [(0.4, "0s"), (12.3, "12s"), (59.6, "1m00s"), (192, "3m12s")])
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert steps.duration_text(seconds) == text


def test_the_stamp_skips_an_unchanged_setup_and_the_fingerprint_sees_a_new_gpu(tmp_path, capsys):
    (tmp_path / "wheels").mkdir()
    o = Options(venv=tmp_path / "venv", wheels=tmp_path / "wheels")
    hw = probe.probe_hardware()
    (tmp_path / "venv").mkdir()
    stamp = {"fingerprint": fingerprint(o, hw), "wheels": str(tmp_path / "wheels")}
    (tmp_path / "venv" / STAMP).write_text(json.dumps(stamp))
    assert main(["--venv", str(tmp_path / "venv"), "--if-changed"]) == 0  # WHEELS left out: the stamp's is used
    assert capsys.readouterr().out == ""  # nothing printed, nothing run
    gpu = probe.Hardware(probe.Gpu("NVIDIA H200", "90", "570", (12, 8)), None, hw.toolkit, hw.tools)
    assert fingerprint(o, gpu) != fingerprint(o, hw)


@pytest.mark.tries("bad input", "make setup: WHEELS, SDIST or CUDA_ARCH that cannot be right")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--wheels", "/nonexistent/wheels"], "error: WHEELS=/nonexistent/wheels is not a directory"),
        (["--sdist", "/nonexistent/llama.tar.gz"], "error: SDIST=/nonexistent/llama.tar.gz is not a file"),
        (["--llamacpp-cuda", "--cuda-arch", "hopper"], "error: CUDA_ARCH=hopper is not an arch"),
    ],
)
def test_bad_setup_input_is_one_line_and_exit_2(args, message, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def fake_toolkit(root: Path) -> Path:
    """A CUDA 13.0 toolkit: bin/nvcc and lib64/libcublas.so.13; returns nvcc."""
    (root / "lib64").mkdir(parents=True)
    (root / "lib64" / "libcublas.so.13").write_bytes(b"")
    return fake_exe(root / "bin", "nvcc", '#!/bin/sh\necho "Cuda compilation tools, release 13.0, V13.0.48"\n')


# the variables the Makefile lets the environment set (`NAME ?= default`): PYTHON, VENV, WHEELS, TORCH_SPEC, ...
MAKEFILE_VARIABLES = frozenset(re.findall(r"^([A-Z_]+) \?=", (ROOT / "Makefile").read_text(), re.MULTILINE))


def make_env(**changes: str) -> dict[str, str]:
    """This environment for a make the test runs, without the outer make's variables.

    Under `make test WHEELS=dir` the outer make exports MAKEFLAGS holding WHEELS=dir, and puts WHEELS=dir itself into
    its recipes' environment (make exports the variables set on its command line); a make the test runs would take
    either (the CPU-setup test then planned an offline setup and failed on the H200, and again on an H100 after
    MAKEFLAGS was dropped). So the Makefile's own variables (every `NAME ?=`) go too.
    """
    outer = {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES", *MAKEFILE_VARIABLES}
    return {**{k: v for k, v in os.environ.items() if k not in outer}, **changes}


def _make(tmp_path: Path, path_dirs: list[Path], *variables: str) -> subprocess.CompletedProcess[str]:
    env = make_env(PATH=os.pathsep.join([*map(str, path_dirs), os.environ["PATH"]]))
    env["CUDACXX"] = str(fake_toolkit(tmp_path / "cuda"))
    argv = ["make", "-s", "-C", str(ROOT), "setup", "SETUP_ARGS=--dry-run", f"PYTHON={sys.executable}",
            f"VENV={tmp_path / 'venv'}", *variables]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_passes_wheels_through_and_a_fake_gpu_switches_to_the_gpu_setup(tmp_path):
    fake_exe(tmp_path / "bin", "nvidia-smi", SMI_OK)
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "gguf-0.19.0-py3-none-any.whl").write_bytes(b"")
    gpu = _make(tmp_path, [tmp_path / "bin"], f"WHEELS={tmp_path / 'wheels'}")
    assert gpu.returncode == 0, gpu.stderr
    first = gpu.stdout.splitlines()[0]
    assert first.startswith("setup: NVIDIA H200 (sm_90, driver 570.86.15, CUDA 12.8); nvcc 13.0, cuBLAS;")
    assert first.endswith(f"offline from WHEELS={tmp_path / 'wheels'}")
    assert f"--no-index --find-links {tmp_path / 'wheels'}" in gpu.stdout
    if probe.python_facts().llama_cpp_cuda:  # as on the H200: this Python has the CUDA build, the plan keeps it
        assert "WHEELS has no CUDA llama-cpp-python" not in gpu.stdout and "building llama-cpp" not in gpu.stdout
    else:
        assert "setup: llama.cpp: WHEELS has no CUDA llama-cpp-python wheel and no sdist" in gpu.stdout
    assert not (tmp_path / "venv").exists()  # a dry run creates nothing


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_a_make_the_suite_runs_does_not_inherit_the_outer_makes_wheels(tmp_path, monkeypatch):
    # what `make test WHEELS=dir` hands its pytest: WHEELS in the environment and in MAKEFLAGS
    monkeypatch.setenv("WHEELS", str(tmp_path / "outer"))
    monkeypatch.setenv("MAKEFLAGS", f" -- WHEELS={tmp_path / 'outer'}")
    assert {"WHEELS", "PYTHON", "VENV", "TORCH_SPEC"} <= MAKEFILE_VARIABLES
    fake_exe(tmp_path / "bin", "nvidia-smi", SMI_OK)
    gpu = _make(tmp_path, [tmp_path / "bin"])
    assert gpu.returncode == 0, gpu.stderr
    assert "offline" not in gpu.stdout.splitlines()[0] and "--no-index" not in gpu.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_the_makefile_without_nvidia_smi_plans_the_cpu_setup(tmp_path):
    # PATH without nvidia-smi: a folder that holds it (with make, sh and the rest, as /usr/bin does) is replaced by
    # links to everything else in it
    shadow, env_path = tmp_path / "shadow-bin", []
    shadow.mkdir()
    for folder in map(Path, os.environ["PATH"].split(os.pathsep)):
        if not (folder / "nvidia-smi").exists():
            env_path.append(str(folder))
            continue
        for exe in folder.iterdir():
            if exe.name != "nvidia-smi" and not (shadow / exe.name).exists():
                (shadow / exe.name).symlink_to(exe)
        if str(shadow) not in env_path:
            env_path.append(str(shadow))
    cpu = subprocess.run(
        [shutil.which("make"), "-s", "-C", str(ROOT), "setup", "SETUP_ARGS=--dry-run", f"PYTHON={sys.executable}",
         f"VENV={tmp_path / 'venv'}", "LLAMACPP_CMAKE_ARGS=-DGGML_NATIVE=OFF -DX=1"],
        capture_output=True, text=True, timeout=120, check=False, env=make_env(PATH=os.pathsep.join(env_path)),
    )  # fmt: skip
    assert cpu.returncode == 0, cpu.stderr
    assert "no NVIDIA GPU (no nvidia-smi): the CPU setup" in cpu.stdout.splitlines()[0]
    assert "CMAKE_ARGS='-DGGML_NATIVE=OFF -DX=1'" in cpu.stdout and "installing CPU torch (torch==2.13.0)" in cpu.stdout


def test_link_puts_the_checkout_on_a_bare_venvs_path(tmp_path):
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "v")], check=True, timeout=120)
    py = str(tmp_path / "v" / "bin" / "python")
    subprocess.run([py, "-m", "luce_bench.setup.link"], cwd=ROOT, check=True, capture_output=True, timeout=60)
    out = subprocess.run([py, "-c", "import luce_bench; print(luce_bench.__file__)"], cwd=tmp_path, capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    assert out.stdout.strip() == str(ROOT / "luce_bench" / "__init__.py")
    script = (tmp_path / "v" / "bin" / "luce-bench").read_text()
    assert script.startswith(f"#!{py}\n") and "from luce_bench.entry import main" in script


def test_a_venv_made_from_a_venv_sees_the_hosts_packages_through_host_site(tmp_path):
    # as on the H200, whose python3 is a venv holding torch: --system-site-packages alone does not show its packages
    host = tmp_path / "host"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(host)], check=True, timeout=120)
    code = "from luce_bench.setup.probe import python_facts as f; print(*f().venv_site)"
    facts = subprocess.run(
        [str(host / "bin" / "python"), "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
    )
    site_dirs = facts.stdout.split()  # one, or more where the Python is Debian's
    (Path(site_dirs[0]) / "only_in_host.py").write_text("WHERE = 'host venv'\n")
    new = tmp_path / "new"
    subprocess.run([str(host / "bin" / "python"), "-m", "venv", "--without-pip", "--system-site-packages", str(new)],
                   check=True, timeout=120)  # fmt: skip
    py = str(new / "bin" / "python")
    probe = [py, "-c", "import only_in_host; print(only_in_host.WHERE)"]
    assert subprocess.run(probe, cwd=tmp_path, capture_output=True, timeout=60, check=False).returncode != 0
    subprocess.run([py, "-m", "luce_bench.setup.link", "--host-site", *site_dirs], cwd=ROOT, check=True, timeout=60)
    seen = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, check=True, timeout=60)
    assert seen.stdout.strip() == "host venv"


@pytest.mark.parametrize("builds", [False, True], ids=["nothing-to-build", "builds-beside-a-note"])
def test_make_llamacpp_cuda_fails_only_when_nothing_is_built(builds, tmp_path, monkeypatch, capsys):
    import luce_bench.setup.__main__ as setup_main
    from luce_bench.setup.plan import Gap, SetupPlan, Step

    gap = Gap("cuBLAS", "llama.cpp cannot be built with CUDA", "install the toolkit")
    if builds:  # e.g. WHEELS' CUDA wheel is for another arch: a note, and the build goes ahead
        gap = Gap("llama.cpp", "the CUDA wheel is built for sm_86, this GPU is sm_90: building instead", "")
    steps = [Step("building llama-cpp-python with CUDA for sm_90", ("true",))] if builds else []
    monkeypatch.setattr(setup_main, "probe", lambda *a: None)
    monkeypatch.setattr(setup_main, "decide_llamacpp_cuda", lambda *a: SetupPlan(steps=steps, gaps=[gap]))
    args = ["--venv", str(tmp_path / "venv"), "--log", str(tmp_path / "setup.log"), "--llamacpp-cuda"]
    code = setup_main.main([*args, "--cuda-arch", "90"])
    out = capsys.readouterr()
    if builds:
        assert code == 0 and "setup: done" in out.out, out
    else:
        assert code == 1 and "no CUDA build of llama.cpp was made" in out.err, out
