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
from collections.abc import Callable, Iterator
from typing import Any

from luce_bench.clock import Clock


class TrialTimeout(BaseException):
    """A test ran past its deadline; the message says which and how long it was given."""


@contextlib.contextmanager
def deadline(seconds: float, clock: Clock, what: str) -> Iterator[Callable[[], None]]:
    """Give the block `seconds` on `clock` (and on the wall clock); yield `check()` to call between iterations."""
    message = f"{what} timed out after {seconds:g} s (test_timeout_s)"
    start_s = clock.now_s()

    def check() -> None:
        if clock.now_s() - start_s > seconds:
            raise TrialTimeout(message)

    def on_alarm(signum: int, frame: Any) -> None:
        raise TrialTimeout(message)

    armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    previous: Any = None
    if armed:
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield check
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
