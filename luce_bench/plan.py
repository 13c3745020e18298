"""What a run will measure, decided and checked before anything starts: `plan(...) -> Plan`, a list of `Trial`s.

A trial is (backend, test, setting); a `Setting` is the GPU state it runs under: a power limit, a locked SM clock,
both, or neither (the state in force). `compare` and `bench` are one setting (the current one) times their backends
and tests; `sweep` is one setting per power limit, per SM clock, or per cell of their grid (`sweep_settings`). Trials
are ordered setting > backend > test, so each setting is applied once. The rules every run shares live here: unknown
or unavailable backends, the `auto` model, tests that do not fit the model, limits outside the card's range, clocks
it does not support. A bad plan is a UserError before any run directory exists and before any setting changes.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from luce_bench.backends import get as get_backend
from luce_bench.backends import unavailable_reason
from luce_bench.backends.base import ModelSpec
from luce_bench.config import (
    AUTO_LIMITS,
    AUTO_SHARES,
    MAX_TEST_TOKENS,
    BenchConfig,
    TestSpec,
    parse_limit,
    refuse_repeats,
)
from luce_bench.context import RunContext
from luce_bench.errors import UserError
from luce_bench.gpu.base import GPU, GPUError
from luce_bench.sm_clocks import ClockTarget, parse_clocks


@dataclass(frozen=True)
class LimitTarget:
    """One requested power limit: what the user wrote, what it resolves to, and whether --clamp moved it."""

    text: str
    requested_mw: int
    clamped: bool = False

    @property
    def requested_w(self) -> float:
        """Requested limit. Units: W."""
        return self.requested_mw / 1000.0


@dataclass(frozen=True)
class Setting:
    """The GPU state a block of trials runs under; an empty setting measures the state in force, read-only."""

    power_limit: LimitTarget | None = None
    sm_clock: ClockTarget | None = None  # the SM clock is locked (min = max) to `sm_clock.locked_mhz`

    @property
    def changes_gpu(self) -> bool:
        """Whether luce-bench must change the GPU for this setting."""
        return self.power_limit is not None or self.sm_clock is not None

    @property
    def label(self) -> str:
        """Short name, e.g. "300W", "1605MHz" or "300W/1605MHz" ("" for the state in force)."""
        parts = [f"{self.power_limit.requested_w:g}W"] if self.power_limit else []
        parts += [f"{self.sm_clock.locked_mhz}MHz"] if self.sm_clock else []
        return "/".join(parts)


@dataclass(frozen=True)
class Trial:
    """One backend running one test under one setting: a warm-up and `reps` energy windows."""

    backend: str
    test: TestSpec
    setting: Setting = Setting()


@dataclass(frozen=True)
class Plan:
    """Everything a run will do, in order."""

    name: str  # run directory suffix: compare, bench-hf, sweep
    model: ModelSpec
    trials: tuple[Trial, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # optional backends that cannot run here, and why
    optional: tuple[str, ...] = ()  # backends skipped, not failed, when they turn out unavailable while loading
    notes: tuple[str, ...] = ()  # for the user, before the run starts
    trials_planned: tuple[Trial, ...] = ()  # every trial of the whole plan, in order (set by `only`)

    @property
    def backends(self) -> list[str]:
        """Backends in order of first use."""
        return list(dict.fromkeys(t.backend for t in self.trials))

    @property
    def changes_gpu(self) -> bool:
        """Whether any trial needs a GPU setting changed."""
        return any(t.setting.changes_gpu for t in self.trials)

    @property
    def sets_limits(self) -> bool:
        """Whether any trial sets a power limit."""
        return any(t.setting.power_limit is not None for t in self.trials)

    @property
    def locks_clocks(self) -> bool:
        """Whether any trial locks the SM clock."""
        return any(t.setting.sm_clock is not None for t in self.trials)

    def blocks(self) -> Iterator[tuple[Setting, list[Trial]]]:
        """Consecutive trials sharing a setting."""
        for setting, trials in itertools.groupby(self.trials, key=lambda t: t.setting):
            yield setting, list(trials)

    def only(self, trials: Sequence[Trial]) -> Plan:
        """This plan with just `trials` (in their order here): what a resumed run still has to do."""
        keep = set(trials)
        planned = self.trials_planned or self.trials
        return dataclasses.replace(self, trials=tuple(t for t in self.trials if t in keep), trials_planned=planned)

    def position(self, setting: Setting) -> tuple[int, int]:
        """(index, count) of `setting` among the whole plan's settings: a resumed run numbers them as the first did."""
        whole = self.trials_planned or self.trials
        order = [s for s, _ in itertools.groupby(t.setting for t in whole)]
        return order.index(setting), len(order)

    def trial_position(self, trial: Trial) -> tuple[int, int]:
        """(number from 1, count) of `trial` among the whole plan's trials, as `position` numbers settings."""
        whole = self.trials_planned or self.trials
        return whole.index(trial) + 1, len(whole)


