"""Changing power limits safely: validate targets, journal, lock, and restore the ORIGINAL limit on every exit.

`PowerLimitController` (a context manager) takes the per-GPU lock, refuses a stale journal, writes the journal before
the first change, sets limits and reads back the enforced value, and restores the original limit and persistence mode
on normal exit, exception, SIGINT, SIGTERM and SIGHUP (signal handlers restore first, then raise KeyboardInterrupt or
SystemExit), with an atexit backstop. After SIGKILL or a crash, `restore_from_journals()` (`luce-bench restore`)
replays the journal. `applied_power_limit(gpu, watts)` is the one-limit shorthand.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from luce_bench.errors import UserError
from luce_bench.gpu.base import PERMISSION_HINT, GPUError, GPUNotSupportedError, GPUPermissionError, refuse_if_read_only
from luce_bench.gpu.journal import (
    GpuLock,
    JournalError,
    journal_path,
    list_journals,
    new_entry,
    read_journal,
    write_journal,
)

HANDLED_SIGNALS = tuple(s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@dataclass(frozen=True)
class LimitTarget:
    """One requested limit: what the user wrote, what it resolves to, and whether --clamp moved it."""

    text: str
    requested_mw: int
    clamped: bool = False

    @property
    def requested_w(self) -> float:
        """Requested limit in W."""
        return self.requested_mw / 1000.0


def parse_limits(
    spec: str | Sequence[str | int | float],
    default_mw: int,
    constraints_mw: tuple[int, int],
    clamp: bool = False,
    gpu_name: str = "this GPU",
) -> list[LimitTarget]:
    """Resolve "420,300,70%" (W or % of the default limit) and check every value against the card's range.

    Raises:
        UserError: a malformed value, or one outside `constraints_mw` without `clamp`; nothing has changed yet.
    """
    items = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else [str(s).strip() for s in spec]
    items = [s for s in items if s]
    if not items:
        raise UserError("no power limits given (e.g. --limits 420,300,220 or 100%,70%,50%)")
    lo, hi = constraints_mw
    out: list[LimitTarget] = []
    bad: list[str] = []
    for text in items:
        try:
            if text.endswith("%"):
                mw = round(float(text[:-1]) / 100.0 * default_mw)
            else:
                mw = round(float(text.rstrip("Ww")) * 1000.0)
        except (ValueError, OverflowError):
            raise UserError(
                f"bad power limit {text!r}: give watts (300) or a share of the default limit (70%)"
            ) from None
        if mw <= 0:
            raise UserError(f"bad power limit {text!r}: must be positive")
        clamped = False
        if not lo <= mw <= hi:
            if not clamp:
                bad.append(f"{text} ({mw / 1000:g} W)")
                continue
            mw, clamped = min(max(mw, lo), hi), True
        if all(t.requested_mw != mw for t in out):
            out.append(LimitTarget(text, mw, clamped))
    if bad:
        raise UserError(
            f"power limit {', '.join(bad)} outside the range of {gpu_name}: {lo / 1000:g}-{hi / 1000:g} W "
            f"(default {default_mw / 1000:g} W); fix --limits or pass --clamp"
        )
    return out


def _has_cap_sys_admin() -> bool:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) & (1 << 21))
    except (OSError, ValueError, IndexError):
        pass
    return False


def check_set_permission(gpu) -> None:  # noqa: ANN001 - any GPU
    """Fail before anything changes if setters cannot work: read-only mode, or no root / CAP_SYS_ADMIN.

    Raises:
        GPUReadOnlyError: read-only mode is on.
        GPUPermissionError: the process lacks the privilege (message says how to run it).
    """
    refuse_if_read_only(getattr(gpu, "read_only", False), "change power limits")
    if hasattr(gpu, "refuse_set"):  # FakeGPU: its own switch models the privilege
        if gpu.refuse_set:
            raise GPUPermissionError(f"no permission to change power limits of GPU {gpu.index}; {PERMISSION_HINT}")
        return
    if os.geteuid() != 0 and not _has_cap_sys_admin():
        raise GPUPermissionError(f"no permission to change power limits of GPU {gpu.index}; {PERMISSION_HINT}")


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
        gpu,
        fake: str | None = None,
        state_dir: Path | None = None,  # noqa: ANN001 - any GPU
        persistence: bool = True,
        log: Callable[[str], None] | None = None,
    ) -> None:
        """Prepare control of one GPU (nothing is taken or changed until `with`).

        Args:
            gpu: the GPU to control.
            fake: FakeGPU preset name when it is one (journalled, so `restore` can reopen it).
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
        refuse_if_read_only(getattr(self.gpu, "read_only", False), "change power limits")
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


def _apply_entry(gpu, entry) -> str:  # noqa: ANN001
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


def _stale_message(path: Path, entry) -> str:  # noqa: ANN001
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
            gpu = opener(index=entry.index, fake=entry.fake or False, uuid=entry.uuid)
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
def applied_power_limit(gpu, watts: float, **kwargs: object) -> Iterator[int]:  # noqa: ANN001
    """Set one limit for a `with` block and yield the enforced limit in mW; the original always comes back."""
    with PowerLimitController(gpu, **kwargs) as ctl:  # type: ignore[arg-type]
        yield ctl.set_limit_mw(round(watts * 1000))
