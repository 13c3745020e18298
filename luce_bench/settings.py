"""A plan's GPU settings on the card: applying one through the controller, and what the run says about them.

`apply_setting` locks the SM clock first, then sets the power limit, both through `PowerLimitController`, which
journals before every change and puts the originals back on every exit path. A setting without a limit (a clocks-only
sweep) runs under the limit in force, recorded like `compare` records it. `status_line`, `setting_meta` and
`sweep_meta` are the console line, meta.json's per-setting entry and meta.json's `sweep` section; for a limits-only
sweep the last two say exactly what they said before clocks could be swept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from luce_bench.config import parse_clock, parse_limit
from luce_bench.gpu.base import GPU, GPUError
from luce_bench.plan import Plan, Setting


@dataclass(frozen=True)
class Applied:
    """What the card reads back after a setting: the enforced limit (W) and the locked SM clock (MHz)."""

    enforced_w: float | None
    locked_mhz: int | None = None


def current_limit_w(gpu: GPU | None) -> float | None:
    """The limit in force; None without a GPU or where it cannot be read (it is provenance, not a precondition)."""
    try:
        return gpu.power_limit_mw() / 1000.0 if gpu is not None else None
    except GPUError:
        return None


def apply_setting(control: Any, setting: Setting, gpu: GPU | None) -> Applied:
    """Lock the clock, then set the limit (each journalled first by `control`); return what the card reads back."""
    locked = control.set_sm_clock_mhz(setting.sm_clock.locked_mhz) if setting.sm_clock is not None else None
    if setting.power_limit is None:
        return Applied(current_limit_w(gpu), locked)
    return Applied(control.set_limit_mw(setting.power_limit.requested_mw) / 1000.0, locked)


def asked_text(text: str, resolved: float, unit: str, clamped: bool = False) -> str:
    """A request as written, and what it resolved to only where that differs: "420 W", "70% (294 W)".

    `text` is a limit or clock as the user wrote it ("420", "420W", "70%"); `resolved` its value in `unit`.
    """
    value, percent = parse_limit(text) if unit == "W" else parse_clock(text)
    asked = f"{value:g}%" if percent else f"{value:g} {unit}"
    if clamped:
        return f"{asked} (clamped to {resolved:g} {unit})"
    return asked if not percent and value == resolved else f"{asked} ({resolved:g} {unit})"


def status_line(setting: Setting, applied: Applied, i: int, n: int) -> tuple[str, str]:
    """The console line after applying setting `i` of `n`, as (text, its lead).

    E.g. ("requested 70% (294 W), enforced 294 W", "limit 2/4:").
    """
    limit = setting.power_limit
    limit_text = ""
    if limit is not None:
        asked = asked_text(limit.text, limit.requested_w, "W", limit.clamped)
        limit_text = f"requested {asked}, enforced {applied.enforced_w:g} W"
    clock = setting.sm_clock
    if clock is None:
        return limit_text, f"limit {i + 1}/{n}:"
    snapped = " (snapped to a supported clock)" if clock.locked_mhz != clock.requested_mhz else ""
    asked = asked_text(clock.text, clock.requested_mhz, "MHz", clock.clamped)
    line = f"SM clock requested {asked}, locked {applied.locked_mhz} MHz{snapped}"
    return line + (f"; limit {limit_text}" if limit_text else ""), f"setting {i + 1}/{n}:"


def setting_meta(setting: Setting, applied: Applied, idle_w: float | None, t_end_s: float | None) -> dict[str, Any]:
    """meta.json's entry for one applied setting (`sweep_limits`)."""
    limit, clock = setting.power_limit, setting.sm_clock
    out: dict[str, Any] = {
        "requested_w": limit.requested_w if limit else None,
        "text": limit.text if limit else None,
        "clamped": limit.clamped if limit else None,
        "enforced_w": applied.enforced_w,
        "idle_power_w": idle_w,
        "t_end_s": t_end_s,
    }
    if clock is not None:
        out.update(
            sm_clock_text=clock.text,
            sm_clock_req_mhz=clock.requested_mhz,
            sm_clock_mhz=applied.locked_mhz,
            sm_clock_clamped=clock.clamped,
        )
    return out


def _axis(settings: Sequence[Setting], attr: str) -> list[Any]:
    """The distinct values of one axis, in plan order."""
    values = [getattr(s, attr) for s in settings if getattr(s, attr) is not None]
    return list(dict.fromkeys(values))


def sweep_meta(plan: Plan, cfg: Any, gpu: GPU | None, started_unix_s: float) -> dict[str, Any]:
    """meta.json's `sweep` section ({} for a plan that changes nothing)."""
    settings = [s for s, _ in plan.blocks()]
    limits, clocks = _axis(settings, "power_limit"), _axis(settings, "sm_clock")
    if not (limits or clocks) or gpu is None:
        return {}
    lo, hi = gpu.power_limit_constraints_mw()
    out: dict[str, Any] = {
        "limits_requested_w": [t.requested_w for t in limits],
        "limits_text": [t.text for t in limits],
        "order": cfg.sweep.order,
        "shuffle_seed": cfg.sweep.shuffle_seed,
        "clamp": cfg.sweep.clamp,
        "settle_s": cfg.sweep.settle_s,
        "idle_s": cfg.sweep.idle_s,
        "sweet_spot_min_speed": cfg.sweep.sweet_spot_min_speed,
        "rounds": cfg.sweep.rounds,
        "original_limit_w": gpu.management_limit_mw() / 1000.0,  # (the limit restore puts back)
        "original_enforced_w": gpu.power_limit_mw() / 1000.0,
        "default_limit_w": gpu.default_power_limit_mw() / 1000.0,
        "constraints_w": [lo / 1000.0, hi / 1000.0],
        "started_unix_s": started_unix_s,
    }
    if clocks:
        supported = gpu.supported_sm_clocks_mhz()
        out.update(
            clocks_text=[c.text for c in clocks],
            clocks_requested_mhz=[c.requested_mhz for c in clocks],
            clocks_locked_mhz=[c.locked_mhz for c in clocks],
            supported_sm_clocks_mhz=supported,
            grid=bool(limits),
        )
        try:
            lock = gpu.locked_sm_clocks_mhz()
            out["original_sm_lock_mhz"] = list(lock) if lock else None
        except GPUError:
            out["original_sm_lock_mhz"] = "unreadable (NVML cannot read a lock back; unlocked at the end)"
    return out
