"""Run a SetupPlan's steps: a header per step, the elapsed time while it runs, its output kept in a log file.

A newcomer sees `[setup 3/7] building llama-cpp-python with CUDA for sm_90 (several minutes)` and then the time
going by (updated in place on a terminal, a line every 30 s in a log), never pip's or the compiler's own output: that
goes to the log, whose telling line is shown if the step fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from luce_bench.setup.plan import SetupPlan, Step
from luce_bench.setup.probe import ROOT

TICK_TTY_S = 1.0
TICK_LOG_S = 30.0


class SetupFailed(Exception):
    """A required step failed; the message is one line."""


def duration_text(seconds: float) -> str:
    """12.3 -> '12s', 192 -> '3m12s'."""
    s = int(round(seconds))
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def telling_line(text: str) -> str:
    """The line of a failed command's output that says why: pip's or CMake's last error line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith(("error", "cmake error", "fatal"))]
    return (errors or lines or ["no output"])[-1][:300]


class StepRunner:
    """Runs steps one by one, writing headers and ticks to `out` and each command's output to `log_path`."""

    def __init__(
        self,
        log_path: Path,
        out: TextIO = sys.stdout,
        tick_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log_path, self.out, self.clock = log_path, out, clock
        self.live = out.isatty()
        self.tick_s = tick_s if tick_s is not None else (TICK_TTY_S if self.live else TICK_LOG_S)

    def say(self, text: str, end: str = "\n") -> None:
        """Write `text` to the console now."""
        self.out.write(text + end)
        self.out.flush()

    def run_all(self, plan: SetupPlan) -> None:
        """Every step in order; a required step's failure raises SetupFailed, an optional one's prints its note."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        for i, step in enumerate(plan.steps, 1):
            self.say(f"[setup {i}/{len(plan.steps)}] {step.title}")
            ok, elapsed_s, why = self.run(step)
            if ok:
                self._status(f"  done in {duration_text(elapsed_s)}")
                continue
            self._status(f"  failed after {duration_text(elapsed_s)}: {why}")
            if step.required:
                raise SetupFailed(f"{step.title}: {why} (full output: {self.log_path})")
            self.say(f"setup: {step.fail_note}")

    def _status(self, text: str) -> None:
        self.say(("\r" + text + " " * 10) if self.live else text)

    def run(self, step: Step) -> tuple[bool, float, str]:
        """(succeeded, seconds, why it failed) of one step; ticks while it runs."""
        t0 = self.clock()
        with open(self.log_path, "a") as log:
            log.write(f"\n$ {step.command}\n")
            start = log.tell()
            log.flush()
            env = {**os.environ, **dict(step.env)}
            try:
                proc = subprocess.Popen(
                    step.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
                )
            except OSError as exc:
                return False, self.clock() - t0, str(exc)
            try:
                self._wait(proc, t0)
            except BaseException:  # Ctrl-C or a signal: do not leave a build running
                proc.kill()
                proc.wait()
                raise
        elapsed_s = self.clock() - t0
        if proc.returncode == 0:
            return True, elapsed_s, ""
        with open(self.log_path) as log:
            log.seek(start)
            return False, elapsed_s, telling_line(log.read())

    def _wait(self, proc: subprocess.Popen[bytes], t0: float) -> None:
        while True:
            try:
                proc.wait(timeout=self.tick_s)
                return
            except subprocess.TimeoutExpired:
                elapsed = duration_text(self.clock() - t0)
                self.say(f"\r  … {elapsed}", end="") if self.live else self.say(f"  … still running ({elapsed})")
