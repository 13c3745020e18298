"""What every command shares: the options (declared once), flags -> config, one-line errors, the console."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from luce_bench.errors import ConsoleClosed, UserError, one_line
from luce_bench.path_param import path_param

state = {"debug": False}


def _one_config(values: list[Path] | None) -> list[Path] | None:
    """--config once at most: a second file would silently replace the first (its values are not merged)."""
    if values and len(values) > 1:
        given = ", ".join(str(v) for v in values)
        raise typer.BadParameter(f"given {len(values)} times ({given}); give one YAML file, which holds every setting")
    return values


def config_path(params: dict[str, Any]) -> Path | None:
    """The --config file of a command's `params` (the option takes a list, to refuse a second one), or None."""
    value = params.get("config")
    if isinstance(value, (list, tuple)):
        return Path(value[0]) if value else None
    return value


ConfigOpt = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--config",
        "-c",
        parser=path_param,
        callback=_one_config,
        metavar="<Path>",
        help="YAML config (default: configs/default.yaml).",
    ),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option(
        "--model",
        "-m",
        help="synthetic-0.8b, tiny, a local HF dir or a hub id (default auto: synthetic-0.8b with a CUDA GPU, "
        "tiny otherwise).",
    ),
]
TestsOpt = Annotated[
    Optional[str],
    typer.Option(
        "--tests",
        "-t",
        help="Comma list of llama-bench tests, e.g. pp520,tg128; @d<D>: after D cached tokens (tg128@d4096). Default "
        "(the config's): pp520,tg128.",
    ),
]
RepsOpt = Annotated[
    Optional[int], typer.Option("--reps", "-r", help="Repetitions (energy windows) per test (default 5).")
]
WindowOpt = Annotated[
    Optional[float], typer.Option("--window-s", help="Minimum energy window per repetition (s; default 10).")
]
WarmupOpt = Annotated[Optional[float], typer.Option("--warmup-s", help="Warm-up before each test (s; default 3).")]
GapOpt = Annotated[
    Optional[float], typer.Option("--rep-gap-max-s", help="Max random gap between repetitions (s; default 1).")
]
FakeOpt = Annotated[
    bool, typer.Option("--fake-gpu", help="Use a simulated GPU (power, energy, clocks): runs anywhere.")
]
PresetOpt = Annotated[
    Optional[str],
    typer.Option("--fake-preset", help="Simulated card: rtx3090 (100-420 W, default), h100-sxm or h200 (200-700 W)."),
]
GpuOpt = Annotated[Optional[int], typer.Option("--gpu", help="GPU index (default 0).")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto (default), cpu, cuda or cuda:N.")]
OutOpt = Annotated[  # a str: Path("") would be "." (the current directory) and an empty --out would pass
    Optional[str], typer.Option("--out", "-o", help="Directory for run directories (default: results/runs).")
]
CooldownOpt = Annotated[
    Optional[float], typer.Option("--cooldown-max-s", help="Longest cool-down wait between tests (s; default 30).")
]
TimeoutOpt = Annotated[
    Optional[float],
    typer.Option(
        "--test-timeout-s",
        help="A test running longer fails its backend (s; 0: auto, 60 s + 3x its plan, more when slow).",
    ),
]
ReadOnlyOpt = Annotated[
    bool, typer.Option("--read-only", help="Refuse every GPU setter (same as LUCE_BENCH_READONLY=1).")
]

# the options of every measuring command (compare, bench, sweep), attached by `run_options`: name -> (type, default)
RUN_OPTIONS = {
    "config": (ConfigOpt, None),
    "model": (ModelOpt, None),
    "tests": (TestsOpt, None),
    "reps": (RepsOpt, None),
    "window_s": (WindowOpt, None),
    "warmup_s": (WarmupOpt, None),
    "rep_gap_max_s": (GapOpt, None),
    "fake_gpu": (FakeOpt, False),
    "fake_preset": (PresetOpt, None),
    "gpu": (GpuOpt, None),
    "device": (DeviceOpt, None),
    "out": (OutOpt, None),
    "cooldown_max_s": (CooldownOpt, None),
    "test_timeout_s": (TimeoutOpt, None),
}

# command-line flag -> dotted config key (flags left at None, or False for switches, keep the config's value)
FLAG_KEYS = {
    "model": "model",
    "tests": "tests",
    "reps": "reps",
    "window_s": "window_s",
    "warmup_s": "warmup_s",
    "rep_gap_max_s": "rep_gap_max_s",
    "fake_gpu": "gpu.fake",
    "fake_preset": "gpu.fake_preset",
    "gpu": "gpu.index",
    "device": "device",
    "out": "output_dir",
    "cooldown_max_s": "cooldown.max_s",
    "test_timeout_s": "test_timeout_s",
    "backends": "backends",
    "limits": "sweep.limits",
    "clocks": "sweep.clocks",
    "clamp": "sweep.clamp",
    "order": "sweep.order",
    "seed": "sweep.shuffle_seed",
    "rounds": "sweep.rounds",
    "settle_s": "sweep.settle_s",
    "idle_s": "sweep.idle_s",
    "min_speed": "sweep.sweet_spot_min_speed",
}


def run_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Give the command `fn` the RUN_OPTIONS after its own; their values reach it only through `ctx.params`."""
    own = inspect.signature(fn, eval_str=True)
    shared = [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
        for n, (a, d) in RUN_OPTIONS.items()
    ]

    @functools.wraps(fn)
    def command(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **{k: v for k, v in kwargs.items() if k in own.parameters})

    command.__signature__ = own.replace(parameters=[*own.parameters.values(), *shared])  # type: ignore[attr-defined]
    return command


def default_config() -> Optional[Path]:
    """configs/default.yaml of the checkout, or the copy in the installed package."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "configs" / "default.yaml", here / "_configs" / "default.yaml"):
        if candidate.is_file():
            return candidate
    return None


def load_config(params: dict[str, Any], **overrides: Any) -> Any:
    """The validated config: YAML (`params["config"]` or the default), then the flags in `params`, then `overrides`."""
    from luce_bench import config as cfgmod

    flags = {**{k: v for k, v in params.items() if k in FLAG_KEYS}, **overrides}
    dotted = {}
    for flag, value in flags.items():
        if value is False:  # a switch that is off leaves the config alone
            value = None
        dotted[FLAG_KEYS[flag]] = str(value) if isinstance(value, Path) else value
    path = config_path(params) or default_config()
    try:
        cfg = cfgmod.load(path, dotted)
    except UserError as exc:
        given = {FLAG_KEYS[flag]: flag for flag, value in flags.items() if value is not None and value is not False}
        raise _as_flag(exc, given) from None
    check_flags(params, cfg)
    return cfg


def _as_flag(exc: UserError, given: dict[str, str]) -> UserError:
    """A config error about a value that a flag gave, named by the flag.

    "--limits: expected watts ..." rather than "config: sweep.limits[0]: expected watts ...".
    """
    import re

    msg = str(exc)
    for key, param in given.items():
        m = re.match(rf"config: {re.escape(key)}(\[\d+\])?(?=[ :]|$)", msg)
        if m:
            return UserError(f"{_flag_name(param)}{msg[m.end() :]}")
    return exc


def _flag_name(param: str) -> str:
    """The long option whose parameter is `param`: its name with dashes, but for the one that differs."""
    return {"min_speed": "--sweet-spot-min-speed"}.get(param, "--" + param.replace("_", "-"))


def check_flags(params: dict[str, Any], cfg: Any) -> None:
    """Flags that the config makes meaningless are refused rather than ignored."""
    if params.get("fake_preset") is not None and not cfg.gpu.fake:
        raise UserError("--fake-preset chooses the simulated card: add --fake-gpu (or gpu.fake: true in the config)")


PIPE_COLUMNS = 140  # the tables' width in a pipe or a log (rich's 80 would cut the verdicts short)


def console() -> Any:
    """The rich console commands print to: the terminal's width, PIPE_COLUMNS where there is none ($COLUMNS wins).

    Where there is none, text lines are not wrapped (soft wrap): a long note stays one line in a log.

    A reader that closes the pipe (`luce-bench sweep | head`) is a BrokenPipeError, an OSError: a run stops on it as
    on a full console (exit 4, said in status.json), where rich would exit 1 as if asked to.
    """
    import os

    from rich.console import Console

    class PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:
            devnull = os.open(os.devnull, os.O_WRONLY)  # (as rich does: the interpreter's last flush must not fail)
            os.dup2(devnull, sys.stdout.fileno())
            raise ConsoleClosed(errno.EPIPE, "standard output closed (broken pipe)")

    out = PipeAwareConsole()
    if not out.is_terminal:  # a pipe or a log: a line of text stays one line (grep finds it); tables keep their width
        out.soft_wrap = True
        if not os.environ.get("COLUMNS"):
            out.width = PIPE_COLUMNS
    return out


def _gpu_error() -> type[Exception]:
    from luce_bench.gpu.base import GPUError

    return GPUError


def help_text(fn: Callable[..., Any]) -> str:
    """A command's docstring for --help: each paragraph one line, so the terminal wraps it, not the source's breaks."""
    paragraphs = inspect.cleandoc(fn.__doc__ or "").split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def tell(line: str) -> None:
    """Write `line` to stderr; where stderr is a closed pipe (`2>&1 | head`), say nothing: the exit code tells."""
    try:
        typer.echo(line, err=True)
    except OSError:  # (a BrokenPipeError here would escape the handler and click would exit 1, "a backend failed")
        with contextlib.suppress(OSError):  # and Python's own flush of stderr at exit must not complain either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError and GPU errors into one line on stderr and exit code 2 (`--debug`: the traceback first).

    An OSError that reaches here (a report or cache file that cannot be written) is one line and exit code 4.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, _gpu_error()) as exc:
            if state["debug"]:
                traceback.print_exc()
            tell(f"error: {one_line(str(exc))}")
            raise typer.Exit(getattr(exc, "exit_code", 2)) from None
        except KeyboardInterrupt:
            tell("interrupted")
            raise typer.Exit(130) from None
        except BrokenPipeError:  # the pipe's reader stopped reading (`luce-bench info | head -1`): quietly, as SIGPIPE
            if state["debug"]:
                traceback.print_exc()
            raise typer.Exit(128 + 13) from None  # (a run stops on it with exit 4 and says so: runner.py)
        except OSError as exc:  # a file luce-bench must write (a report, a cache entry): full disk, no permission
            if state["debug"]:
                traceback.print_exc()
            where = f" {exc.filename}" if exc.filename else ""
            tell(f"error: cannot write{where}: {one_line(exc.strerror or str(exc))}")
            raise typer.Exit(4) from None

    return wrapper
