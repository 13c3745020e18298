"""The one run loop: a `Plan` on a `RunContext` becomes a run directory. compare, bench and sweep all run here.

Order (measurement.md rules 6-10; llama-bench's "minimise reloads"):
1. A plan that changes GPU settings first checks that setters work (read-only mode, root / CAP_SYS_ADMIN), takes the
   GPU's lock and refuses a stale journal (`PowerLimitController`), and loads every backend before the first change;
   they stay resident for the whole run. Otherwise each backend is loaded just before its first trial and closed
   after its last one.
2. Per block of trials sharing a setting: apply it (settings.py: lock the SM clock, set the limit, each journalled
   first and read back), settle under load (`sweep.settle_s`), measure the idle baseline with the models resident
   (`sweep.idle_s`).
3. Per trial: cool down towards the run's start temperature, warm up, `reps` energy windows (measure.py). Rows and
   samples are appended to the run directory as they finish.
4. After a changed setting: cool down. The ORIGINAL limit and clock lock come back on every exit path
   (`luce-bench restore` after SIGKILL).
A backend that fails to load or crashes is recorded and the run goes on (exit code 1 at the end); bad input
(UserError), GPU errors and interrupts stop the run.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from luce_bench.backends.base import Backend
from luce_bench.context import RunContext
from luce_bench.errors import UserError
from luce_bench.gpu.base import CLOCK_HINT, GPUError, GPUPermissionError, GPUReadOnlyError
from luce_bench.measure import Conditions, Meter
from luce_bench.plan import Plan, Setting, Trial
from luce_bench.provenance import run_meta
from luce_bench.records import RunRecord
from luce_bench.results import RunWriter
from luce_bench.sampler import Sampler
from luce_bench.settings import apply_setting, current_limit_w, setting_meta, status_line, sweep_meta
from luce_bench.summary import token_agreement


class UI(Protocol):
    """What the loop tells the user (the CLI's console; tests may pass a silent one)."""

    def status(self, msg: str) -> None:
        """One line of news."""

    def loading(self, backend: str, model: str) -> contextlib.AbstractContextManager[Any]:
        """Around loading a backend."""

    def progress(self, label: str, done: int, total: int) -> None:
        """Repetitions of one trial done so far."""

    def record(self, record: RunRecord) -> None:
        """A finished repetition."""

    def backend_done(self, backend: str) -> None:
        """A backend has run all its trials."""


@dataclass
class Outcome:
    """What a run produced: its directory, what failed, how many repetitions finished, whether it was interrupted."""

    run_dir: Path
    failed: list[str] = field(default_factory=list)
    n_runs: int = 0
    interrupted: bool = False


def preflight(gpu: Any, locks_clocks: bool = False) -> None:
    """Stop before anything changes when settings cannot be changed; the message says how to run it."""
    what = "changes power limits and locks SM clocks" if locks_clocks else "changes power limits"
    try:
        gpu.check_writable()
    except GPUReadOnlyError as exc:
        raise UserError(
            f"{exc}. A sweep {what}; unset LUCE_BENCH_READONLY / drop --read-only, or use "
            "`luce-bench bench` to measure at the current limit"
        ) from None
    except GPUPermissionError as exc:
        raise UserError(f"{exc} Also, {CLOCK_HINT}" if locks_clocks else str(exc)) from None


def run(plan: Plan, ctx: RunContext, ui: UI, persistence: bool = True) -> Outcome:
    """Run every trial of `plan` (see the module docstring); the caller renders the report."""
    control = None
    if plan.changes_gpu:
        from luce_bench.gpu.power_limit import PowerLimitController

        preflight(ctx.gpu, plan.locks_clocks)
        control = PowerLimitController(ctx.gpu, fake=ctx.fake_preset, persistence=persistence, log=ui.status)
    with control or contextlib.nullcontext():
        writer = RunWriter.create(ctx.cfg.output_dir, plan.name)
        outcome = Outcome(writer.dir)
        try:
            with _Run(plan, ctx, ui, writer, control, outcome) as r:
                r.execute()
        except KeyboardInterrupt:
            outcome.interrupted = True
        except UserError:
            if writer.n_runs == 0:  # nothing measured: leave no run directory behind
                shutil.rmtree(writer.dir, ignore_errors=True)
            raise
        finally:
            outcome.n_runs = writer.n_runs
    if control is not None and not outcome.interrupted and ctx.gpu is not None:
        ui.status(f"power limit restored to {ctx.gpu.power_limit_mw() / 1000:g} W")
        if plan.locks_clocks:
            ui.status("SM clocks restored (" + _lock_state(ctx.gpu) + ")")
    return outcome


def _lock_state(gpu: Any) -> str:
    from luce_bench.gpu.journal import lock_text

    try:
        return lock_text(gpu.locked_sm_clocks_mhz())
    except GPUError:
        return "lock reset; NVML cannot read it back"


class _Run:
    """State of one run: loaded backends, the meter, meta.json."""

    def __init__(self, plan: Plan, ctx: RunContext, ui: UI, writer: RunWriter, control: Any, outcome: Outcome):
        self.plan, self.ctx, self.ui, self.writer, self.control, self.outcome = plan, ctx, ui, writer, control, outcome
        self.sampler = Sampler(ctx.gpu, ctx.cfg.sampler.period_s, ctx.clock) if ctx.gpu is not None else None
        self.meter = Meter(ctx, plan.model, self.sampler, self._on_record, ui.progress, ui.status)
        self.loaded: dict[str, Backend] = {}
        self.dead: set[str] = set()  # failed to load, or (not resident) failed in a trial
        self.backend_meta: dict[str, Any] = {n: {"skipped": r} for n, r in plan.skipped.items()}
        self.resident = plan.changes_gpu
        self.last_trial = {t.backend: t for t in plan.trials}  # trials are unique
        self.drained = 0
        self.settings_meta: list[dict[str, Any]] = []

    def __enter__(self) -> _Run:
        if self.sampler is not None:
            self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for name in list(self.loaded):
                self._close(name)
            if self.sampler is not None:
                self.sampler.stop()
            self._flush_samples()
        finally:
            self.writer.close()

    def execute(self) -> None:
        """The loop."""
        sweep = sweep_meta(self.plan, self.ctx.cfg, self.ctx.gpu, self.ctx.clock.unix_s())
        self.writer.write_meta({**run_meta(self.ctx, self.plan.model), **({"sweep": sweep} if sweep else {})})
        self.writer.write_meta({"backends": self.backend_meta})
        for skipped in self.plan.skipped.items():
            self.ui.status("[yellow]skipping {}:[/yellow] {}".format(*skipped))
        if self.resident:
            for name in self.plan.backends:
                self._load(name)
            if not self.loaded and self.plan.trials:
                names = ", ".join(self.plan.backends)
                self.ui.status(f"[red]no backend could be loaded ({names}): no setting was changed[/red]")
                return
        current = Conditions(enforced_w=current_limit_w(self.ctx.gpu))
        for i, (setting, trials) in enumerate(self.plan.blocks()):
            failed_here: set[str] = set()
            limit = self._apply(setting, i) if setting.changes_gpu else current
            for trial in trials:
                if trial.backend not in failed_here:
                    self._trial(trial, limit, failed_here)
            if setting.changes_gpu:
                self.meter.cooldown()  # towards the run's start temperature, bounded by cooldown.max_s
        self._flush_samples()
        self.writer.write_meta(self._final_meta())

    # --- backends ----------------------------------------------------------------------------------------------------
    def _load(self, name: str) -> Backend | None:
        if name in self.loaded or name in self.dead:
            return self.loaded.get(name)
        backend = self.ctx.create_backend(name)
        try:
            with self.ui.loading(name, self.plan.model.name):
                backend.load(self.plan.model, self.ctx.cfg.device)
        except (UserError, GPUError, KeyboardInterrupt):
            backend.close()
            raise
        except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the others
            backend.close()
            self._fail(name, name, exc, "failed to load", dead=True)
            return None
        self.loaded[name] = backend
        return backend

    def _close(self, name: str) -> None:
        backend = self.loaded.pop(name)
        try:
            info = backend.info()
        except Exception as exc:  # noqa: BLE001 - provenance must not hide the run's own outcome
            info = {"info_error": f"{type(exc).__name__}: {exc}"}
        finally:
            backend.close()
        self.backend_meta[name] = {**info, **self.backend_meta.get(name, {})}
        self.writer.write_meta({"backends": self.backend_meta})
        self.ui.backend_done(name)

    def _fail(self, name: str, label: str, exc: Exception, what: str, dead: bool) -> None:
        """Record a failure of backend `name`; a dead backend is not tried again in this run."""
        self.outcome.failed.append(label)
        self.backend_meta.setdefault(name, {})["error"] = f"{type(exc).__name__}: {exc}"
        self.ui.status(f"[red]{label} {what}:[/red] {type(exc).__name__}: {exc}")
        if dead:
            self.dead.add(name)

    # --- settings and trials -----------------------------------------------------------------------------------------
    def _apply(self, setting: Setting, i: int) -> Conditions:
        """Apply the block's setting, settle under load, measure the idle baseline."""
        applied = apply_setting(self.control, setting, self.ctx.gpu)
        self.ui.status(status_line(setting, applied, i, len(list(self.plan.blocks()))))
        if self.loaded:
            test = self.ctx.cfg.test_specs[0]
            first = next(iter(self.loaded.values()))
            self.meter.loop(first, test, self.meter.prompt(test), max(self.ctx.cfg.sweep.settle_s, 0.0), False)
        idle_w = self.meter.idle_power_w(self.ctx.cfg.sweep.idle_s)
        self.ui.status(f"  idle baseline (models resident): {idle_w:.1f} W" if idle_w else "  idle baseline: n/a")
        t_end_s = self.sampler.now_s() if self.sampler is not None else None
        self.settings_meta.append(setting_meta(setting, applied, idle_w, t_end_s))
        self.writer.write_meta({"sweep_limits": self.settings_meta})
        limit, clock = setting.power_limit, setting.sm_clock
        return Conditions(
            requested_w=limit.requested_w if limit else None,
            enforced_w=applied.enforced_w,
            idle_power_w=idle_w,
            sm_clock_req_mhz=clock.requested_mhz if clock else None,
            sm_clock_mhz=applied.locked_mhz,
        )

    def _trial(self, trial: Trial, limit: Conditions, failed_here: set[str]) -> None:
        backend = self._load(trial.backend)
        if backend is None:
            return
        self.meter.cooldown()
        try:
            self.meter.run_test(backend, trial.test, limit)
        except (UserError, GPUError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - record, go on, exit non-zero at the end
            label = f"{trial.backend}@{trial.setting.label}" if trial.setting.changes_gpu else trial.backend
            failed_here.add(trial.backend)
            self._fail(trial.backend, label, exc, "failed", dead=not self.resident)  # resident: next setting retries
        finally:
            if trial.backend in self.loaded and not self.resident:
                if trial.backend in self.dead or self.last_trial[trial.backend] == trial:
                    self._close(trial.backend)

    def _on_record(self, record: RunRecord) -> None:
        self.writer.add_run(record)
        self._flush_samples()
        self.ui.record(record)

    def _flush_samples(self) -> None:
        if self.sampler is not None:
            new = self.sampler.samples[self.drained :]
            self.drained += len(new)
            self.writer.add_samples(new)

    # --- meta.json ---------------------------------------------------------------------------------------------------
    def _final_meta(self) -> dict[str, Any]:
        return {
            "token_agreement": token_agreement(self.meter.first_tokens),
            "first_tokens": self.meter.first_tokens,
            "sampler": self.sampler.jitter_ms() if self.sampler is not None else None,
        }