def trial_key(backend: str, test: str, limit_mw: int | None, clock_mhz: int | None) -> tuple[str, str, int, int]:
    """The identity of a trial, as rows of runs.csv also give it (0: no limit set / no clock locked)."""
    return backend, test, limit_mw or 0, clock_mhz or 0


def key_of(t: Trial) -> tuple[str, str, int, int]:
    """`trial_key` of a planned trial."""
    limit, clock = t.setting.power_limit, t.setting.sm_clock
    return trial_key(t.backend, t.test.name, limit.requested_mw if limit else None, clock.locked_mhz if clock else None)


def fingerprint(plan: Plan, reps: int) -> str:
    """A hash of what `plan` measures, whatever the order: its trials, repetitions and model (for `sweep --resume`)."""
    import hashlib
    import json

    what = {"trials": sorted(key_of(t) for t in plan.trials), "reps": reps, "model": [plan.model.name, plan.model.seed]}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def parse_limits(
    spec: str | Sequence[str | int | float],
    default_mw: int,
    constraints_mw: tuple[int, int],
    clamp: bool = False,
    gpu_name: str = "this GPU",
    where: str = "--limits",
) -> list[LimitTarget]:
    """Resolve "420,300,70%" (W or % of the default limit) and check every value against the card's range.

    `where`: the values' source as an error names it (the flag, or "sweep.limits in config FILE").

    Raises:
        UserError: a malformed value, or one outside `constraints_mw` without `clamp`; nothing has changed yet.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise UserError(f"no power limits given in {where} (e.g. 420,300,220 or 100%,70%,50%)")
    if AUTO_LIMITS in items:  # shares that suit any card: those below its range become its minimum (once)
        if len(items) > 1:
            raise UserError(f"{where}: '{AUTO_LIMITS}' stands alone (it means {', '.join(AUTO_SHARES)})")
        items, clamp = list(AUTO_SHARES), True
    lo, hi = constraints_mw
    out: list[LimitTarget] = []
    bad: list[str] = []
    written: list[tuple[str, float]] = []  # (text, W) of the values in range as written
    for text in items:
        value, percent = parse_limit(text)
        if value <= 0:  # (config.py refuses it first; a tiny value that rounds to 0 mW is out of range below)
            raise UserError(f"bad power limit {text!r}: must be positive")
        mw = round(value / 100.0 * default_mw) if percent else round(value * 1000.0)
        clamped = False
        if not lo <= mw <= hi:
            if not clamp:
                as_written = text.lower().removesuffix("w").strip() == f"{mw / 1000:g}"  # ("70%" is not "294 W")
                bad.append(f"{mw / 1000:g} W" if as_written else f"{text} ({mw / 1000:g} W)")
                continue
            mw, clamped = min(max(mw, lo), hi), True
        if not clamped:
            written.append((text, mw / 1000))
        if all(t.requested_mw != mw for t in out):
            out.append(LimitTarget(text, mw, clamped))
    if bad:
        raise UserError(
            f"power limit {', '.join(bad)} outside the range of {gpu_name}: {lo / 1000:g}-{hi / 1000:g} W "
            f"(default {default_mw / 1000:g} W); fix {where} or pass --clamp"
        )
    # a typo, not a wish: clamped values merge
    refuse_repeats("power limit", "W", written, "" if where.startswith("--") else where)
    return out


def order_targets(
    targets: Sequence[LimitTarget], order: str = "descending", seed: int | None = None
) -> list[LimitTarget]:
    """Descending (default), ascending, or shuffled with `seed` (measurement.md rule 7: heat biases a fixed order)."""
    if order == "descending":
        return sorted(targets, key=lambda t: -t.requested_mw)
    if order == "ascending":
        return sorted(targets, key=lambda t: t.requested_mw)
    if order == "shuffle":
        out = list(targets)
        random.Random(seed).shuffle(out)
        return out
    raise UserError(f"bad sweep order {order!r}; expected descending, ascending or shuffle")


def limit_settings(cfg: BenchConfig, gpu: GPU, where: str = "--limits") -> list[Setting]:
    """One setting per configured power limit, validated against `gpu`'s range, in the configured order."""
    targets = parse_limits(
        cfg.sweep.limits,
        gpu.default_power_limit_mw(),
        gpu.power_limit_constraints_mw(),
        clamp=cfg.sweep.clamp,
        gpu_name=gpu.name(),
        where=where,
    )
    return [Setting(power_limit=t) for t in order_targets(targets, cfg.sweep.order, cfg.sweep.shuffle_seed)]


