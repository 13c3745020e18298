"""The one run: a `Plan` on a `RunContext` becomes a run directory. compare, bench and sweep (and its resume) run here.

1. A plan that changes GPU settings first checks that setters work (read-only mode, root / CAP_SYS_ADMIN), takes the
   GPU's lock and refuses a stale journal (`PowerLimitController`); bad input stops here, before anything exists.
2. The run directory is created (or, resuming, reopened) with status.json, and the loop runs (loop.py).
3. However the loop ends, the ORIGINAL limit and clock lock come back (`luce-bench restore` after SIGKILL), and
   status.json says how it ended, where and why, with the exit code the CLI gives (status.EXIT_CODES):
   finished (0), finished with failures (1), stopped by a GPU error (3) or an unwritable run directory (4), settings
   not restored (5), interrupted by SIGINT / SIGTERM / SIGHUP (128 + the signal). Finished rows always stay. A run
   with rows leaves that ending under status.json's `render_pending` (the state still running) for its caller, which
   writes the report (cli/measure.py; `status.render_done`); one nothing measured in, or one that raises its error,
   ends there. A run that measured nothing and stops on bad input or a full disk leaves no run directory.
SIGTERM and SIGHUP stop any run the way SIGINT does (a sweep's controller restores first, see gpu/power_limit.py).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from luce_bench import status as st
from luce_bench.appender import RunDirError
from luce_bench.clock import SimClock
from luce_bench.context import RunContext
from luce_bench.errors import UserError, WriteError
from luce_bench.gpu.base import CLOCK_HINT, READONLY_ENV, GPUError, GPUPermissionError, GPUReadOnlyError
from luce_bench.loop import RunLoop
from luce_bench.plan import Plan, fingerprint
from luce_bench.records import RunRecord
from luce_bench.results import RunWriter
from luce_bench.run_log import warnings_to_log


class UI(Protocol):
    """What the loop tells the user (the CLI's console; tests may pass a silent one)."""

    def status(self, msg: str, lead: str = "", style: str = "") -> None:
        """One line of news, plain text; `lead` labels it in `style` (`style` alone: the whole line)."""

    def loading(self, backend: str, model: str) -> contextlib.AbstractContextManager[Any]:
        """Around loading a backend."""

    def waiting(self, label: str, total_s: float) -> contextlib.AbstractContextManager[Any]:
        """Around a timed wait of `total_s` seconds that reports nothing while it lasts (settling, idle baseline)."""

    def progress(self, label: str, done: int, total: int) -> None:
        """Repetitions of one trial done so far."""

    def record(self, record: RunRecord) -> None:
        """A finished repetition."""

    def backend_done(self, backend: str) -> None:
        """A backend has run all its trials."""


@dataclass(frozen=True)
class Stop:
    """Why a run ended before its plan did: status state, reason, exit code."""

    state: str
    reason: str
    exit_code: int


@dataclass
class Outcome:
    """What a run produced: its directory, what failed, how many rows it holds, and how it ended."""

    run_dir: Path
    failed: list[str] = field(default_factory=list)
    n_runs: int = 0
    stop: Stop | None = None
    warnings: list[str] = field(default_factory=list)
    restore_error: str | None = None  # the original settings could not be put back
    error: UserError | None = None  # bad input found mid-run, raised again after the status is written
    status: st.RunStatus | None = field(default=None, repr=False)
    # a signal after the ending was written (render_pending), before the report: the caller says so as it would
    # inside the report's writing
    late_signal: BaseException | None = field(default=None, repr=False)

    @property
    def report_due(self) -> bool:
        """Whether the caller writes a report next: rows were measured and `run` returns (raises no error)."""
        return self.n_runs > 0 and self.error is None

    @property
    def interrupted(self) -> bool:
        """Whether a signal (SIGINT, SIGTERM, SIGHUP) stopped the run."""
        return self.stop is not None and self.stop.state == st.INTERRUPTED

    def ending(self) -> tuple[str, int, str]:
        """(status state, exit code, reason) of the run as a whole."""
        if self.stop is not None:
            state, code, reason = self.stop.state, self.stop.exit_code, self.stop.reason
        elif self.failed or self.warnings:
            notes = [f"failed: {', '.join(self.failed)}"] if self.failed else []
            state, code, reason = st.FAILURES, st.EXIT_FAILURES, "; ".join(notes + self.warnings)
        else:
            state, code, reason = st.FINISHED, st.EXIT_OK, ""
        if self.restore_error is not None:
            not_back = _not_restored(self.restore_error)
            code, reason = st.EXIT_NOT_RESTORED, f"{reason}; {not_back}" if reason else not_back
        return state, code, reason


def _not_restored(error: str) -> str:
    return f"the original settings could not be restored ({error}): run `luce-bench restore`"


class NotRestored(UserError):
    """A run that ended before its first row and could not put the original settings back: exit 5."""

    exit_code = st.EXIT_NOT_RESTORED


def no_sweep_running(gpu: Any) -> None:
    """A run that changes nothing still measures under the GPU's settings: refuse while a sweep is changing them.

    A simulated card without a state file is this process's own: no other process's sweep can change it.
    """
    from luce_bench.gpu.journal import GpuLock

    if getattr(gpu, "private", False):
        return
    try:
        uuid = gpu.uuid()
    except GPUError:
        return  # (a card that cannot name itself has no lock either)
    holder = GpuLock(uuid).holder()
    if holder is not None:
        raise UserError(
            f"another luce-bench process (pid {holder}) is sweeping power limits on {uuid}: these measurements "
            "would run under its settings; wait for it to finish"
        )


def preflight(gpu: Any, locks_clocks: bool = False, sets_limits: bool = True) -> None:
    """Stop before anything changes when settings cannot be changed; the message says how to run it."""
    what = (
        " and ".join(["changes power limits"] * sets_limits + ["locks SM clocks"] * locks_clocks)
        or "changes GPU settings"
    )
    try:
        gpu.check_writable()
    except GPUReadOnlyError:
        raise UserError(
            f"read-only mode ({READONLY_ENV}=1 or --read-only): this sweep {what}; unset {READONLY_ENV} / drop "
            "--read-only, or use `luce-bench bench` to measure at the settings in force"
        ) from None
    except GPUPermissionError as exc:
        if locks_clocks and not sets_limits:  # a clocks-only sweep runs at the limit in force: the lock is the cause
            raise UserError(
                f"no permission to lock the SM clocks of GPU {gpu.index}: {CLOCK_HINT}. "
                "`luce-bench bench`/`compare` measure at the clocks in force without any privilege."
            ) from None
        raise UserError(f"{exc} Also, {CLOCK_HINT}" if locks_clocks else str(exc)) from None


@contextlib.contextmanager
def signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGHUP raise SystemExit(128 + signal) where they would kill the process outright (main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    saved = {}
    for sig in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if sig is not None and signal.getsignal(sig) is signal.SIG_DFL:
            saved[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)


def _signal_stop(code: object) -> Stop:
    try:
        name = signal.Signals(int(code) - 128).name  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return Stop(st.STOPPED, f"exit requested ({code})", code if isinstance(code, int) else 1)
    return Stop(st.INTERRUPTED, f"interrupted by {name}", int(code))  # type: ignore[call-overload]


def identity(plan: Plan, ctx: RunContext) -> dict[str, Any]:
    """What status.json records so that `sweep --resume` can tell the same run from another."""
    cfg = {k: v for k, v in ctx.cfg.to_dict().items() if k != "output_dir"}
    uuid = None
    with contextlib.suppress(GPUError, AttributeError):
        uuid = ctx.gpu.uuid() if ctx.gpu is not None else None
    return {
        "command": plan.name,
        "config_sha256": st.sha256_json(cfg),
        "plan_sha256": fingerprint(plan, ctx.cfg.reps),
        "gpu_uuid": uuid,
        "rows_planned": len(plan.trials) * ctx.cfg.reps,
    }


@dataclass(frozen=True)
class Resume:
    """What a resumed run continues: its directory, its status, the repetitions still missing per trial."""

    run_dir: Path
    status: dict[str, Any]
    todo: dict[Any, list[int]]
    t_offset_s: float = 0.0


def _open_dir(plan: Plan, ctx: RunContext, resume: Resume | None) -> RunWriter:
    if resume is not None:
        return RunWriter.reopen(resume.run_dir)
    return RunWriter.create(ctx.cfg.output_dir, plan.name)


def _in_dir(plan: Plan, ctx: RunContext, ui: UI, control: Any, resume: Resume | None) -> Outcome:
    """Create (or reopen) the run directory and run the loop in it; stops are recorded, not raised."""
    writer = _open_dir(plan, ctx, resume)
    if resume is not None and isinstance(ctx.clock, SimClock):  # virtual time: the wall clock goes on, as the timeline
        ctx.clock.continue_wall(resume.t_offset_s)
    if resume is not None:  # said here, once the controller took the GPU (a stale journal refuses before this)
        todo = sum(len(r) for r in resume.todo.values())
        ui.status(f"resuming {resume.run_dir}: {todo} repetitions to measure")
    if control is not None:
        control.run_dir = str(writer.dir.resolve())  # `luce-bench restore` may run from another directory
    status = st.RunStatus.start(writer.dir, identity(plan, ctx), writer.n_runs, resume.status if resume else None)
    outcome = Outcome(writer.dir, status=status)
    work = plan if resume is None else plan.only([t for t in plan.trials if t in resume.todo])
    try:
        todo, offset = (resume.todo, resume.t_offset_s) if resume is not None else (None, 0.0)
        loop = RunLoop(work, ctx, ui, writer, control, outcome, status, todo, offset)
        with warnings_to_log(writer.dir), loop:
            loop.execute()
    except KeyboardInterrupt:
        outcome.stop = Stop(st.INTERRUPTED, "interrupted by SIGINT", 130)
    except SystemExit as exc:
        outcome.stop = _signal_stop(exc.code)
    except RunDirError as exc:
        if writer.n_runs == 0 and resume is None:  # a full disk before the first row: no empty run directory left
            writer.discard()
            raise WriteError(f"{exc}; nothing was measured, and the run directory was removed") from exc
        outcome.stop = Stop(st.STOPPED, f"run directory not writable: {exc}", st.EXIT_DISK)
    except GPUError as exc:
        outcome.stop = Stop(st.STOPPED, f"GPU error: {exc}", st.EXIT_GPU_FAULT)
    except UserError as exc:
        if writer.n_runs == 0 and resume is None:  # nothing measured: leave no run directory behind
            writer.discard()
            raise
        code = getattr(exc, "exit_code", st.EXIT_BAD_INPUT)  # (a WriteError: the disk, EXIT_DISK)
        outcome.stop, outcome.error = Stop(st.STOPPED, f"error: {exc}", code), exc
    except OSError as exc:  # the console (stdout full or closed), or a file outside the run directory's writers
        where = f" {exc.filename}" if exc.filename else ""
        outcome.stop = Stop(st.STOPPED, f"cannot write{where}: {exc.strerror or exc}", st.EXIT_DISK)
        # (a closed pipe stops a run as a full console does, exit 4 and said: not the quiet exit of other commands)
        outcome.error = WriteError(outcome.stop.reason) if isinstance(exc, BrokenPipeError) else exc
    finally:
        outcome.n_runs = writer.n_runs
    return outcome


def _finish(outcome: Outcome, control: Any) -> None:
    state, code, reason = outcome.ending()
    restored = None if control is None or not control.changed else outcome.restore_error is None
    if outcome.status is not None:
        outcome.status.finish(
            state,
            code,
            reason,
            rows=outcome.n_runs,
            warnings=outcome.warnings,
            settings_restored=restored,
            # the caller writes the report next (unless `run` raises the run's error): until then it is due
            render=outcome.report_due,
        )


def run(plan: Plan, ctx: RunContext, ui: UI, persistence: bool = True, resume: Resume | None = None) -> Outcome:
    """Run every trial of `plan` (see the module docstring); the caller renders the report and exits with the code."""
    control = None
    if plan.changes_gpu:
        from luce_bench.gpu.power_limit import PowerLimitController

        preflight(ctx.gpu, plan.locks_clocks, plan.sets_limits)
        control = PowerLimitController(ctx.gpu, fake=ctx.fake_preset, persistence=persistence, log=ui.status)
    elif ctx.gpu is not None:
        no_sweep_running(ctx.gpu)
    outcome: Outcome | None = None
    with signals_stop_the_run():
        try:
            with control or contextlib.nullcontext():
                outcome = _in_dir(plan, ctx, ui, control, resume)
        except GPUError as exc:
            if outcome is None:  # the controller refused to start (lock, stale journal): nothing exists yet
                raise
            outcome.restore_error = str(exc)
        except UserError as exc:  # nothing was measured and no run directory is left; a setting made is said restored
            if control is not None and control.restore_error is not None:  # (the journal stays for `restore`)
                raise NotRestored(f"{exc}; {_not_restored(control.restore_error)}") from exc
            if control is not None and control.changed and ctx.gpu is not None:
                _say_restored(ctx, plan, ui)
            raise
        if outcome is not None and control is not None and control.restore_error and not outcome.restore_error:
            outcome.restore_error = control.restore_error
        assert outcome is not None
        _finish(outcome, control)
        try:
            if control is not None and outcome.restore_error is None and ctx.gpu is not None:
                _say_restored(ctx, plan, ui, changed=control.changed)
        except (KeyboardInterrupt, SystemExit) as exc:
            if not outcome.report_due:  # the signal ends the process
                raise
            outcome.late_signal = exc  # (the status waits for the report: the caller says so as it would there)
        except OSError:  # a console gone with the signal (`sweep | tee log` and Ctrl-C): the report comes first
            if not outcome.interrupted:
                raise
    if outcome.error is not None:
        raise outcome.error
    return outcome


def _say_restored(ctx: RunContext, plan: Plan, ui: UI, changed: bool = True) -> None:
    from luce_bench.gpu.journal import lock_text

    if plan.sets_limits:  # (a clocks-only sweep leaves the limit alone: nothing to say of it)
        with contextlib.suppress(GPUError):
            set_mw, enforced_mw = ctx.gpu.management_limit_mw(), ctx.gpu.power_limit_mw()  # type: ignore[union-attr]
            watts = f"{set_mw / 1000:g} W"
            if enforced_mw < set_mw:  # another cap (a BMC's) holds the card below the limit put back
                watts += f" (enforced {enforced_mw / 1000:g} W: another cap holds the card lower)"
            ui.status(f"power limit restored to {watts}" if changed else f"power limit unchanged ({watts})")
    if not changed:  # stopped before the first setting: nothing to restore, and nothing said to be
        if plan.locks_clocks:
            ui.status("SM clocks unchanged")
        return
    with contextlib.suppress(GPUError):
        if plan.locks_clocks:
            try:
                lock = lock_text(ctx.gpu.locked_sm_clocks_mhz())  # type: ignore[union-attr]
            except GPUError:
                lock = "lock reset; NVML cannot read it back"
            ui.status(f"SM clocks restored ({lock})")
