"""`luce-bench sweep --resume RUN_DIR`: continue an interrupted sweep, without duplicating or dropping a row.

What is done is read from the run directory itself: runs.csv holds every finished repetition (whole rows only, see
appender.py), status.json how the run ended and what it was. A plan is deterministic for a config and a card
(the shuffle order aside, which does not matter here), so the same config on the same card gives the same trials; each
trial still lacking repetitions is measured again under its setting, for exactly the repetition indices it lacks (a
trial that failed or was cut short mid-way included). The resumed rows append to runs.csv, the sampler's timeline
continues after the last sample, meta.json gains a `resumes` entry and status.json an `attempts` entry.

Refused with one line (exit 2), before anything changes: a directory that is not a luce-bench sweep (no status.json,
another command), one still running, a config that differs from the run's (the flags and --config given with
--resume must agree with it; with none, the run's own config is used), another plan or another card, rows that do
not belong to the plan. A stale journal (the run was killed) must be replayed with `luce-bench restore` first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from luce_bench.appender import CsvAppender
from luce_bench.config import TG_ITERATION, TG_ITERATION_BEFORE
from luce_bench.context import RunContext
from luce_bench.errors import UserError
from luce_bench.files import existing_dir
from luce_bench.plan import Plan, Trial, key_of
from luce_bench.records import RunRecord, setting_text
from luce_bench.results import META, RUNS, SAMPLES, read_meta, read_runs, read_samples
from luce_bench.runner import Resume, identity
from luce_bench.sampler import Sample
from luce_bench.status import RUNNING, effective_state, read_status


def _prior(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(status, meta) of the run to resume; UserError when it cannot be resumed."""
    where = f"--resume {run_dir}"
    existing_dir(run_dir, "run directory (--resume)")
    status = read_status(run_dir)
    if status is None:
        raise UserError(f"{where}: no status.json: not a luce-bench run directory that can be resumed")
    if status.get("command") != "sweep":
        raise UserError(f"{where}: a {status.get('command')!r} run; only sweeps can be resumed")
    if effective_state(status) == RUNNING:
        raise UserError(f"{where}: the run is still going (pid {status.get('pid')}); wait for it or stop it first")
    if not (run_dir / META).is_file():
        raise UserError(f"{where}: no meta.json (the run stopped before writing it); run the sweep again instead")
    meta = read_meta(run_dir)
    if not isinstance(meta.get("config"), dict):
        raise UserError(f"{where}: meta.json holds no config; this run cannot be resumed")
    return status, meta


