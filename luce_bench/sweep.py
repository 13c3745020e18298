"""`luce-bench sweep`: measure every backend at several GPU power limits and find the sweet spot.

Method (measurement.md rules 6-10, llama-bench's "minimise reloads"):
1. Validate before anything changes: every limit (W, or % of the default limit) is checked against
   nvmlDeviceGetPowerManagementLimitConstraints (out of range is an error naming the card's range, unless --clamp);
   read-only mode, missing root / CAP_SYS_ADMIN, a stale journal or another process holding the GPU stop the sweep
   here, with one message.
2. Load every backend once; all stay resident for the whole sweep.
3. For each limit (descending by default, or shuffled with a seed): journal the original limit before the first
   change, set the limit and read back the enforced one; settle and warm up under load (>= 3 s); measure the idle
   baseline with the models resident (for net tok/J); run each backend's pp/tg tests through the shared `Runner`
   (warm-up, >= 5 windows of >= 10 s, counter energy at synchronised edges); cool down towards the start temperature
   (at most `cooldown.max_s`).
4. The ORIGINAL limit comes back on every exit path (`PowerLimitController`); `luce-bench restore` after SIGKILL.
5. summary.csv has one row per (limit, backend, test); sweep plots and the sweet spot (best tok/J keeping >=
   `sweet_spot_min_speed` of stock tok/s) go to the run directory (see sweep_report.py).
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luce_bench.config import BenchConfig
from luce_bench.errors import UserError
from luce_bench.gpu.base import GPUError, GPUPermissionError, GPUReadOnlyError
from luce_bench.gpu.power_limit import LimitTarget, PowerLimitController, check_set_permission, parse_limits
from luce_bench.results import RunWriter
from luce_bench.runner import Limit, Measure, Runner, make_prompt, run_once

DEFAULT_FAKE_PRESET = "rtx3090"  # the seed's card: its 100-420 W range takes the default 420/300/220/150 sweep


@dataclass
class SweepOutcome:
    """What a sweep produced."""

    run_dir: Path
    limits: list[dict[str, Any]] = field(default_factory=list)
    sweet_spots: list[dict[str, Any]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def order_targets(
    targets: Sequence[LimitTarget], order: str = "descending", seed: int | None = None
) -> list[LimitTarget]:
    """Descending (default), ascending, or shuffled with `seed` (rule 7: heating biases a fixed order)."""
    if order == "descending":
        return sorted(targets, key=lambda t: -t.requested_mw)
    if order == "ascending":
        return sorted(targets, key=lambda t: t.requested_mw)
    if order == "shuffle":
        out = list(targets)
        random.Random(seed).shuffle(out)
        return out
    raise UserError(f"bad sweep order {order!r}; expected descending, ascending or shuffle")


def plan(
    cfg: BenchConfig, gpu: Any, limits: str | Sequence[str] | None = None, clamp: bool | None = None
) -> list[LimitTarget]:
    """Resolve and validate the limits against `gpu`'s constraints, in the configured order. Changes nothing."""
    targets = parse_limits(
        limits if limits is not None else cfg.sweep.limits,
        gpu.default_power_limit_mw(),
        gpu.power_limit_constraints_mw(),
        clamp=cfg.sweep.clamp if clamp is None else clamp,
        gpu_name=gpu.name(),
    )
    return order_targets(targets, cfg.sweep.order, cfg.sweep.shuffle_seed)


def preflight(gpu: Any) -> None:
    """Stop before anything changes when limits cannot be set; the message says how to run it."""
    try:
        check_set_permission(gpu)
    except GPUReadOnlyError as exc:
        raise UserError(
            f"{exc}. A sweep changes power limits; unset LUCE_BENCH_READONLY / drop --read-only, or use "
            "`luce-bench bench` to measure at the current limit"
        ) from None
    except GPUPermissionError as exc:
        raise UserError(str(exc)) from None


def _log(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg)
    else:
        print(msg, file=sys.stderr)


