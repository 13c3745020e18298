"""Changing power limits safely: journal, lock, and restore the ORIGINAL limit on every exit.

`PowerLimitController` (a context manager) takes the per-GPU lock, refuses a stale journal, writes the journal before
the first change, sets limits and reads back the enforced value, and restores the original limit and persistence mode
on normal exit, exception, SIGINT, SIGTERM and SIGHUP (signal handlers restore first, then raise KeyboardInterrupt or
SystemExit), with an atexit backstop. After SIGKILL or a crash, `restore_from_journals()` (`luce-bench restore`)
replays the journal. `applied_power_limit(gpu, watts)` is the one-limit shorthand.
"""

from __future__ import annotations

import atexit
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from luce_bench.gpu.base import GPU, GPUError, GPUNotSupportedError, GPUPermissionError, refuse_if_read_only
from luce_bench.gpu.journal import (
    GpuLock,
    JournalEntry,
    JournalError,
    journal_path,
    list_journals,
    new_entry,
    read_journal,
    write_journal,
)

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


class _Guard:
    """Process-wide backstops shared by all active controllers: signal handlers and one atexit hook."""

    active: list[PowerLimitController] = []
    previous: dict[int, object] = {}
    atexit_registered = False

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

    @classmethod
    def restore_all(cls) -> None:
        for ctl in list(cls.active):
            ctl.restore(quiet=True)

    @classmethod
    def on_signal(cls, signum: int, frame: object) -> None:
        if any(ctl.restoring for ctl in cls.active):
            return  # a second signal while restoring: let the restore finish
        print(f"luce-bench: caught {signal.Signals(signum).name}, restoring power limits", file=sys.stderr, flush=True)
        cls.restore_all()
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


class PowerLimitController:
    """Owns one GPU's power limit for a `with` block and guarantees the original comes back."""

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
            persistence: turn persistence mode on while limits are changed (measurement.md rule 9).
            log: receives one-line notes.
        """
        self.gpu, self.fake, self.state_dir, self.persistence = gpu, fake, state_dir, persistence
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        self.uuid = gpu.uuid()
        self._lock = GpuLock(self.uuid, state_dir)
        self._entry = None
        self._rlock = threading.RLock()
        self.restoring = False

    def __enter__(self) -> PowerLimitController:
        refuse_if_read_only(self.gpu.read_only, "change power limits")
        self._lock.acquire()
        try:
            own = journal_path(self.uuid, self.state_dir)
            if own.exists():  # we hold the lock, so no live process owns this journal
                raise JournalError(_stale_message(own, read_journal(own)))
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

    def set_limit_mw(self, mw: int) -> int:
        """Set the limit (journal first), read back and return the enforced limit. Units: mW."""
        if not self._lock.held:
            raise JournalError("PowerLimitController used outside its `with` block")
        with self._rlock:
            if self._entry is None:
                self._entry = new_entry(self.gpu, self.fake)
                write_journal(self._entry, self.state_dir)
                if self.persistence and not self._entry.persistence_mode:
                    try:
                        self.gpu.set_persistence_mode(True)
                    except GPUNotSupportedError:
                        self.log(
                            "note: persistence mode cannot be set here; the limit may revert if the driver unloads"
                        )
            if self.gpu.power_limit_mw() != mw:
                self.gpu.set_power_limit_mw(int(mw))
            return int(self.gpu.power_limit_mw())

    def restore(self, quiet: bool = False) -> None:
        """Put the original limit and persistence mode back and delete the journal (idempotent).

        On failure the journal stays, a message names `luce-bench restore`, and the error is raised unless `quiet`.
        """
        with self._rlock:
            if self._entry is None or self.restoring:
                return
            self.restoring = True
            try:
                _apply_entry(self.gpu, self._entry)
                journal_path(self.uuid, self.state_dir).unlink(missing_ok=True)
                self._entry = None
            except Exception as exc:
                self.log(
                    f"luce-bench: could not restore the power limit of GPU {self.gpu.index} ({exc}); "
                    "the journal is kept: run `luce-bench restore`"
                )
                if not quiet:
                    raise
            finally:
                self.restoring = False


def _apply_entry(gpu: GPU, entry: JournalEntry) -> str:
    """Set `gpu` back to the journalled state; return what was done. Skips unchanged values."""
    before_mw = int(gpu.power_limit_mw())
    if before_mw != entry.original_limit_mw:
        gpu.set_power_limit_mw(entry.original_limit_mw)
    after_mw = int(gpu.power_limit_mw())
    if after_mw != entry.original_limit_mw:
        raise GPUError(
            f"enforced limit reads {after_mw / 1000:g} W after restoring {entry.original_limit_mw / 1000:g} W"
        )
    with contextlib.suppress(GPUNotSupportedError):
        if bool(gpu.persistence_mode()) != entry.persistence_mode:
            gpu.set_persistence_mode(entry.persistence_mode)
    return f"{before_mw / 1000:g} W -> {after_mw / 1000:g} W"


def refuse_stale_journals(state_dir: Path | None = None) -> None:
    """Raise JournalError when a journal exists whose GPU lock no live process holds (it needs `luce-bench restore`)."""
    for path in list_journals(state_dir):
        entry = read_journal(path)
        lock = GpuLock(entry.uuid, state_dir)
        try:
            lock.acquire()
        except JournalError:
            continue  # a live run owns it (the lock check on our own GPU reports that conflict)
        lock.release()
        raise JournalError(_stale_message(path, entry))


def _stale_message(path: Path, entry: JournalEntry) -> str:
    return (
        f"a stale power-limit journal exists ({path}): {entry.describe()}. "
        "A previous run did not finish; run `luce-bench restore` first"
    )


def restore_from_journals(
    state_dir: Path | None = None, opener: Callable[..., object] | None = None, dry_run: bool = False
) -> list[str]:
    """Replay every stale journal (`luce-bench restore`); return one line per GPU. Journals of live runs are skipped.

    Raises:
        GPUError: a GPU could not be restored (its journal stays; the message says why).
    """
    if opener is None:
        from luce_bench.gpu import open_gpu as opener
    from luce_bench.gpu.journal import boot_id

    lines: list[str] = []
    for path in list_journals(state_dir):
        entry = read_journal(path)
        lock = GpuLock(entry.uuid, state_dir)
        try:
            lock.acquire()
        except JournalError as exc:
            lines.append(f"skipped {entry.uuid}: {exc}")
            continue
        try:
            if dry_run:
                lines.append(f"would restore {entry.describe()}")
                continue
            gpu = opener(index=entry.index, fake_preset=entry.fake, uuid=entry.uuid)
            try:
                done = _apply_entry(gpu, entry)
            except GPUPermissionError as exc:
                raise GPUPermissionError(f"cannot restore GPU {entry.index}: {exc}") from exc
            finally:
                gpu.close()
            path.unlink(missing_ok=True)
            note = (
                " (the machine rebooted since the journal was written)"
                if entry.boot_id and entry.boot_id != boot_id()
                else ""
            )
            lines.append(
                f"restored GPU {entry.index} ({entry.gpu_name}): power limit {done}, persistence "
                f"{'on' if entry.persistence_mode else 'off'}{note}"
            )
        finally:
            lock.release()
    return lines


@contextlib.contextmanager
def applied_power_limit(gpu: GPU, watts: float, **kwargs: object) -> Iterator[int]:
    """Set one limit for a `with` block and yield the enforced limit in mW; the original always comes back."""
    with PowerLimitController(gpu, **kwargs) as ctl:  # type: ignore[arg-type]
        yield ctl.set_limit_mw(round(watts * 1000))
