"""Time for a run: the machine's clock, or virtual time for fully simulated runs.

The pipeline reads time, sleeps and schedules the sampler's polls through one `Clock`:
* `RealClock`: `time.monotonic`, `time.sleep`, and a daemon thread for periodic work (the sampler).
* `SimClock`: virtual time (`gpu.fake_clock: virtual` with `--fake-gpu` and the `sim` backend). It advances only when
  someone sleeps; periodic callbacks fire at their due times inside that sleep, in order. A simulated run is then
  deterministic and takes no wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Protocol

Cancel = Callable[[], None]


class Clock(Protocol):
    """Monotonic seconds, sleeping, periodic callbacks and a wall-clock anchor."""

    def now_s(self) -> float:
        """Monotonic time. Units: s."""

    def sleep(self, seconds: float) -> None:
        """Let `seconds` pass."""

    def every(self, period_s: float, fn: Callable[[], None]) -> Cancel:
        """Call `fn` now and then every `period_s` on a fixed grid; returns a function that stops it (and waits)."""

    def unix_s(self) -> float:
        """Wall-clock time (for timestamps such as `test_time`). Units: s since the Unix epoch."""


def rfc3339(unix_s: float) -> str:
    """RFC 3339 UTC time to the second, as llama-bench's `test_time`."""
    return datetime.fromtimestamp(unix_s, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class RealClock:
    """The machine's monotonic clock; `every` runs in a daemon thread."""

    def now_s(self) -> float:
        """`time.monotonic()`. Units: s."""
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        """`time.sleep`."""
        time.sleep(seconds)

    def unix_s(self) -> float:
        """`time.time()`. Units: s."""
        return time.time()

    def every(self, period_s: float, fn: Callable[[], None]) -> Cancel:
        """Run `fn` in a daemon thread on a fixed grid (a slow call does not shift the later ones)."""
        stop, ready = threading.Event(), threading.Event()

        def run() -> None:
            next_t = self.now_s()
            while not stop.is_set():
                fn()
                ready.set()
                next_t += period_s
                delay = next_t - self.now_s()
                if delay < 0:  # fell behind: restart the grid rather than firing a burst
                    next_t, delay = self.now_s(), 0.0
                stop.wait(delay)
            ready.set()

        thread = threading.Thread(target=run, name="luce-bench-every", daemon=True)
        thread.start()
        ready.wait(timeout=5.0)

        def cancel() -> None:
            stop.set()
            thread.join(timeout=5.0)

        return cancel


@dataclass
class _Timer:
    due_s: float
    period_s: float
    fn: Callable[[], None]


class SimClock:
    """Virtual time: starts at `start_s`, moves only in `sleep`; wall time is `epoch_unix_s` plus the time elapsed."""

    def __init__(self, start_s: float = 1000.0, epoch_unix_s: float = 1_798_761_600.0) -> None:
        """A virtual clock at `start_s` whose wall time starts at `epoch_unix_s` (2027-01-01T00:00:00Z)."""
        self._now_s = start_s
        self._start_s = start_s
        self._epoch_unix_s = epoch_unix_s
        self._timers: list[_Timer] = []

    def now_s(self) -> float:
        """Virtual seconds. Units: s."""
        return self._now_s

    def __call__(self) -> float:
        """Same as `now_s()`, so the clock can stand where a `Callable[[], float]` is expected."""
        return self._now_s

    def unix_s(self) -> float:
        """Virtual wall time. Units: s."""
        return self._epoch_unix_s + (self._now_s - self._start_s)

    def continue_wall(self, elapsed_s: float) -> None:
        """Move the virtual wall time on by `elapsed_s` (a resumed run's earlier timeline): timestamps stay in order."""
        self._epoch_unix_s += max(elapsed_s, 0.0)

    def sleep(self, seconds: float) -> None:
        """Advance by `seconds`, firing every timer that falls due on the way, at its due time."""
        target_s = self._now_s + max(seconds, 0.0)
        while self._timers:
            timer = min(self._timers, key=lambda t: t.due_s)
            if timer.due_s > target_s:
                break
            self._now_s = max(self._now_s, timer.due_s)
            timer.due_s += timer.period_s
            timer.fn()
        self._now_s = target_s

    def every(self, period_s: float, fn: Callable[[], None]) -> Cancel:
        """Call `fn` now and at every later multiple of `period_s` that a `sleep` passes."""
        timer = _Timer(self._now_s + period_s, period_s, fn)
        fn()
        self._timers.append(timer)
        return lambda: self._timers.remove(timer) if timer in self._timers else None
