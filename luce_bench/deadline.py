"""A per-test deadline (`test_timeout_s`): a backend that hangs or crawls partway through a test is stopped.

Two guards, both raising `TrialTimeout`:
* on the run's clock, between iterations (`check()`): a backend whose calls keep returning but far too slowly, and
  in virtual time a simulated backend that "hangs" for an hour of simulated time;
* on the wall clock, in the main thread: SIGALRM interrupts a call that never returns (a wait on a dead child process,
  a sleep, a Python loop). A hang inside C code that never returns to Python (a stuck CUDA kernel in an in-process
  backend) cannot be interrupted this way; backends that run in a child process (llama.cpp) are killed instead.
`TrialTimeout` derives from BaseException so that a backend's broad `except Exception` cannot swallow it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

from luce_bench.clock import Clock


class TrialTimeout(BaseException):
    """A test ran past its deadline; the message says which and how long it was given."""


class Deadline:
    """A running deadline: `check()` between iterations; `extend(seconds)` gives more time (re-arming the alarm)."""

    def __init__(self, seconds: float, clock: Clock, what: str) -> None:
        """Start a deadline of `seconds` from now on `clock` for `what`."""
        self.seconds, self.clock, self.what = seconds, clock, what
        self.start_s = clock.now_s()
        self.armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
        self._wall_end_s = time.monotonic() + seconds

    def _expired(self) -> TrialTimeout:
        return TrialTimeout(f"{self.what} timed out after {self.seconds:g} s (test_timeout_s)")

    def check(self) -> None:
        """Raise TrialTimeout when the run clock has passed the deadline."""
        if self.clock.now_s() - self.start_s > self.seconds:
            raise self._expired()

    def extend(self, seconds: float) -> None:
        """Move the deadline `seconds` later."""
        self.seconds += seconds
        self._wall_end_s += seconds
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, max(self._wall_end_s - time.monotonic(), 0.001))

    def on_alarm(self, signum: int, frame: Any) -> None:
        """SIGALRM: the wall clock passed the deadline inside a call."""
        raise self._expired()


@contextlib.contextmanager
def deadline(seconds: float, clock: Clock, what: str) -> Iterator[Deadline]:
    """Give the block `seconds` on `clock` (and on the wall clock); yield the `Deadline` to check and extend."""
    limit = Deadline(seconds, clock, what)
    previous: Any = None
    if limit.armed:
        previous = signal.signal(signal.SIGALRM, limit.on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield limit
    finally:
        if limit.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