def _settle(runner: Runner, backend: Any, cfg: BenchConfig, seconds: float) -> None:
    """Run the first test under load for `seconds` so clocks and power settle at the new limit (not measured)."""
    m = runner.measure
    if seconds <= 0:
        return
    test = cfg.test_specs[0]
    prompt = make_prompt(max(test.n, 1), runner.model.config.vocab_size, cfg.prompt_seed)
    m.gpu.set_busy(True)
    try:
        t0 = m.clock()
        while m.clock() - t0 < seconds:
            run_once(backend, test, prompt)
    finally:
        m.gpu.set_busy(False)


def open_sweep_gpu(cfg: BenchConfig, fake_preset: str | None = None) -> Any:
    """The GPU to sweep; read-only only when LUCE_BENCH_READONLY / --read-only says so."""
    from luce_bench.gpu import open_gpu

    fake: bool | str = (fake_preset or DEFAULT_FAKE_PRESET) if cfg.gpu.fake else False
    try:
        return open_gpu(cfg.gpu.index, fake=fake)
    except GPUError as exc:
        raise UserError(f"cannot sweep without a GPU: {exc} (use --fake-gpu to simulate one)") from None


def _load_backends(
    names: Sequence[str], model: Any, cfg: BenchConfig, console: Any, outcome: SweepOutcome
) -> dict[str, Any]:
    from luce_bench.backends import create
    from luce_bench.backends import get as get_backend

    loaded: dict[str, Any] = {}
    for name in names:
        cls = get_backend(name)
        reason = cls.unavailable_reason()
        if reason:
            outcome.failed.append(name)
            _log(console, f"[yellow]skipping {name}:[/yellow] {reason}")
            continue
        from luce_bench.session import default_backend_kwargs

        backend = create(name, **default_backend_kwargs(cfg).get(name, {}))
        try:
            backend.load(model, cfg.device)
        except Exception as exc:  # noqa: BLE001 - one backend failing must not stop the others
            outcome.failed.append(name)
            _log(console, f"[red]{name} failed to load:[/red] {type(exc).__name__}: {exc}")
            continue
        loaded[name] = backend
    if not loaded:
        raise UserError(f"no backend could be loaded ({', '.join(names)}); see the messages above")
    return loaded


def run_sweep(
    cfg: BenchConfig,
    backends: Sequence[str],
    *,
    limits: str | Sequence[str] | None = None,
    clamp: bool | None = None,
    fake_preset: str | None = None,
    persistence: bool = True,
    console: Any = None,
    name: str = "sweep",
    gpu: Any = None,
) -> SweepOutcome:
    """Run the whole sweep (see the module docstring); returns the run directory, per-limit facts and sweet spots."""
    from luce_bench.model.resolve import resolve_model
    from luce_bench.sampler import Sampler

    own_gpu = gpu is None
    gpu = gpu if gpu is not None else open_sweep_gpu(cfg, fake_preset)
    try:
        targets = plan(cfg, gpu, limits, clamp)  # 1. validate: nothing has changed yet
        preflight(gpu)
        fake = gpu.preset.name if hasattr(gpu, "preset") else None
        with PowerLimitController(
            gpu, fake=fake, persistence=persistence, log=lambda msg: _log(console, msg)
        ) as ctl:  # lock + stale-journal check
            model = resolve_model(_model_name(cfg), seed=cfg.model_seed)
            writer = RunWriter.create(cfg.output_dir, name)
            outcome = SweepOutcome(writer.dir)
            sampler = Sampler(gpu, period_s=cfg.sampler.period_s)
            measure = Measure(gpu=gpu, sampler=sampler, simulated=fake is not None)
            runner = Runner(cfg, model, measure, writer)
            loaded: dict[str, Any] = {}
            try:
                sampler.start()
                _write_base_meta(writer, cfg, model, measure, targets, gpu)
                loaded.update(_load_backends(backends, model, cfg, console, outcome))  # 2. load once
                writer.write_meta({"backends": {n: b.info() for n, b in loaded.items()}})
                for i, target in enumerate(targets):  # 3. per limit
                    outcome.limits.append(
                        _one_limit(ctl, runner, loaded, cfg, target, i, len(targets), console, outcome)
                    )
                    writer.write_meta({"sweep_limits": outcome.limits})
                runner.flush_samples()
            finally:
                sampler.stop()
                for b in loaded.values():
                    b.close()
                writer.close()
        # 4. the original limit is back here
        _log(console, f"power limit restored to {gpu.power_limit_mw() / 1000:g} W")
    finally:
        if own_gpu:
            gpu.close()
    from luce_bench.sweep_report import finish

    outcome.sweet_spots = finish(writer.dir, cfg.sweep.sweet_spot_min_speed, console)
    return outcome


