"""Requested SM clocks resolved against a card: MHz or % of its top clock, snapped to a clock it supports.

`parse_clocks("1980,1600,60%", supported)` gives one `ClockTarget` per distinct clock, each recording what was
written, what it resolves to in MHz (`requested_mhz`) and the supported clock it snaps to (`locked_mhz`: the nearest,
the lower one on a tie). A request outside the card's range is bad input before anything changes, unless `clamp`
moves it to the nearest end. Percentages are of the highest supported SM clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from luce_bench.config import parse_clock, refuse_repeats
from luce_bench.errors import UserError


@dataclass(frozen=True)
class ClockTarget:
    """One requested SM clock: what the user wrote, what it resolves to, the supported clock locked, and --clamp."""

    text: str
    requested_mhz: int
    locked_mhz: int
    clamped: bool = False

    @property
    def snapped(self) -> bool:
        """Whether the lock differs from the request (snapped to a supported clock, or clamped)."""
        return self.locked_mhz != self.requested_mhz


def snap_mhz(mhz: float, supported_mhz: Sequence[int]) -> int:
    """The supported clock nearest to `mhz` (the lower one on a tie). Units: MHz."""
    ascending = sorted(set(supported_mhz))
    i = bisect.bisect_left(ascending, mhz)
    if i == 0:
        return ascending[0]
    if i == len(ascending):
        return ascending[-1]
    lo, hi = ascending[i - 1], ascending[i]
    return hi if hi - mhz < mhz - lo else lo


def _resolve_mhz(text: str, top_mhz: int, clamp: bool = False) -> float:
    value, percent = parse_clock(text)
    if percent and not (0 < value <= 100 or (clamp and value > 0)):  # (--clamp: above 100 % is the top clock)
        raise UserError(
            f"SM clock {text} out of range: a share of the top SM clock ({top_mhz} MHz) must be above 0 % and at "
            "most 100 %"
        )
    if value <= 0:  # (config.py refuses it first for a config or flag; this is the function's own contract)
        raise UserError(f"bad SM clock {text!r}: must be positive")
    return value / 100.0 * top_mhz if percent else value


def parse_clocks(
    spec: str | Sequence[str | int | float],
    supported_mhz: Sequence[int],
    clamp: bool = False,
    gpu_name: str = "this GPU",
    where: str = "--clocks",
) -> list[ClockTarget]:
    """Resolve "1980,1600,60%" against the card's supported SM clocks (see the module docstring).

    `where`: the values' source as an error names it (the flag, or "sweep.clocks in config FILE").

    Raises:
        UserError: a malformed value, or one outside the supported range without `clamp`; nothing has changed yet.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise UserError(f"no SM clocks given in {where} (e.g. 1980,1600,1200 or 100%,80%,60%)")
    if not supported_mhz:
        raise UserError(f"{gpu_name} lists no supported SM clocks: locked clocks are not supported there")
    lo, hi = min(supported_mhz), max(supported_mhz)
    out: list[ClockTarget] = []
    bad: list[str] = []
    written: list[tuple[str, float]] = []  # (text, MHz requested) of the values in range as written
    for text in items:
        mhz = _resolve_mhz(text, hi, clamp)
        clamped = False
        if not lo <= round(mhz) <= hi:
            if not clamp:
                as_written = text.lower().removesuffix("mhz").strip() == str(round(mhz))  # ("50.5" is not "50 MHz")
                bad.append(f"{round(mhz)} MHz" if as_written else f"{text} ({round(mhz)} MHz)")
                continue
            mhz, clamped = min(max(mhz, lo), hi), True
        target = ClockTarget(text, round(mhz), snap_mhz(mhz, supported_mhz), clamped)
        if not clamped:
            written.append((text, target.requested_mhz))
        if all(t.locked_mhz != target.locked_mhz for t in out):
            out.append(target)
    if bad:
        raise UserError(
            f"SM clock {', '.join(bad)} not supported by {gpu_name}: it locks {lo}-{hi} MHz "
            f"({len(set(supported_mhz))} clocks, `luce-bench info` lists them); fix {where} or pass --clamp"
        )
    # a typo, not a wish: requests that snap or clamp together merge
    refuse_repeats("SM clock", "MHz", written, "" if where.startswith("--") else where)
    return out
