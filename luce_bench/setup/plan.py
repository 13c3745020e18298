"""The vocabulary of `make setup`'s plan: its options, steps, gaps, and the `Planner` that `decide` fills in."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from luce_bench.setup.probe import Machine, PythonFacts

TORCH_INDEX = "https://download.pytorch.org/whl"


@dataclass(frozen=True)
class Options:
    """What the Makefile passes in (its variables of the same names)."""

    venv: Path = Path(".venv")
    wheels: Path | None = None  # WHEELS: offline, from this directory only
    torch_spec: str = "torch==2.13.0"  # TORCH_SPEC
    torch_index: str = TORCH_INDEX  # TORCH_INDEX: CUDA builds come from TORCH_INDEX/<tag>
    llamacpp_spec: str = "llama-cpp-python==0.3.36"  # LLAMACPP_SPEC
    llamacpp_cmake_args: str = ""  # LLAMACPP_CMAKE_ARGS: the CPU build's
    sdist: Path | None = None  # SDIST: build llama.cpp (CUDA) from this sdist


@dataclass(frozen=True)
class Gap:
    """Something this machine lacks for the main job: what is missing or runs instead, and what fixes it."""

    piece: str  # e.g. "nvcc", "torch", "llama.cpp", "megakernel"
    problem: str
    fix: str

    @property
    def line(self) -> str:
        """One line, as setup prints it."""
        return f"{self.piece}: {self.problem} (fix: {self.fix})"


@dataclass(frozen=True)
class Step:
    """One command of the setup; a step that is not `required` may fail, and `fail_note` then says what it costs."""

    title: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()
    required: bool = True
    fail_note: str = ""
    closes: Gap | None = None  # the gap this step fills (what `luce-bench info` shows while it is pending)

    @property
    def command(self) -> str:
        """The command as a shell line (for --dry-run and the log)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env)
        return (env + " " if env else "") + shlex.join(self.argv)


@dataclass
class SetupPlan:
    """The steps in order, and the gaps no step can fill here."""

    steps: list[Step] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    system_site: bool = False


class Planner:
    """Builds a SetupPlan step by step; `env` is what the venv will hold once the steps so far have run."""

    def __init__(self, m: Machine, o: Options) -> None:
        self.m, self.o, self.plan = m, o, SetupPlan()
        self.py = str(o.venv / "bin" / "python")
        self.env: PythonFacts = m.venv or PythonFacts(python=self.py)

    def pip(self, *args: str) -> tuple[str, ...]:
        """`pip install -q ARGS` by the venv's Python; offline only from WHEELS."""
        index = ("--no-index", "--find-links", str(self.o.wheels)) if self.o.wheels else ()
        return (self.py, "-m", "pip", "install", "-q", *index, *args)

    def add(self, title: str, argv: tuple[str, ...], **kw: object) -> None:
        """Append a step (`kw`: Step's other fields)."""
        self.plan.steps.append(Step(title, argv, **kw))  # type: ignore[arg-type]

    def gap(self, piece: str, problem: str, fix: str) -> None:
        """Record something that cannot be had here."""
        self.plan.gaps.append(Gap(piece, problem, fix))

    def have(self, dist: str) -> bool:
        """Whether the wheel directory holds `dist` (always True online: the index has it)."""
        return self.m.wheels is None or dist in self.m.wheels.names

    def now_has(self, **facts: object) -> None:
        """What the venv will hold once the steps planned so far have run."""
        self.env = dataclasses.replace(self.env, **facts)
