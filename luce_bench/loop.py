"""The loop inside one run: backends, settings, trials, rows; `runner.run` wraps it with the controller and status.

Order (measurement.md rules 6-10; llama-bench's "minimise reloads"):
1. A plan that changes GPU settings loads every backend before the first change; they stay resident for the whole
   run. Otherwise each backend is loaded just before its first trial and closed after its last one.
2. Per block of trials sharing a setting: apply it (settings.py: lock the SM clock, set the limit, each journalled
   first and read back), settle under load (`sweep.settle_s`), measure the idle baseline with the models resident
   (`sweep.idle_s`).
3. Per trial: cool down towards the run's start temperature, warm up, the repetitions' energy windows (measure.py),
   within the test's deadline. Rows and samples are appended to the run directory as they finish.
4. After a changed setting: cool down.
A sweep in rounds (`sweep.rounds` = N) runs steps 2-4 N times over its settings, each pass measuring the repetitions
r with r % N equal to the pass's number (of those still to do, in a resumed run).
A backend that fails to load, crashes or runs past its deadline is recorded and the run goes on (a timed-out backend is
not used again); an optional one (`Plan.optional`) found unavailable while loading (BackendUnavailable, e.g. its
compilation failed) is skipped with its reason, as at plan time. Bad input (UserError), GPU errors, an unwritable run
directory and interrupts stop the run.
Every step is recorded in status.json (`RunStatus.at`) before it starts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

from luce_bench import quality
from luce_bench.appender import RunDirError
from luce_bench.backends.base import Backend, BackendUnavailable
from luce_bench.context import RunContext
from luce_bench.deadline import TrialTimeout
from luce_bench.errors import ConsoleClosed, UserError
from luce_bench.gpu.base import GPUError
from luce_bench.gpu.power_limit import caught_signal, signal_exit
from luce_bench.measure import Conditions, Meter
from luce_bench.plan import Plan, Setting, Trial
from luce_bench.provenance import run_meta
from luce_bench.records import RunRecord
from luce_bench.results import RunWriter
from luce_bench.sampler import Sampler
from luce_bench.settings import apply_setting, current_limit_w, setting_meta, status_line, sweep_meta
from luce_bench.status import RunStatus, utc_now
from luce_bench.summary import token_agreement


class RunLoop:
    """State of one run: loaded backends, the meter, meta.json, status.json (see the module docstring)."""

    def __init__(
        self,
        plan: Plan,
        ctx: RunContext,
        ui: Any,
        writer: RunWriter,
        control: Any,
        outcome: Any,
        status: RunStatus,
        todo: dict[Trial, list[int]] | None = None,
        t_offset_s: float = 0.0,
    ) -> None:
        """Prepare to run `plan` into `writer`; `todo`: a resumed run's repetitions still to measure per trial."""
        self.plan, self.ctx, self.ui, self.writer, self.control = plan, ctx, ui, writer, control
        self.outcome, self.status, self.todo = outcome, status, todo
        self.resumed = todo is not None
        gpu = ctx.gpu
        self.sampler = Sampler(gpu, ctx.cfg.sampler.period_s, ctx.clock, t_offset_s=t_offset_s) if gpu else None
        self.meter = Meter(ctx, plan.model, self.sampler, self._on_record, self._progress, ui.status)
        self.meter.first_tokens.update(writer.meta.get("first_tokens", {}) if self.resumed else {})
        self.loaded: dict[str, Backend] = {}
        self.dead: set[str] = set()  # failed to load, timed out, or (not resident) failed in a trial
        self.backend_meta: dict[str, Any] = dict(writer.meta.get("backends", {})) if self.resumed else {}
        self.backend_meta.update({n: {"skipped": r} for n, r in plan.skipped.items()})
        self.resident = plan.changes_gpu
        self.last_trial = {t.backend: t for t in plan.trials}  # trials are unique
        self.drained = 0
        self.settings_meta: list[dict[str, Any]] = list(writer.meta.get("sweep_limits", [])) if self.resumed else []
        self.counter_resets = 0
        self.start_limit_w: float | None = None  # the limit in force when the loop began (`execute`)

    def __enter__(self) -> RunLoop:
        if self.sampler is not None:
            self.sampler.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            for name in list(self.loaded):
                self._close(name)
            if self.sampler is not None:
                self.sampler.stop()
                if self.sampler.failure:
                    self.outcome.warnings.append(f"the sampler stopped: {self.sampler.failure}")
            if self.counter_resets:
                self.outcome.warnings.append(
                    f"the energy counter went backwards in {self.counter_resets} window(s) (a driver reload?): "
                    "those rows have no energy"
                )
            with contextlib.suppress(RunDirError):  # the run is ending anyway; its first error is what counts
                self._flush_samples()
        finally:
            self.writer.close()

    def execute(self) -> None:
        """The loop."""
        self._write_start_meta()
        for note in self.plan.notes:  # here, not before: bad input (an unusable --out) is refused before any note
            self.ui.status(note, "note:", "yellow")
        for name, why in self.plan.skipped.items():
            self.ui.status(why, f"skipping {name}:", "yellow")
        if self.resident:
            self.status.at(phase="loading")
            for name in self.plan.backends:
                self._load(name)
            if not self.loaded and self.plan.trials:
                names = ", ".join(self.plan.backends)
                self.ui.status(f"no backend could be loaded ({names}): no setting was changed", style="red")
                return
        self.start_limit_w = current_limit_w(self.ctx.gpu)
        current = Conditions(enforced_w=self.start_limit_w, start_limit_w=self.start_limit_w)
        rounds = self.ctx.cfg.sweep.rounds if self.plan.changes_gpu else 1
        for turn in range(rounds):
            for setting, trials in self.plan.blocks():
                reps = {t: r for t in trials if (r := self._round_reps(t, turn, rounds))}
                if not reps:  # (a resumed run: this round of this setting is measured already)
                    continue
                failed_here: set[str] = set()
                where = (*self.plan.position(setting), turn, rounds)
                limit = self._apply(setting, *where) if setting.changes_gpu else current
                for trial in trials:
                    if trial in reps and trial.backend not in failed_here:
                        self._trial(trial, limit, failed_here, reps[trial])
                if setting.changes_gpu:
                    self.status.at(phase="cooldown")
                    self.meter.cooldown()  # towards the run's start temperature, bounded by cooldown.max_s
        self.status.at(phase="done")
        self._flush_samples()
        self.writer.write_meta(self._final_meta())

    def _write_start_meta(self) -> None:
        if self.resumed:  # the first attempt's provenance stays; the attempt is added
            resumes = [
                *self.writer.meta.get("resumes", []),
                {"started_utc": utc_now(), "rows_before": self.writer.n_runs},
            ]
            self.writer.write_meta({"resumes": resumes, "backends": self.backend_meta, **self._sampler_meta()})
            return
        sweep = sweep_meta(self.plan, self.ctx.cfg, self.ctx.gpu, self.ctx.clock.unix_s())
        self.writer.write_meta({**run_meta(self.ctx, self.plan.model), **({"sweep": sweep} if sweep else {})})
        self.writer.write_meta({"backends": self.backend_meta, **self._sampler_meta()})

    def _sampler_meta(self, jitter: bool = False) -> dict[str, Any]:
        """meta.json's `sampler`: the timeline's wall-clock anchor, and at the end (`jitter`) the sampler's jitter.

        The anchor is written at the start too, so a stopped run's windows can still be lined up with an independent
        reader's log (`report --independent`).
        """
        if self.sampler is None:
            return {}
        jitter_ms = self.sampler.jitter_ms() if jitter else {}
        return {"sampler": {**jitter_ms, "origin_unix_s": self.sampler.origin_unix_s}}

    # --- backends ----------------------------------------------------------------------------------------------------
    def _load(self, name: str) -> Backend | None:
        if name in self.loaded or name in self.dead:
            return self.loaded.get(name)
        backend = self.ctx.create_backend(name)
        try:
            with self.ui.loading(name, self.plan.model.name):
                backend.load(self.plan.model, self.ctx.cfg.device)
        except BackendUnavailable as exc:  # before UserError: UnavailableAndBadInput is both
            _close_quietly(backend)
            if name not in self.plan.optional:
                if isinstance(exc, UserError):
                    raise
                self._fail(name, name, exc, "failed to load", dead=True)
                return None
            self.backend_meta[name] = {"skipped": str(exc)}  # e.g. its compilation failed: skipped as at plan time
            self.ui.status(str(exc), f"skipping {name}:", "yellow")
            self.dead.add(name)
            return None
        except (UserError, GPUError, RunDirError, ConsoleClosed, KeyboardInterrupt, SystemExit):
            _close_quietly(backend)  # (a half-loaded backend's close must not replace the exception)
            raise
        except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the others
            _close_quietly(backend)
            if (signum := caught_signal()) is not None:  # a Ctrl-C that the load's imports turned into this
                raise signal_exit(signum) from exc
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

    def _fail(self, name: str, label: str, exc: BaseException, what: str, dead: bool) -> None:
        """Record a failure of backend `name`; a dead backend is not tried again in this run."""
        why = f"{type(exc).__name__}: {exc}"
        if label not in self.outcome.failed:  # (rounds try a setting again: one name each, however often it fails)
            self.outcome.failed.append(label)
        if not any(f.startswith(f"{label} {what}: ") for f in self.status.doc["failed"]):  # (its first reason)
            self.status.doc["failed"].append(f"{label} {what}: {why}")
        self.backend_meta.setdefault(name, {})["error"] = why
        self.ui.status(why, f"{label} {what}:", "red")
        if dead:
            self.dead.add(name)

    # --- settings and trials -----------------------------------------------------------------------------------------
    def _apply(self, setting: Setting, i: int, n: int, turn: int = 0, rounds: int = 1) -> Conditions:
        """Apply the block's setting (setting i of n, in round `turn` of `rounds`), settle under load, measure idle."""
        self.status.at(phase="applying setting", setting=setting.label, backend=None, test=None, rep=None)
        applied = apply_setting(self.control, setting, self.ctx.gpu)
        text, lead = status_line(setting, applied, i, n)
        self.ui.status(text, f"round {turn + 1}/{rounds}, {lead}" if rounds > 1 else lead, "bold")
        sweep = self.ctx.cfg.sweep
        if self.loaded:
            test = self.ctx.cfg.test_specs[0]
            name, first = next(iter(self.loaded.items()))
            settle_s = max(sweep.settle_s, 0.0)
            with self.ui.waiting(f"  settling: {name} {test.name} under load", settle_s):
                self.meter.loop(first, test, self.meter.prompt(test), settle_s, False)
        with self.ui.waiting("  idle baseline (models resident)", sweep.idle_s if self.ctx.gpu is not None else 0.0):
            idle_w = self.meter.idle_power_w(sweep.idle_s)
        self.ui.status(f"  idle baseline (models resident): {idle_w:.1f} W" if idle_w else "  idle baseline: n/a")
        t_end_s = self.sampler.now_s() if self.sampler is not None else None
        entry = setting_meta(setting, applied, idle_w, t_end_s) | ({"round": turn} if rounds > 1 else {})
        self.settings_meta.append({**entry, "resumed": True} if self.resumed else entry)
        self.writer.write_meta({"sweep_limits": self.settings_meta})
        limit, clock = setting.power_limit, setting.sm_clock
        return Conditions(
            requested_w=limit.requested_w if limit else None,
            enforced_w=applied.enforced_w,
            idle_power_w=idle_w,
            sm_clock_req_mhz=clock.requested_mhz if clock else None,
            sm_clock_mhz=applied.locked_mhz,
            start_limit_w=self.start_limit_w,  # (a clocks-only sweep's rows name the limit the run began under)
        )

    def _round_reps(self, trial: Trial, turn: int, rounds: int) -> list[int]:
        """The repetitions of `trial` that round `turn` measures: r % rounds == turn, of those still to do."""
        todo = self.todo.get(trial, []) if self.todo is not None else range(self.ctx.cfg.reps)
        return [r for r in todo if r % rounds == turn]

    def _trial(self, trial: Trial, limit: Conditions, failed_here: set[str], reps: Sequence[int]) -> None:
        number, count = self.plan.trial_position(trial)  # a resumed run numbers its trials as the first did
        where = {"trial": number, "trials": count, "setting": trial.setting.label}
        self.status.at(phase="loading", backend=trial.backend, test=trial.test.name, rep=None, **where)
        backend = self._load(trial.backend)
        if backend is None:
            return
        self.status.at(phase="cooldown")
        self.meter.cooldown()
        self.status.at(phase="warm-up")
        label = f"{trial.backend}@{trial.setting.label}" if trial.setting.changes_gpu else trial.backend
        try:
            self.meter.run_test(backend, trial.test, limit, reps)
        except (UserError, GPUError, RunDirError, ConsoleClosed):  # (the console is written from inside the test)
            raise
        except TrialTimeout as exc:  # a hung backend is not trusted again in this run
            failed_here.add(trial.backend)
            self._fail(trial.backend, label, exc, "timed out", dead=True)
        except Exception as exc:  # noqa: BLE001 - record, go on, exit non-zero at the end
            failed_here.add(trial.backend)
            self._fail(trial.backend, label, exc, "failed", dead=not self.resident)  # resident: next setting retries
        finally:
            if trial.backend in self.loaded:
                last = self.last_trial[trial.backend] == trial and not self.resident
                if trial.backend in self.dead or last:
                    self._close(trial.backend)

    def _progress(self, label: str, done: int, total: int) -> None:
        self.ui.progress(label, done, total)
        if done < total:
            self.status.at(phase="measuring", rep=done)

    def _on_record(self, record: RunRecord) -> None:
        self.counter_resets += quality.COUNTER_RESET in quality.flags_of(record.verdict)
        self.writer.add_run(record)
        self.status.rows(self.writer.n_runs)
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
            "sampler": None,  # (no GPU: nothing sampled)
            **self._sampler_meta(jitter=True),
        }


def _close_quietly(backend: Backend) -> None:
    """Close a backend whose load failed; a failure to close is not the error to report (the load's is)."""
    with contextlib.suppress(Exception):
        backend.close()