def clock_targets(cfg: BenchConfig, gpu: GPU, where: str = "--clocks") -> list[ClockTarget]:
    """The configured SM clocks resolved against `gpu`'s supported clocks; UserError where it cannot lock clocks."""
    try:
        supported = gpu.supported_sm_clocks_mhz()
    except GPUError as exc:
        raise UserError(f"cannot sweep SM clocks on {gpu.name()}: {exc}; sweep --limits only") from None
    return parse_clocks(cfg.sweep.clocks, supported, clamp=cfg.sweep.clamp, gpu_name=gpu.name(), where=where)


def _sort_key(s: Setting) -> tuple[int, int]:
    return (s.power_limit.requested_mw if s.power_limit else 0, s.sm_clock.locked_mhz if s.sm_clock else 0)


def order_settings(settings: Sequence[Setting], order: str = "descending", seed: int | None = None) -> list[Setting]:
    """Limit-major then clock, descending (default) or ascending; or the whole list shuffled with `seed`."""
    if order == "shuffle":
        out = list(settings)
        random.Random(seed).shuffle(out)
        return out
    if order not in ("descending", "ascending"):
        raise UserError(f"bad sweep order {order!r}; expected descending, ascending or shuffle")
    return sorted(settings, key=_sort_key, reverse=order == "descending")


def sweep_settings(cfg: BenchConfig, gpu: GPU, sources: dict[str, str] | None = None) -> list[Setting]:
    """One setting per power limit, per SM clock, or per cell of their grid, validated against `gpu`, in order.

    Limits only: exactly `limit_settings`. A limit sweep's order is kept for each axis of a grid; shuffle shuffles
    the cells. `sources`: where "limits" and "clocks" came from, as errors name them (default: their flags).
    """
    where = {"limits": "--limits", "clocks": "--clocks", **(sources or {})}
    if not cfg.sweep.clocks:
        return limit_settings(cfg, gpu, where["limits"])
    clocks = clock_targets(cfg, gpu, where["clocks"])
    limits: list[LimitTarget | None] = [None]
    if cfg.sweep.limits:
        default_mw, range_mw = gpu.default_power_limit_mw(), gpu.power_limit_constraints_mw()
        limits = list(
            parse_limits(cfg.sweep.limits, default_mw, range_mw, cfg.sweep.clamp, gpu.name(), where["limits"])
        )
    cells = [Setting(power_limit=lim, sm_clock=clk) for lim in limits for clk in clocks]
    return order_settings(cells, cfg.sweep.order, cfg.sweep.shuffle_seed)


def merge_notes(cfg: BenchConfig, settings: Sequence[Setting]) -> tuple[str, ...]:
    """A note per axis on which requests merged into an earlier one's setting.

    Requests clamped to the same end of the range, or snapped to the same supported clock, are measured once: the
    user should know which asked-for values have no row of their own.
    """
    notes = []
    axes = (
        ("power limit", cfg.sweep.limits, {s.power_limit.text for s in settings if s.power_limit}),
        ("SM clock", cfg.sweep.clocks, {s.sm_clock.text for s in settings if s.sm_clock}),
    )
    for what, spec, kept in axes:
        items = [str(s).strip() for s in spec if str(s).strip()]
        if not kept or items == [AUTO_LIMITS]:
            continue
        unit = " W" if what == "power limit" else " MHz"
        merged = [s + unit if s.replace(".", "", 1).isdigit() else s for s in items if s not in kept]  # (420w: its own)
        if merged:
            notes.append(
                f"{what} {', '.join(merged)}: the same setting as an earlier request once "
                f"{'snapped to a supported clock or ' if what == 'SM clock' else ''}clamped to the range; measured once"
            )
    return tuple(notes)


TINY_NOTE = (
    "no CUDA GPU in use: running the CPU-capable backends on the tiny synthetic model (same architecture, small "
    "shapes). Use --model synthetic-0.8b to force the full size."
)


def model_name(cfg: BenchConfig, ctx: RunContext) -> str:
    """`auto` means synthetic-0.8b on a real GPU and the tiny synthetic model otherwise (simulated or no GPU)."""
    if cfg.model != "auto":
        return cfg.model
    return "synthetic-0.8b" if ctx.gpu is not None and ctx.fake_gpu is None else "tiny"


def check_tests_fit(tests: Sequence[TestSpec], model: ModelSpec) -> None:
    """Refuse tests (their depth included) longer than the model's positions (or than MAX_TEST_TOKENS)."""
    limit = min(model.config.max_position_embeddings, MAX_TEST_TOKENS)
    for t in tests:
        if t.positions > limit:
            raise UserError(f"test {t.name} needs {t.positions} positions; {model.name} allows at most {limit}")