def _one_limit(
    ctl: PowerLimitController,
    runner: Runner,
    loaded: dict[str, Any],
    cfg: BenchConfig,
    target: LimitTarget,
    i: int,
    n: int,
    console: Any,
    outcome: SweepOutcome,
) -> dict[str, Any]:
    enforced_mw = ctl.set_limit_mw(target.requested_mw)
    note = " (clamped)" if target.clamped else ""
    _log(
        console,
        f"[bold]limit {i + 1}/{n}:[/bold] requested {target.requested_w:g} W{note} "
        f"({target.text}), enforced {enforced_mw / 1000:g} W",
    )
    first = next(iter(loaded.values()))
    _settle(runner, first, cfg, max(cfg.sweep.settle_s, 0.0))
    idle_w = runner.measure_idle(cfg.sweep.idle_s)
    _log(console, f"  idle baseline (models resident): {idle_w:.1f} W" if idle_w else "  idle baseline: n/a")
    limit = Limit(requested_w=target.requested_w, enforced_w=enforced_mw / 1000.0, idle_power_w=idle_w)
    for bname, backend in loaded.items():
        try:
            rows = runner.run_backend(backend, limit)
        except (UserError, GPUError, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - record, go on, exit non-zero at the end
            outcome.failed.append(f"{bname}@{target.requested_w:g}W")
            _log(console, f"[red]{bname} failed at {target.requested_w:g} W:[/red] {type(exc).__name__}: {exc}")
            continue
        for r in rows:
            _log(
                console,
                f"  {bname} {r['test']} rep {r['rep']}: {r['avg_ts']:.1f} tok/s"
                + (f", {r['tok_per_j']:.3f} tok/J" if r.get("tok_per_j") else ""),
            )
    runner.cooldown()  # 5. towards the run's start temperature, bounded by cooldown.max_s
    return {
        "requested_w": target.requested_w,
        "text": target.text,
        "clamped": target.clamped,
        "enforced_w": enforced_mw / 1000.0,
        "idle_power_w": idle_w,
        "t_end_s": runner.measure.sampler.now_s(),
    }


def _model_name(cfg: BenchConfig) -> str:
    if cfg.model != "auto":
        return cfg.model
    return "tiny" if cfg.gpu.fake else "synthetic-0.8b"


def _write_base_meta(
    writer: RunWriter, cfg: BenchConfig, model: Any, measure: Measure, targets: Sequence[LimitTarget], gpu: Any
) -> None:
    try:
        from luce_bench.session import base_meta

        meta = base_meta(cfg, model, measure)
    except Exception as exc:  # noqa: BLE001 - provenance must not stop the sweep
        meta = {"meta_error": f"{type(exc).__name__}: {exc}"}
    lo, hi = gpu.power_limit_constraints_mw()
    meta["sweep"] = {
        "limits_requested_w": [t.requested_w for t in targets],
        "limits_text": [t.text for t in targets],
        "order": cfg.sweep.order,
        "shuffle_seed": cfg.sweep.shuffle_seed,
        "clamp": cfg.sweep.clamp,
        "settle_s": cfg.sweep.settle_s,
        "idle_s": cfg.sweep.idle_s,
        "sweet_spot_min_speed": cfg.sweep.sweet_spot_min_speed,
        "original_limit_w": gpu.power_limit_mw() / 1000.0,
        "default_limit_w": gpu.default_power_limit_mw() / 1000.0,
        "constraints_w": [lo / 1000.0, hi / 1000.0],
        "started_unix_s": time.time(),
    }
    writer.write_meta(meta)
