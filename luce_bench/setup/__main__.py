"""`python3 -m luce_bench.setup`: what `make setup` (and, through it, `make run` / `make test`) runs.

Probes the machine, decides (`decide.py`), says in one line each what cannot be had, runs the steps with progress.
`--if-changed` does nothing when the venv's stamp matches this machine and these settings (what `make run` and
`make test` use, so they start at once); `make setup` always re-checks. The stamp remembers WHEELS: a venv set up
offline stays offline when later commands leave WHEELS out. Bad input: one line, exit 2; a required step
failing: one line naming the log, exit 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

from luce_bench.setup.decide import decide, decide_llamacpp_cuda
from luce_bench.setup.plan import Options, SetupPlan
from luce_bench.setup.probe import ROOT, Hardware, probe, probe_hardware
from luce_bench.setup.steps import SetupFailed, StepRunner, duration_text

STAMP = ".luce-bench-installed"
FINGERPRINT_FILES = ("pyproject.toml", "scripts/build-llamacpp-cuda.sh")


class BadInput(Exception):
    """A setting the user passed is wrong; the message is one line."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The Makefile's variables, as flags."""
    ap = argparse.ArgumentParser(prog="python3 -m luce_bench.setup", description=__doc__.splitlines()[0])
    ap.add_argument("--venv", default=".venv", help="the virtual environment (VENV)")
    ap.add_argument("--wheels", default="", help="offline: pip installs only from this directory (WHEELS)")
    ap.add_argument("--torch-spec", default=Options.torch_spec, help="torch requirement (TORCH_SPEC)")
    ap.add_argument("--torch-index", default=Options.torch_index, help="CUDA torch index base URL (TORCH_INDEX)")
    ap.add_argument("--llamacpp-spec", default=Options.llamacpp_spec, help="llama-cpp-python requirement")
    ap.add_argument("--llamacpp-cmake-args", default="", help="CMAKE_ARGS of llama.cpp's CPU build")
    ap.add_argument("--sdist", default="", help="build llama.cpp with CUDA from this sdist (SDIST)")
    ap.add_argument("--llamacpp-cuda", action="store_true", help="only (re)build llama.cpp with CUDA")
    ap.add_argument("--cuda-arch", default="", help="with --llamacpp-cuda: build for this arch, e.g. 90 (CUDA_ARCH)")
    ap.add_argument("--if-changed", action="store_true", help="nothing to do when the stamp matches")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    ap.add_argument("--log", default=str(ROOT / "build" / "setup.log"), help="where the commands' output goes")
    return ap.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    """Validated Options (relative paths are taken from the current directory)."""
    wheels = Path(args.wheels).resolve() if args.wheels.strip() else None
    if wheels is not None and not wheels.is_dir():
        raise BadInput(f"WHEELS={args.wheels} is not a directory (a folder of pre-downloaded wheels and sdists)")
    sdist = Path(args.sdist).resolve() if args.sdist.strip() else None
    if sdist is not None and not sdist.is_file():
        raise BadInput(f"SDIST={args.sdist} is not a file (a llama_cpp_python-*.tar.gz)")
    arch = args.cuda_arch.strip().lower().removeprefix("sm_").replace(".", "")
    if arch and not arch.isdigit():
        raise BadInput(f"CUDA_ARCH={args.cuda_arch} is not an arch (e.g. 90 for H100/H200, 89, 86, 80)")
    args.cuda_arch = arch
    return Options(
        venv=Path(args.venv).absolute(),  # the steps run in the checkout, wherever this was started
        wheels=wheels,
        torch_spec=args.torch_spec,
        torch_index=args.torch_index.rstrip("/"),
        llamacpp_spec=args.llamacpp_spec,
        llamacpp_cmake_args=args.llamacpp_cmake_args,
        sdist=sdist,
    )