def _runnable(names: Sequence[str], optional: Sequence[str], ctx: RunContext) -> tuple[list[str], dict[str, str]]:
    """(backends that can run, {optional backend: why not}); a named backend that cannot run is bad input."""
    for name in names:
        get_backend(name)  # unknown names first, whatever else is wrong
    keep, skipped = [], {}
    for name in dict.fromkeys(names):
        reason = unavailable_reason(name, simulated_gpu=ctx.fake_gpu is not None)
        if reason and name not in optional:
            raise UserError(f"backend {name} cannot run here: {reason}")
        if not reason and ctx.virtual_time and not get_backend(name).simulated:
            reason = "it runs in real time, and gpu.fake_clock: virtual runs only simulated backends (sim)"
            if name not in optional:  # (named: bad input; `all` skips it with the others that cannot run here)
                raise UserError(f"gpu.fake_clock: virtual runs only simulated backends (sim); {name} runs in real time")
        if reason:
            skipped[name] = reason
        else:
            keep.append(name)
    _refuse_if_none_left(keep, skipped, ctx.fake_gpu is not None)
    return keep, skipped


def _refuse_if_none_left(keep: Sequence[str], skipped: dict[str, str], simulated_gpu: bool = False) -> None:
    if not keep and skipped:
        hint = (
            " (on the simulated GPU its own backend runs: compare --baselines sim, bench sim, sweep --backends sim)"
            if simulated_gpu and "sim" not in skipped
            else ""
        )
        raise UserError("no backend can run here: " + "; ".join(f"{n}: {why}" for n, why in skipped.items()) + hint)


def _serving(keep: list[str], optional: Sequence[str], model: ModelSpec, skipped: dict[str, str]) -> list[str]:
    """The backends of `keep` that can run `model`.

    An optional one that cannot is skipped (its reason kept in `skipped`); a named one is refused.
    """
    out = []
    for name in keep:
        reason = get_backend(name).model_reason(model)
        if reason and name not in optional:
            raise UserError(reason)
        if reason:
            skipped[name] = reason
        else:
            out.append(name)
    _refuse_if_none_left(out, skipped)
    return out


def cuda_gpu_visible(ctx: RunContext) -> bool:
    """Whether this process can see a CUDA GPU, told without importing torch (seconds).

    Visible: CUDA_VISIBLE_DEVICES does not hide them, and NVML opened a real GPU for this run or the driver lists one
    (/proc/driver/nvidia/gpus).
    """
    import os

    from luce_bench.backends.llamacpp import HIDING, nvidia_gpu_present

    if os.environ.get("CUDA_VISIBLE_DEVICES") in HIDING:
        return False
    return (ctx.gpu is not None and ctx.fake_gpu is None) or nvidia_gpu_present()


def check_device(device: str, backends: Sequence[str], ctx: RunContext) -> None:
    """Refuse `--device cuda` before the run starts where no CUDA GPU is visible (a simulated one does not count).

    Without this, every backend would find out while loading, one after the other, seconds into the run.
    """
    if not device.startswith("cuda") or all(get_backend(b).simulated for b in backends):
        return
    if not cuda_gpu_visible(ctx):
        raise UserError(
            f"device {device} (--device, or `device:` in the config): no CUDA GPU visible here; use auto or cpu"
        )


def plan(
    cfg: BenchConfig,
    ctx: RunContext,
    *,
    name: str,
    backends: Sequence[str],
    optional: Sequence[str] = (),
    settings: Sequence[Setting] = (Setting(),),
    notes: Sequence[str] = (),
) -> Plan:
    """Check the request against this machine and resolve it into trials (setting > backend > test)."""
    from luce_bench.model.resolve import resolve_model

    keep, skipped = _runnable(backends, optional, ctx)
    check_device(cfg.device, keep, ctx)
    tests = cfg.test_specs
    chosen = model_name(cfg, ctx)
    model = resolve_model(chosen, seed=cfg.model_seed)
    keep = _serving(keep, optional, model, skipped)
    runs_a_model = any(not get_backend(b).simulated for b in keep)  # the simulated backend runs no model
    notes = (*notes, *((TINY_NOTE,) if cfg.model == "auto" and chosen == "tiny" and runs_a_model else ()))
    check_tests_fit(tests, model)
    for backend in keep:  # files a backend would fail on (a damaged cached GGUF) are refused now, not mid-run
        get_backend(backend).check_model(model, **ctx.backend_kwargs(backend))
    trials = tuple(Trial(b, t, s) for s in settings for b in keep for t in tests)
    optional_kept = tuple(b for b in keep if b in optional)
    return Plan(name=name, model=model, trials=trials, skipped=skipped, optional=optional_kept, notes=notes)
