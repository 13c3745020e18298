"""What a simulated card shares between processes, and its scripted power traces.

`SharedState`: with LUCE_BENCH_FAKE_GPU_STATE set, a simulated card keeps its limit, clock lock, persistence mode and
every setter call in one JSON file (keyed by UUID), so another process (`luce-bench restore` after SIGKILL, a test
reading the card afterwards) sees the same card. Writes go through `files.atomic_write` under a POSIX lockf: a signal
handler restoring the limit may re-enter while the same process holds it, which lockf (per process) allows.

`trace_power_w` / `trace_integral_j`: a scripted piecewise-linear power trace [(t_s, W), ...] and its exact integral,
which replace the model's power when a test gives one.
"""

from __future__ import annotations

import bisect
import fcntl
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.files import atomic_write


class SharedState:
    """The state file of simulated cards: one entry per UUID."""

    def __init__(self, path: Path, uuid: str) -> None:
        """The entry of card `uuid` in the file at `path` (created on the first write)."""
        self.path, self.uuid = Path(path), uuid

    def _locked(self) -> Any:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(str(self.path) + ".lock", "a")  # closed (and unlocked) by the caller's `with`
        fcntl.lockf(lock, fcntl.LOCK_EX)
        return lock

    def _all(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text()) if self.path.exists() else {}
        except (OSError, ValueError):
            return {}

    def read(self) -> dict[str, Any]:
        """This card's entry ({} when none was written): limit_mw, persistence, sm_lock_mhz, set_calls."""
        with self._locked():
            return self._all().get(self.uuid, {})

    def write(self, fields: dict[str, Any], call: tuple[str, Any]) -> None:
        """Merge `fields` into this card's entry and record the setter `call`."""
        with self._locked():
            data = self._all()
            card = {**data.get(self.uuid, {}), **fields}
            card.setdefault("set_calls", []).append(list(call))
            data[self.uuid] = card
            atomic_write(self.path, json.dumps(data, indent=1))

    def set_calls(self) -> list[list[Any]]:
        """Setter calls every process recorded for this card."""
        return list(self.read().get("set_calls", []))


def trace_integral_j(trace: Sequence[tuple[float, float]], t_s: float) -> float:
    """Integral of a piecewise-linear power trace from its first point to `t_s` (held flat outside). Units: J."""
    total, (t_prev, p_prev) = 0.0, trace[0]
    if t_s <= t_prev:
        return p_prev * (t_s - t_prev)
    for t_i, p_i in trace[1:]:
        if t_s <= t_i:
            p_t = p_prev + (p_i - p_prev) * (t_s - t_prev) / (t_i - t_prev)
            return total + 0.5 * (p_prev + p_t) * (t_s - t_prev)
        total += 0.5 * (p_prev + p_i) * (t_i - t_prev)
        t_prev, p_prev = t_i, p_i
    return total + p_prev * (t_s - t_prev)


def trace_power_w(trace: Sequence[tuple[float, float]], t_s: float) -> float:
    """The trace's power at `t_s` (linear between points, held flat outside). Units: W."""
    times = [t for t, _ in trace]
    i = bisect.bisect_right(times, t_s)
    if i == 0:
        return trace[0][1]
    if i == len(trace):
        return trace[-1][1]
    (t0, p0), (t1, p1) = trace[i - 1], trace[i]
    return p0 + (p1 - p0) * (t_s - t0) / (t1 - t0)