def fingerprint(o: Options, hw: Hardware) -> str:
    """A hash of what the setup depends on: its own code and pyproject, the settings, the GPU and toolkit, WHEELS."""
    h = hashlib.sha256()
    for path in [*(ROOT / f for f in FINGERPRINT_FILES), *sorted((ROOT / "luce_bench" / "setup").glob("*.py"))]:
        h.update(path.read_bytes() if path.is_file() else b"")
    listing = sorted((p.name, p.stat().st_size) for p in o.wheels.iterdir()) if o.wheels else None
    facts = [dataclasses.asdict(o), dataclasses.asdict(hw), listing]
    h.update(json.dumps(facts, default=lambda x: sorted(x) if isinstance(x, frozenset) else str(x)).encode())
    return h.hexdigest()


def machine_line(hw: Hardware, o: Options) -> str:
    """One line: the GPU, the toolkit, online or offline."""
    tk = hw.toolkit
    if hw.gpu is not None:
        g = hw.gpu
        gpu = f"{g.name} (sm_{g.arch}, driver {g.driver}, CUDA {g.cuda_text})"
    else:
        gpu = hw.gpu_problem or "no NVIDIA GPU (no nvidia-smi): the CPU setup"
    nvcc = f"nvcc {'.'.join(map(str, tk.release))}" if tk.release else ("nvcc" if tk.nvcc else "no nvcc")
    cublas = "cuBLAS" if tk.cublas else "no cuBLAS"
    where = f"offline from WHEELS={o.wheels}" if o.wheels else "online"
    return f"setup: {gpu}; {nvcc}, {cublas}; {where}"


def run_plan(plan: SetupPlan, log: Path, dry_run: bool) -> None:
    """Print the gaps (one line each), then the steps (dry run) or run them."""
    for gap in plan.gaps:
        print(f"setup: {gap.line}")
    if dry_run:
        for i, step in enumerate(plan.steps, 1):
            flag = "" if step.required else " (may fail)"
            print(f"[setup {i}/{len(plan.steps)}] {step.title}{flag}\n    {step.command}")
        return
    StepRunner(log).run_all(plan)


def read_stamp(venv: Path) -> dict[str, str]:
    """The venv's stamp ({"fingerprint": ..., "wheels": ...}); {} when missing or unreadable."""
    try:
        data = json.loads((venv / STAMP).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main(argv: list[str] | None = None) -> int:
    """Set up (or check) this machine; the exit code: 0 done, 1 a required step failed, 2 bad input."""
    args = parse_args(argv)
    stamp = read_stamp(Path(args.venv).absolute())
    if not args.wheels.strip() and stamp.get("wheels") and Path(stamp["wheels"]).is_dir():
        args.wheels = stamp["wheels"]  # set up offline once: stays offline
    try:
        o = options_from(args)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    hw = probe_hardware()
    fp = fingerprint(o, hw)
    if args.if_changed and stamp.get("fingerprint") == fp:
        return 0
    if args.llamacpp_cuda and hw.gpu is None and not args.cuda_arch:
        print("error: no NVIDIA GPU found (nvidia-smi); set CUDA_ARCH (e.g. 90) to build for another", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    print(machine_line(hw, o), flush=True)
    machine = probe(hw, o.venv, o.wheels)
    if args.llamacpp_cuda:
        plan = decide_llamacpp_cuda(machine, o, args.cuda_arch or None)
    else:
        plan = decide(machine, o)
    if args.llamacpp_cuda and not plan.steps and not args.dry_run:  # what was asked for cannot be made here
        run_plan(plan, Path(args.log), args.dry_run)  # (its gaps: why)
        print("setup: failed: no CUDA build of llama.cpp was made (the line above says why)", file=sys.stderr)
        return 1
    try:
        run_plan(plan, Path(args.log), args.dry_run)
    except SetupFailed as exc:
        print(f"setup: failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nsetup: interrupted (run it again to go on)", file=sys.stderr)
        return 130
    if not args.dry_run:
        if not args.llamacpp_cuda:
            stamp_data = {"fingerprint": fp, "wheels": str(o.wheels) if o.wheels else None}
            (o.venv / STAMP).write_text(json.dumps(stamp_data) + "\n")
        print(f"setup: done in {duration_text(time.monotonic() - t0)} (commands' output: {args.log})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
