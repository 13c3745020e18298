"""Power-limit journal and per-GPU lock, in the state directory (`luce_bench.files.state_dir()`).

Before luce-bench changes anything on a GPU it writes `power-limit-<uuid>.json` (atomically and durably: temp file,
fsync, rename, fsync of the directory) holding the ORIGINAL limit, persistence mode and SM clock lock (where it can be
read: NVML cannot read a lock back, then `sm_lock_readable` is false and a restore unlocks). Before the first clock
change the journal is rewritten with `sm_clocks_changed` set, so a restore touches the clocks only when luce-bench
may have changed them. The journal is deleted only after the original is back. A journal left behind (SIGKILL, OOM,
power loss, reboot) is "stale": `luce-bench restore` replays it, and `sweep` refuses to start until then.
`power-limit-<uuid>.lock` is held with flock while a process may change that GPU's settings, so two luce-bench
processes never do at once; the kernel drops the lock when its holder dies.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import re
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from luce_bench.errors import WriteError
from luce_bench.files import STATE_ENV, atomic_write, boot_id, state_dir
from luce_bench.gpu.base import GPUError


class JournalError(GPUError):
    """A journal or lock problem the user must resolve (stale journal, lock held, unreadable file)."""


def _safe(uuid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", uuid)


@dataclass(frozen=True)
class JournalEntry:
    """What must be put back on one GPU."""

    uuid: str
    index: int
    gpu_name: str
    original_limit_mw: int
    persistence_mode: bool
    fake: str | None  # FakeGPU preset name, None for a real GPU
    pid: int
    host: str
    boot_id: str | None
    created_unix_s: float
    sm_clocks_changed: bool = False  # luce-bench may have locked SM clocks: a restore puts them back
    original_sm_lock_mhz: list[int] | None = None  # [min, max] in force before, None: no lock (or not readable)
    sm_lock_readable: bool = True  # False: the original lock could not be read (NVML); a restore unlocks
    run_dir: str | None = None  # the run that changed the settings; `luce-bench restore` marks it killed

    def describe(self) -> str:
        """One line for messages."""
        clocks = f", SM clocks {self.original_lock_text()}" if self.sm_clocks_changed else ""
        return (
            f"GPU {self.index} ({self.gpu_name}, {self.uuid}): original limit {self.original_limit_mw / 1000:g} W"
            f"{clocks}, persistence {'on' if self.persistence_mode else 'off'}, "
            f"written by pid {self.pid} on {self.host}"
        )

    def original_lock_text(self) -> str:
        """The original SM clock state in words."""
        if not self.sm_lock_readable:
            return "unlocked at the end (the original lock cannot be read back)"
        return lock_text(self.original_sm_lock_mhz)


def lock_text(lock_mhz: tuple[int, int] | list[int] | None) -> str:
    """A lock in words: unlocked, "locked 1605 MHz" or "locked 900-1605 MHz"."""
    if not lock_mhz:
        return "unlocked"
    lo, hi = lock_mhz
    return f"locked {hi} MHz" if lo == hi else f"locked {lo}-{hi} MHz"


def journal_path(uuid: str, directory: Path | None = None) -> Path:
    """Path of the journal for `uuid`."""
    return (directory or state_dir()) / f"power-limit-{_safe(uuid)}.json"


def write_journal(entry: JournalEntry, directory: Path | None = None) -> Path:
    """Write the journal atomically and durably (temp file, fsync, rename, fsync dir)."""
    path = journal_path(entry.uuid, directory)
    atomic_write(path, json.dumps(asdict(entry), indent=1), durable=True)
    return path


# field -> the JSON types it may hold (a journal is hand-editable and outlives versions: check every field)
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "uuid": (str,),
    "index": (int,),
    "gpu_name": (str,),
    "original_limit_mw": (int,),
    "persistence_mode": (bool,),
    "fake": (str, type(None)),
    "pid": (int,),
    "host": (str,),
    "boot_id": (str, type(None)),
    "created_unix_s": (int, float),
    "sm_clocks_changed": (bool,),
    "original_sm_lock_mhz": (list, type(None)),
    "sm_lock_readable": (bool,),
    "run_dir": (str, type(None)),
}


def _check_fields(data: object) -> None:
    """ValueError naming the first field of a journal that is missing, unknown or of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"expected a JSON object, got {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELD_TYPES))
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (a journal of another program or version?)")
    for name, types in _FIELD_TYPES.items():
        if name not in data:
            if JournalEntry.__dataclass_fields__[name].default is dataclasses.MISSING:
                raise ValueError(f"missing field {name!r}")
            continue
        value = data[name]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok or (name == "original_limit_mw" and value <= 0):
            raise ValueError(f"field {name!r} = {value!r} is not valid")
    lock = data.get("original_sm_lock_mhz")
    if lock is not None and not (len(lock) == 2 and all(isinstance(v, int) and not isinstance(v, bool) for v in lock)):
        raise ValueError(f"field 'original_sm_lock_mhz' = {lock!r} is not [min, max] in MHz")