def _first_difference(a: Any, b: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first (dotted key, a value, b value) where `a` and `b` differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            diff = _first_difference(a.get(key), b.get(key), f"{where}.{key}" if where else key)
            if diff is not None:
                return diff
        return None
    return None if a == b else (where, a, b)


def resume_config(run_dir: Path, params: dict[str, Any], overrides: dict[str, Any]) -> Any:
    """The run's config with the given flags (and --config) applied; UserError if that changes anything."""
    from luce_bench import config as cfgmod
    from luce_bench.cli.options import FLAG_KEYS, check_flags, config_path, load_config

    _, meta = _prior(run_dir)
    out = params.get("out")
    if out is not None and Path(out).resolve() != run_dir.resolve().parent:
        raise UserError(
            f"--resume {run_dir}: the run continues in its own folder, not under -o {out}; drop -o (or give "
            f"-o {run_dir.parent})"
        )
    stored = {k: v for k, v in meta["config"].items() if k != "output_dir"}
    sweep = stored.get("sweep")
    if isinstance(sweep, dict) and sweep.get("order") != "shuffle" and sweep.get("shuffle_seed") is not None:
        stored["sweep"] = {**sweep, "shuffle_seed": None}  # (recorded before it was refused: it ordered nothing)
    if config_path(params) is not None:
        cfg = load_config(params, **overrides)
    else:
        flags = {**{k: v for k, v in params.items() if k in FLAG_KEYS}, **overrides}
        dotted = {
            FLAG_KEYS[k]: (None if v is False else str(v) if isinstance(v, Path) else v) for k, v in flags.items()
        }
        try:
            cfg = cfgmod.from_mapping(stored, dotted)
        except UserError:
            order, then = dotted.get("sweep.order"), (stored.get("sweep") or {}).get("order")
            if order is not None and order != then:  # (e.g. --order descending on a shuffled run: its seed stays)
                raise UserError(
                    f"--resume {run_dir}: the config differs from the run's: sweep.order is {order!r} now, {then!r} "
                    "in the run; drop that flag (the run's own config is used) or start a new sweep"
                ) from None
            raise
        check_flags(params, cfg)
    now = {k: v for k, v in cfg.to_dict().items() if k != "output_dir"}
    with contextlib.suppress(UserError):  # a key the run's luce-bench did not have yet reads as its default
        stored = {k: v for k, v in cfgmod.from_mapping(stored, {}).to_dict().items() if k != "output_dir"}
    diff = _first_difference(stored, now)
    if diff is not None:
        key, then, given = diff
        raise UserError(
            f"--resume {run_dir}: the config differs from the run's: {key} is {given!r} now, {then!r} in the run; "
            "drop that flag (the run's own config is used) or start a new sweep"
        )
    return cfg


def _limit_matches(row_w: float | None, limit_mw: int) -> bool:
    """Whether a row's requested limit (6 significant digits in runs.csv) is the planned one."""
    if row_w is None:
        return limit_mw == 0
    return abs(row_w * 1000.0 - limit_mw) <= max(1.0, 1e-5 * limit_mw)


def _trial_of(row: RunRecord, trials: Iterable[Trial]) -> Trial | None:
    for t in trials:
        backend, test, limit_mw, clock_mhz = key_of(t)
        if (row.backend, row.test, row.sm_clock_mhz or 0) == (backend, test, clock_mhz):
            if _limit_matches(row.power_limit_req_w, limit_mw):
                return t
    return None


def _done(run_dir: Path, plan: Plan, reps: int) -> dict[Trial, set[int]]:
    """The repetition indices runs.csv holds per planned trial; UserError for rows that do not belong."""
    done: dict[Trial, set[int]] = {t: set() for t in plan.trials}
    for i, row in enumerate(read_runs(run_dir), start=2):
        trial = _trial_of(row, plan.trials)
        if trial is None:
            raise UserError(
                f"--resume {run_dir}: runs.csv line {i} ({row.backend} {row.test} @ "
                f"{setting_text(row.power_limit_req_w, row.sm_clock_mhz, 'the limit in force')}) is not part of this "
                "sweep's plan"
            )
        if not 0 <= row.rep < reps:  # (a repetition there twice: read_runs refuses it)
            raise UserError(f"--resume {run_dir}: runs.csv line {i} exceeds the sweep's {reps} repetitions")
        done[trial].add(row.rep)
    return done


def _timeline_end_s(run_dir: Path, rows: list[RunRecord], samples: list[Sample]) -> float:
    """Where the resumed part's sampler timeline starts: a second after the earlier part's last sample or window."""
    ends = [s.t_s for s in samples[-1:]] + [r.t_end_s for r in rows if r.t_end_s is not None]
    return (max(ends) + 1.0) if ends else 0.0


def prepare(run_dir: Path, plan: Plan, ctx: RunContext) -> Resume | None:
    """What is left of the sweep in `run_dir` under `plan` (None: nothing); UserError when it cannot be resumed."""
    status, meta = _prior(run_dir)
    now = identity(plan, ctx)
    if status.get("plan_sha256") != now["plan_sha256"]:
        raise UserError(
            f"--resume {run_dir}: this sweep's plan (backends x tests x settings, as this card resolves them) differs "
            "from the run's; start a new sweep"
        )
    if status.get("gpu_uuid") != now["gpu_uuid"]:
        was = status.get("gpu_uuid") or "a card that did not name itself"
        raise UserError(f"--resume {run_dir}: the run was measured on {was}, not {now['gpu_uuid']}")
    method = meta.get("method")
    ran = method.get("tg_iteration") if isinstance(method, dict) else None
    if ran != TG_ITERATION and any(t.kind == "tg" and not t.depth for t in ctx.cfg.test_specs):
        raise UserError(
            f"--resume {run_dir}: its tg iterations ran {ran or TG_ITERATION_BEFORE}; "
            f"this luce-bench runs {TG_ITERATION}, so the rows would not compare: start a new sweep"
        )
    for name, cls in ((RUNS, RunRecord), (SAMPLES, Sample)):  # a line cut short by a crash is not a row
        if (run_dir / name).is_file():
            CsvAppender.repair(run_dir / name, cls)
    reps = ctx.cfg.reps
    done = _done(run_dir, plan, reps)
    # an optional backend the run skipped while loading (`all`'s hf-compiled whose compile failed, say) has no rows and
    # never will: resuming it would load it again, skip it again, and never finish
    skipped = {name for name, m in (meta.get("backends") or {}).items() if isinstance(m, dict) and "skipped" in m}
    todo = {t: [r for r in range(reps) if r not in done[t]] for t in plan.trials if key_of(t)[0] not in skipped}
    todo = {t: missing for t, missing in todo.items() if missing}
    if not todo:
        return None
    offset = _timeline_end_s(run_dir, read_runs(run_dir), read_samples(run_dir))
    return Resume(run_dir, status, todo, offset)
