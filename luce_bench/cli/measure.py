"""`compare`, `bench` and `sweep`: flags -> config -> plan -> the one run loop -> report."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, Optional

import typer

from luce_bench.cli.options import (
    ReadOnlyOpt,
    config_path,
    console,
    default_config,
    load_config,
    one_line,
    path_param,
    run_options,
    tell,
)
from luce_bench.config import ALL_BACKENDS
from luce_bench.errors import UserError
from luce_bench.files import shell_arg

if TYPE_CHECKING:
    from luce_bench.config import BenchConfig


def measure(
    cfg: BenchConfig,
    name: str,
    backends: Sequence[str],
    optional: Sequence[str] = (),
    sweep: bool = False,
    persistence: bool = True,
    resume: Path | None = None,
    sources: dict[str, str] | None = None,
) -> None:
    """Open the GPU, plan, run, render and print; exit with the run's code (status.EXIT_CODES).

    `sources`: where a sweep's limits and clocks came from (plan.sweep_settings), so that a refusal names the file.
    """
    from luce_bench.cli.ui import ConsoleUI
    from luce_bench.context import open_context
    from luce_bench.plan import Setting, merge_notes, plan, sweep_settings
    from luce_bench.runner import run, signals_stop_the_run

    out, ui, outcome = console(), None, None
    guard = contextlib.ExitStack()  # from the run's end to its report: SIGTERM raises too (signals_stop_the_run)
    try:
        with open_context(cfg, for_settings=sweep) as ctx:
            settings = sweep_settings(cfg, ctx.gpu, sources) if sweep else [Setting()]
            notes = merge_notes(cfg, settings) if sweep else ()
            p = plan(cfg, ctx, name=name, backends=backends, optional=optional, settings=settings, notes=notes)
            todo = None
            if resume is not None:
                from luce_bench.resume import prepare

                todo = prepare(resume, p, ctx)
                if todo is None:
                    out.print(f"nothing to resume: every planned repetition is in {resume}", markup=False)
                    from luce_bench.status import render_pending

                    if render_pending(resume) or not (resume / "report.md").is_file():  # (a signal, a kill)
                        from luce_bench.report import render

                        render(resume)
                        out.print(f"its summary, report and plots were missing and are written: {resume}", markup=False)
                    return
            ui = ConsoleUI(out, rows=sweep)
            outcome = run(p, ctx, ui, persistence=persistence, resume=todo)
            guard.enter_context(signals_stop_the_run())
    except (KeyboardInterrupt, SystemExit) as exc:
        if outcome is None or not outcome.report_due or outcome.late_signal is not None:
            guard.close()
            raise
        outcome.late_signal = exc  # its ending waits for the report (status.json): said as during the report
    finally:
        if ui is not None:
            ui.close()
    with guard:
        _finish(outcome, out, sweep)


def _finish(outcome: Any, out: Any, sweep: bool) -> None:
    """Render what was measured, say how the run ended, exit with its code."""
    from luce_bench.appender import RunDirError
    from luce_bench.report import print_report, render
    from luce_bench.results import META
    from luce_bench.runner import signals_stop_the_run
    from luce_bench.status import EXIT_FAILURES

    state, code, reason = outcome.ending()
    resumable = sweep and outcome.stop is not None and (outcome.run_dir / META).is_file()  # `sweep --resume` takes it
    report = None
    if outcome.n_runs:
        try:
            with signals_stop_the_run():  # (the run's own handlers are gone: SIGTERM would end it silently)
                if outcome.late_signal is not None:  # (it came as the run said its settings were restored)
                    raise outcome.late_signal
                report = render(outcome.run_dir)
        except (OSError, RunDirError, UserError) as exc:
            # the measured rows are kept, but the run directory lacks its summary, report and plots: a write error
            # (exit 4), also in status.json where it can still be written
            state, code, reason = _render_failed(outcome.run_dir, exc, (state, code, reason))
        except (KeyboardInterrupt, SystemExit) as exc:
            _render_interrupted(outcome.run_dir, exc, outcome.stop is None, (state, code, reason), resumable)
    if outcome.stop is None and report is not None:
        print_report(report, out)
    if outcome.stop is not None:
        reps = "repetition" if outcome.n_runs == 1 else "repetitions"
        out.print(f"{state}: {outcome.n_runs} finished {reps} kept in {outcome.run_dir}", markup=False)
        if resumable:
            out.print(f"continue it with: luce-bench sweep --resume {shell_arg(outcome.run_dir)}", markup=False)
        elif sweep:  # stopped before meta.json existed: --resume would refuse it
            out.print("it cannot be resumed (it stopped before writing meta.json): run the sweep again")
    else:
        out.print(f"results: {outcome.run_dir}", markup=False)
    if code == 0:
        return
    if code == EXIT_FAILURES and outcome.failed and not outcome.warnings and outcome.restore_error is None:
        reason = f"backends failed or unavailable: {', '.join(outcome.failed)}"
    status = outcome.run_dir / "status.json"
    see = f" (see {status})" if status.is_file() else ""  # (a disk full at the start may not have let it be written)
    tell(f"error: {one_line(reason)}{see}")
    raise typer.Exit(code)


def _render_interrupted(
    run_dir: Path, exc: BaseException, complete: bool, ending: tuple[str, int, str], resumable: bool = False
) -> NoReturn:
    """A signal while the report was written: status.json says so (a worse ending kept), one line; exit.

    `resumable`: a stopped sweep that `sweep --resume` continues (and whose report it writes then).
    """
    from luce_bench.status import INTERRUPTED, mark_render_unwritten

    code = 130 if isinstance(exc, KeyboardInterrupt) else int(exc.code) if isinstance(exc.code, int) else 1
    name = signal.Signals(code - 128).name if code > 128 else "a signal"
    what = f"a second signal ({name}) came" if ending[0] == INTERRUPTED else f"interrupted by {name}"
    if resumable:
        then = f"the repetitions measured are in runs.csv: `luce-bench sweep --resume {shell_arg(run_dir)}` continues"
        then += " the sweep and writes them"
    else:
        rows = "every repetition is in runs.csv" if complete else "the repetitions measured are in runs.csv"
        then = f"{rows}: `luce-bench report {shell_arg(run_dir)}` renders them"
    note = f"{what} while the summary, report and plots were written; {then}"
    with contextlib.suppress(KeyboardInterrupt, SystemExit):  # (a second signal: the line below still says it)
        _, code, note = mark_render_unwritten(run_dir, INTERRUPTED, code, note, ending)
    tell(f"error: {one_line(note)}")
    raise typer.Exit(code)


def _render_failed(run_dir: Path, exc: Exception, ending: tuple[str, int, str]) -> tuple[str, int, str]:
    """The run's ending once its report could not be written: stopped, exit 4 (unless it already ended worse).

    Until `luce-bench report RUN` writes the report (status.py, mark_render_unwritten).
    """
    from luce_bench.status import EXIT_DISK, STOPPED, mark_render_unwritten

    why = f"the summary, report and plots could not all be written ({one_line(str(exc))}); the measured rows are in "
    why += f"runs.csv: `luce-bench report {shell_arg(run_dir)}` renders them again"
    return mark_render_unwritten(run_dir, STOPPED, EXIT_DISK, why, ending)


DEFAULT_BASELINES = ("llamacpp", "hf", "hf-compiled")
BASELINES_HELP = (
    "Comma list of baselines: llamacpp, hf, hf-compiled (and sim with --fake-gpu). Default: the first three, each "
    "skipped with a note where it cannot run here (as the megakernel is; hf-compiled needs CUDA torch and a compiler); "
    "named ones must run."
)


@run_options
def compare(
    ctx: typer.Context,
    baselines: Annotated[Optional[str], typer.Option("--baselines", "-b", help=BASELINES_HELP)] = None,
    no_megakernel: Annotated[bool, typer.Option("--no-megakernel", help="Measure only the baselines.")] = False,
) -> None:
    """Measure the megakernel against the baselines: tok/s and tok/J per test, one run directory with CSVs and plots."""
    names = list(DEFAULT_BASELINES) if baselines is None else [b.strip() for b in baselines.split(",")]
    if any(names) and not all(names):  # "hf,,llamacpp" or "sim,": a typo, as for the other lists
        raise UserError(f"--baselines has an empty entry: {baselines!r}")
    names = [b for b in names if b]
    if not names:
        raise UserError(
            "--baselines is empty: name one or more of llamacpp, hf, hf-compiled, or leave it out for all three "
            "(the megakernel alone: luce-bench bench megakernel)"
        )
    if "megakernel" in names:  # (with --no-megakernel it was dropped without a word)
        raise UserError(
            "--baselines names the megakernel, which is no baseline: compare measures it unless --no-megakernel; "
            "name the baselines only (llamacpp, hf, hf-compiled)"
        )
    from luce_bench.backends import REGISTRY, known_backends

    if unknown := [n for n in names if n not in REGISTRY]:  # (the registry's list would offer the megakernel)
        raise UserError(f"--baselines: unknown baseline {unknown[0]!r}; known: {known_backends(skip='megakernel')}")
    backends = ([] if no_megakernel else ["megakernel"]) + names
    cfg = load_config(ctx.params, backends=",".join(backends))
    optional = ["megakernel", *(DEFAULT_BASELINES if baselines is None else ())]
    measure(cfg, "compare", backends, optional=optional)


@run_options
def bench(
    ctx: typer.Context,
    backend: Annotated[str, typer.Argument(help="Backend: megakernel, llamacpp, hf, hf-compiled; sim: --fake-gpu.")],
) -> None:
    """Measure one backend at the current power limit."""
    if not backend.strip():
        raise UserError("BACKEND is empty: name one of megakernel, llamacpp, hf, hf-compiled (sim with --fake-gpu)")
    if "," in backend:
        raise UserError(f"BACKEND {backend!r}: bench measures one backend; several side by side: luce-bench compare")
    from luce_bench.backends import REGISTRY, known_backends

    if backend not in REGISTRY:  # ("all" is a sweep's word)
        raise UserError(f"unknown backend {backend!r}; known: {known_backends()}")
    cfg = load_config(ctx.params, backends=backend)
    measure(cfg, f"bench-{backend}", [backend])


def _opt(kind: Any, *decls: str, help: str) -> Any:  # noqa: A002 - typer's name
    if kind == Optional[Path]:
        return Annotated[kind, typer.Option(*decls, parser=path_param, help=help)]
    return Annotated[kind, typer.Option(*decls, help=help)]


LIMITS_HELP = (
    "Comma list of limits in W or % of the default limit, e.g. 420,300,220,150 or 100%,70%,50%; auto: 100%,75%,55%,40% "
    "clamped to the card's range (default: sweep.limits, auto)."
)
CLOCKS_HELP = (
    "Comma list of locked SM clocks in MHz or % of the top SM clock, e.g. 1980,1600,1200,900 or 100%,80%,60%; they "
    "snap to the card's supported clocks. Alone, or with --limits as a grid (default: sweep.clocks)."
)
BACKENDS_HELP = (
    "Comma list of backends, or all: the megakernel and every baseline, each skipped with a note where it cannot run "
    "here (default: config `backends`, all; `sim` with --fake-gpu). Named ones must run."
)
SETTLE_HELP = (
    "Settle/warm-up under load after each setting is applied, a limit and/or a clock (s; default 3, >= 3 recommended)."
)
SPEED_HELP = "Sweet spot keeps at least this share of stock tok/s (0.95)."
ROUNDS_HELP = (
    "Passes over the settings (default: sweep.rounds, 1; the presets 3): each measures reps/rounds of every setting's "
    "windows, so slow drift spreads over all settings instead of reading as a difference between them (3 or more "
    "for claims)."
)
RESUME_HELP = (
    "Continue the interrupted sweep in RUN_DIR: measure only the repetitions it lacks, with its config (flags and "
    "--config must agree with it, else it is refused)."
)


@run_options
def sweep(
    ctx: typer.Context,
    limits: _opt(Optional[str], "--limits", "-l", help=LIMITS_HELP) = None,
    clocks: _opt(Optional[str], "--clocks", "-k", help=CLOCKS_HELP) = None,
    backends: _opt(Optional[str], "--backends", "-b", help=BACKENDS_HELP) = None,
    clamp: _opt(bool, "--clamp", help="Clamp out-of-range limits and clocks to the card's range, not refuse.") = False,
    shuffle: _opt(bool, "--shuffle", help="Shuffle the setting order (with --seed); default is descending.") = False,
    seed: _opt(
        Optional[int], "--seed", help="Seed of a shuffled order (--shuffle, or sweep.order: shuffle in the config)."
    ) = None,
    order: _opt(Optional[str], "--order", help="descending, ascending or shuffle (default: sweep.order).") = None,
    rounds: _opt(Optional[int], "--rounds", help=ROUNDS_HELP) = None,
    settle_s: _opt(Optional[float], "--settle-s", help=SETTLE_HELP) = None,
    idle_s: _opt(Optional[float], "--idle-s", help="Idle-baseline window per setting (s; default 10).") = None,
    min_speed: _opt(Optional[float], "--sweet-spot-min-speed", help=SPEED_HELP) = None,
    read_only: ReadOnlyOpt = False,
    no_persistence: _opt(bool, "--no-persistence", help="Do not turn on persistence mode while sweeping.") = False,
    resume: _opt(Optional[Path], "--resume", help=RESUME_HELP) = None,
) -> None:
    """Measure every backend at each power limit and/or locked SM clock; report the sweet spot. Originals come back.

    Limits are validated against the card's range, clocks against its supported clocks, before anything changes.
    --clocks alone sweeps clocks at the current limit; with --limits it sweeps their grid. Changing limits and
    locking clocks need root or CAP_SYS_ADMIN, except on the simulated GPU (some cards and drivers cannot lock clocks
    at all). After a crash or SIGKILL run `luce-bench restore`; `--resume RUN_DIR` then continues the sweep.

    Exit codes: 0 done, 1 a backend failed, 2 bad input, 3 GPU error, 4 disk, 5 not restored, 128+N signal N.
    """
    if read_only:
        from luce_bench.gpu import enable_read_only_mode

        enable_read_only_mode()
    if shuffle and order not in (None, "shuffle"):
        raise UserError(f"--shuffle conflicts with --order {order}")
    for flag, value in (("--limits", limits), ("--clocks", clocks), ("--backends", backends)):
        if value is not None and not value.replace(",", " ").strip():
            raise UserError(f"{flag} is empty; leave it out for the config's value")
    fake_default = ctx.params["fake_gpu"] and not backends  # the simulated card's backends unless named
    alone = "" if clocks and limits is None else None  # --clocks without --limits: the clocks alone
    overrides = {
        "backends": backends or ("sim" if fake_default and resume is not None else None),
        "order": "shuffle" if shuffle else order,
        **({"limits": alone} if alone is not None else {}),
    }
    if resume is not None:
        from luce_bench.resume import resume_config

        cfg = resume_config(resume, ctx.params, overrides)
    else:
        cfg = load_config(ctx.params, **overrides)
        if not backends and cfg.gpu.fake and cfg.backends == (ALL_BACKENDS,):
            # a config's `all` on the simulated card (--fake-gpu or gpu.fake): its simulated backend; --backends all
            # names every real one that can run
            cfg = cfg.model_copy(update={"backends": ("sim",)})
        cfg = _seeded(cfg)
    if cfg.sweep.rounds > cfg.reps:  # (a sweep's own rule: compare and bench pass over nothing)
        raise UserError(
            f"sweep.rounds (--rounds) = {cfg.sweep.rounds} exceeds reps (--reps) = {cfg.reps}: each round measures "
            "at least one repetition of every setting; raise reps or lower rounds"
        )
    names, optional = sweep_backends(cfg.backends)
    sources = _axis_sources(ctx.params, {"limits": limits, "clocks": clocks}, resume, cfg.sweep.model_fields_set)
    measure(
        cfg,
        "sweep",
        names,
        optional=optional,
        sweep=True,
        persistence=not no_persistence,
        resume=resume,
        sources=sources,
    )


def _axis_sources(
    params: dict[str, Any], flags: dict[str, str | None], resume: Path | None, in_file: set[str]
) -> dict[str, str]:
    """Where each sweep axis's values came from, as a refusal names them: its flag, the resumed run, or the file.

    `in_file`: the sweep keys the config file set (the rest are the built-in defaults).
    """
    path = config_path(params) or default_config()

    def source(axis: str) -> str:
        if flags[axis] is not None:
            return f"--{axis}"
        if resume is not None:
            return f"sweep.{axis} of the resumed run ({resume})"
        return f"sweep.{axis} in config {path}" if path and axis in in_file else f"sweep.{axis} (the default)"

    return {axis: source(axis) for axis in flags}


def _seeded(cfg: BenchConfig) -> BenchConfig:
    """The config with a seed drawn for a shuffled order that has none.

    The seed is printed and recorded (meta.json), so that the order can be repeated (--seed) and a --resume replays it.
    """
    if cfg.sweep.order != "shuffle" or cfg.sweep.shuffle_seed is not None:
        return cfg
    import secrets

    seed = secrets.randbelow(2**31)
    console().print(f"order: shuffled with seed {seed} (--shuffle --seed {seed} repeats it)")
    return cfg.model_copy(update={"sweep": cfg.sweep.model_copy(update={"shuffle_seed": seed})})


def sweep_backends(names: Sequence[str]) -> tuple[list[str], list[str]]:
    """(backends to sweep, those skipped rather than refused where they cannot run): `all` is compare's default set."""
    if ALL_BACKENDS not in names:
        return list(names), []
    if set(names) != {ALL_BACKENDS}:
        raise UserError(
            f"backends: '{ALL_BACKENDS}' stands alone, not beside {', '.join(n for n in names if n != ALL_BACKENDS)}"
        )
    every = ["megakernel", *DEFAULT_BASELINES]
    return every, every