def read_journal(path: Path) -> JournalEntry:
    """Parse one journal file; JournalError (one line) if it is unreadable, corrupt or not a luce-bench journal."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        _check_fields(data)
        return JournalEntry(**data)
    except (OSError, ValueError, TypeError, RecursionError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise JournalError(f"unreadable power-limit journal {path}: {msg}; inspect it and delete it by hand") from None


def list_journals(directory: Path | None = None) -> list[Path]:
    """All journal files in the state directory."""
    d = directory or state_dir()
    return sorted(d.glob("power-limit-*.json")) if d.is_dir() else []


def new_entry(  # noqa: ANN001 - any GPU
    gpu, fake: str | None, sm_clocks_changed: bool = False, run_dir: str | None = None
) -> JournalEntry:
    """A journal entry of `gpu`'s current (original) settings; `sm_clocks_changed`: its clocks are about to change."""
    try:
        persistence = bool(gpu.persistence_mode())
    except GPUError:
        persistence = False
    try:
        lock_mhz, readable = gpu.locked_sm_clocks_mhz(), True
    except GPUError:
        lock_mhz, readable = None, False
    return JournalEntry(
        uuid=gpu.uuid(),
        index=gpu.index,
        gpu_name=gpu.name(),
        original_limit_mw=int(gpu.management_limit_mw()),  # (the limit set; the enforced one may be a cap's)
        persistence_mode=persistence,
        fake=fake,
        pid=os.getpid(),
        host=socket.gethostname(),
        boot_id=boot_id(),
        created_unix_s=time.time(),
        sm_clocks_changed=sm_clocks_changed,
        original_sm_lock_mhz=list(lock_mhz) if lock_mhz else None,
        sm_lock_readable=readable,
        run_dir=run_dir,
    )


class GpuLock:
    """Exclusive, non-blocking flock on `power-limit-<uuid>.lock`; released on `release()` or when the process dies."""

    def __init__(self, uuid: str, directory: Path | None = None) -> None:
        """Prepare the lock for `uuid` (nothing is taken yet)."""
        self.uuid = uuid
        self.path = (directory or state_dir()) / f"power-limit-{_safe(uuid)}.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise JournalError naming the holder's pid."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise WriteError(
                f"cannot write the power-limit lock and journal folder {self.path.parent}: {exc.strerror or exc} "
                f"(set {STATE_ENV} to a writable folder)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise JournalError(
                f"another luce-bench process (pid {holder}) is changing power limits on {self.uuid}; "
                "wait for it to finish"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def holder(self) -> str | None:
        """The pid of another process that holds the lock now (a sweep changing this GPU's settings), else None.

        Takes nothing: a shared, non-blocking flock is tried and dropped at once.
        """
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:  # no lock file (no sweep ever ran here), or one this user cannot read: nothing to tell
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                os.ftruncate(fd, 0)
            finally:
                os.close(fd)

    def __enter__(self) -> GpuLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
