"""Changing GPU settings safely (power limits and locked SM clocks): journal, lock, restore the ORIGINAL on every exit.

`PowerLimitController` (a context manager) takes the per-GPU lock, refuses a stale journal, writes the journal before
the first change (and again before the first clock change), sets limits and clock locks and reads back what is in
force, and restores the original limit, clock lock and persistence mode on normal exit, exception, SIGINT, SIGTERM and
SIGHUP (signal handlers restore first, then raise KeyboardInterrupt or SystemExit), with an atexit backstop. After
SIGKILL or a crash, `restore_from_journals()` (gpu/restore.py, `luce-bench restore`) replays the journal.
`applied_power_limit(gpu, watts)` is the one-limit shorthand.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from luce_bench.gpu.base import GPU, GPUError, GPUNotSupportedError, refuse_if_read_only
from luce_bench.gpu.journal import (
    GpuLock,
    JournalError,
    journal_path,
    lock_text,
    new_entry,
    read_journal,
    write_journal,
)
from luce_bench.gpu.restore import apply_entry, refuse_stale_journals, stale_message

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class _Guard:
    """Process-wide backstops shared by all active controllers: signal handlers and one atexit hook."""

    active: list[PowerLimitController] = []
    previous: dict[int, object] = {}
    atexit_registered = False
    caught: int | None = None  # the signal that restored the settings (the run must stop, whatever swallowed it)

    @classmethod
    def add(cls, ctl: PowerLimitController) -> None:
        cls.active.append(ctl)
        if not cls.atexit_registered:
            atexit.register(cls.restore_all)
            cls.atexit_registered = True
        if len(cls.active) == 1 and threading.current_thread() is threading.main_thread():
            for sig in HANDLED_SIGNALS:
                cls.previous[sig] = signal.signal(sig, cls.on_signal)

    @classmethod
    def remove(cls, ctl: PowerLimitController) -> None:
        if ctl in cls.active:
            cls.active.remove(ctl)
        if not cls.active and threading.current_thread() is threading.main_thread():
            for sig, handler in cls.previous.items():
                signal.signal(sig, handler)  # type: ignore[arg-type]
            cls.previous.clear()
            cls.caught = None

    @classmethod
    def restore_all(cls) -> None:
        for ctl in list(cls.active):
            ctl.restore(quiet=True)

    @classmethod
    def on_signal(cls, signum: int, frame: object) -> None:
        if any(ctl.restoring for ctl in cls.active):
            return  # a second signal while restoring: let the restore finish
        what = "power limits and SM clocks" if any(ctl.clocks_changed for ctl in cls.active) else "power limits"
        print(f"luce-bench: caught {signal.Signals(signum).name}, restoring {what}", file=sys.stderr, flush=True)
        cls.caught = signum
        cls.restore_all()
        raise signal_exit(signum)


def signal_exit(signum: int) -> BaseException:
    """What a caught signal raises: KeyboardInterrupt for SIGINT, else SystemExit(128 + signum)."""
    return KeyboardInterrupt() if signum == signal.SIGINT else SystemExit(128 + signum)


def caught_signal() -> int | None:
    """The signal that restored the GPU's settings during this run, if one did.

    The handler's exception may be swallowed or replaced by the code it interrupts (an import inside a backend's
    load turns it into an ImportError): whoever catches a broad exception asks this first, and stops the run.
    """
    return _Guard.caught


class PowerLimitController:
    """Owns one GPU's power limit and SM clock lock for a `with` block and guarantees the originals come back."""

    def __init__(
        self,
        gpu: GPU,
        fake: str | None = None,
        state_dir: Path | None = None,
        persistence: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Prepare control of one GPU (nothing is taken or changed until `with`).

        Args:
            gpu: the GPU to control.
            fake: the simulated card's preset name, None for a real GPU (journalled, so `restore` can reopen it).
            state_dir: journal/lock directory (default `journal.state_dir()`).
            persistence: turn persistence mode on while settings are changed (measurement.md rule 9).
            log: receives one-line notes.
        """
        self.gpu, self.fake, self.state_dir, self.persistence = gpu, fake, state_dir, persistence
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.uuid = gpu.uuid()
        self._lock = GpuLock(self.uuid, state_dir)
        self._entry = None
        self._rlock = threading.RLock()
        self._noted_unreadable = False
        self.restoring = False
        self.changed = False  # a journal was written: settings may have changed
        self.run_dir: str | None = None  # journalled, so `luce-bench restore` can mark a killed run
        self.restore_error: str | None = None  # why the last restore failed (the journal is kept)

    def __enter__(self) -> PowerLimitController:
        refuse_if_read_only(self.gpu.read_only, "change power limits")
        self._lock.acquire()
        try:
            own = journal_path(self.uuid, self.state_dir)
            if own.exists():  # we hold the lock, so no live process owns this journal
                raise JournalError(stale_message(own, read_journal(own)))
            refuse_stale_journals(self.state_dir)
        except BaseException:
            self._lock.release()
            raise
        _Guard.add(self)
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            self.restore(quiet=exc_type is not None)
        finally:
            _Guard.remove(self)
            self._lock.release()

    @property
    def original_limit_mw(self) -> int | None:
        """The journalled original limit, once the first change is about to happen."""
        return self._entry.original_limit_mw if self._entry else None

    @property
    def clocks_changed(self) -> bool:
        """Whether SM clocks may have been changed (so a restore puts them back)."""
        return self._entry is not None and self._entry.sm_clocks_changed

    def _journal(self, clocks: bool) -> None:
        """Write the journal before the first change, and again before the first clock change."""
        if not self._lock.held:
            raise JournalError("PowerLimitController used outside its `with` block")
        if self._entry is None:
            self._entry = new_entry(self.gpu, self.fake, sm_clocks_changed=clocks, run_dir=self.run_dir)
            write_journal(self._entry, self.state_dir)
            self.changed = True
            if self.persistence and not self._entry.persistence_mode:
                try:
                    self.gpu.set_persistence_mode(True)
                except GPUNotSupportedError:
                    self.log("note: persistence mode cannot be set here; the limit may revert if the driver unloads")
        elif clocks and not self._entry.sm_clocks_changed:
            self._entry = dataclasses.replace(self._entry, sm_clocks_changed=True)
            write_journal(self._entry, self.state_dir)
        if clocks and not self._entry.sm_lock_readable and not self._noted_unreadable:
            self._noted_unreadable = True
            self.log(
                "note: NVML cannot read back a clock lock set before this run; the SM clocks will be unlocked "
                "(reset) at the end"
            )

    def set_limit_mw(self, mw: int) -> int:
        """Set the limit (journal first), read back and return the enforced limit. Units: mW."""
        with self._rlock:
            self._journal(clocks=False)
            if self.gpu.management_limit_mw() != mw:
                self.gpu.set_power_limit_mw(int(mw))
            return int(self.gpu.power_limit_mw())  # (enforced: below `mw` where another cap holds the card)

    def set_sm_clock_mhz(self, mhz: int) -> int:
        """Lock the SM clock to `mhz` (min = max; journal first); return the lock read back (`mhz` if unreadable).

        Units: MHz. Raises GPUError when the card reads back a different lock.
        """
        target = (int(mhz), int(mhz))
        with self._rlock:
            self._journal(clocks=True)
            try:
                current, readable = self.gpu.locked_sm_clocks_mhz(), True
            except GPUNotSupportedError:  # NVML: set every time, trust the call
                current, readable = None, False
            if current != target:
                self.gpu.set_locked_sm_clocks_mhz(*target)
            if readable and (back := self.gpu.locked_sm_clocks_mhz()) != target:
                raise GPUError(f"SM clocks read {lock_text(back)} after locking {target[1]} MHz")
            return target[1]

    def restore(self, quiet: bool = False) -> None:
        """Put the original clock lock, limit and persistence mode back and delete the journal (idempotent).

        On failure the journal stays, a message names `luce-bench restore`, and the error is raised unless `quiet`.
        """
        with self._rlock:
            if self._entry is None or self.restoring:
                return
            self.restoring = True
            try:
                apply_entry(self.gpu, self._entry)
                journal_path(self.uuid, self.state_dir).unlink(missing_ok=True)
                self._entry = None
                self.restore_error = None
            except Exception as exc:
                self.restore_error = f"{type(exc).__name__}: {exc}"
                self.log(
                    f"luce-bench: could not restore the settings of GPU {self.gpu.index} ({exc}); "
                    "the journal is kept: run `luce-bench restore`"
                )
                if not quiet:
                    raise
            finally:
                self.restoring = False


@contextlib.contextmanager
def applied_power_limit(gpu: GPU, watts: float, **kwargs: object) -> Iterator[int]:
    """Set one limit for a `with` block and yield the enforced limit in mW; the original always comes back."""
    with PowerLimitController(gpu, **kwargs) as ctl:  # type: ignore[arg-type]
        yield ctl.set_limit_mw(round(watts * 1000))
