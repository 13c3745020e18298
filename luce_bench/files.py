"""Where luce-bench keeps files, and the one way it replaces a file: write a sibling temp, then rename it into place.

* Cache (synthetic checkpoints, GGUF exports): `$LUCE_BENCH_CACHE`, else platformdirs' user cache dir
  (`$XDG_CACHE_HOME/luce-bench`, `~/.cache/luce-bench` on Linux).
* State (power-limit journals and locks): `$LUCE_BENCH_STATE_DIR`, else platformdirs' user state dir
  (`$XDG_STATE_HOME/luce-bench`, `~/.local/state/luce-bench`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from luce_bench.errors import UserError

APP = "luce-bench"
CACHE_ENV = "LUCE_BENCH_CACHE"
STATE_ENV = "LUCE_BENCH_STATE_DIR"


# A failed write of a file's bytes (not a console's broken pipe, not an OSError("text") without an errno)
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def existing_dir(path: Path, what: str) -> None:
    """Bad input unless `path` is a directory (one line: missing, or a file)."""
    if not path.exists():
        raise UserError(f"{what} not found: {path}")
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a directory")


def shell_arg(path: object) -> str:
    """`path` as a shell reads it back: quoted where it holds spaces, brackets or quotes (a command to paste)."""
    import shlex

    return shlex.quote(str(path))


def cache_dir() -> Path:
    """The user cache directory (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir(APP, appauthor=False))


def state_dir() -> Path:
    """The user state directory (see the module docstring)."""
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV])
    import platformdirs

    return Path(platformdirs.user_state_dir(APP, appauthor=False))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_swept: set[Path] = set()  # the files whose killed writers' temporaries this process has looked for


@contextlib.contextmanager
def atomic_path(final: Path, durable: bool = False, existing: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a fresh sibling path of `final`; on success it is renamed onto `final`, on failure removed.

    The caller creates a file or a directory at the yielded path. A reader never sees a half-written `final`.
    With `durable`, the file and the directory entry are fsynced (journals must survive a power cut).
    A directory already at `final` (a rename cannot replace a non-empty one) fails the rename with OSError, unless
    `existing` decides: True keeps it (another writer put the same thing there first) and drops the new one; False
    renames it aside, puts the new one in place, then removes it (a process reading from it keeps its open files).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if final not in _swept:  # a killed writer's (a model export's can be 1.2 GB); once per file and process, not
        _swept.add(final)  # at each of a run's status.json rewrites
        remove_stale_siblings(final)
    tmp = _sibling(final, "tmp")
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        _rename_into_place(tmp, final, existing)
        if durable:
            _fsync_dir(final.parent)
    except OSError as exc:  # (a write into the temp file names no file: the error names the one being written)
        if exc.filename is None and exc.errno in WRITE_ERRNOS and not isinstance(exc, BrokenPipeError):
            exc.filename = str(final)
        raise
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def pid_alive(pid: object) -> bool:
    """Whether process `pid` runs on this machine (another user's counts: it cannot be signalled but is there)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # (another user's: there unless it only waits to be reaped)
        return not _zombie(pid)
    except OverflowError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Whether `pid` has ended and only waits to be reaped (Linux /proc; elsewhere: no).

    A run SIGKILLed from a shell that has not yet looked: os.kill still finds it, but it holds no lock and writes
    nothing any more.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = stat.rpartition(")")[2].split()  # (the command name in parentheses may hold spaces)
    return bool(fields) and fields[0] in ("Z", "X")


def boot_id() -> str | None:
    """This boot's id (Linux), to tell whether a journal, a status or a temporary's writer survived a reboot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


@functools.cache
def host_tag() -> str:
    """4 hex digits naming this machine and boot: a temporary's writer is judged by its pid only where they match."""
    return hashlib.sha256(f"{socket.gethostname()} {boot_id() or ''}".encode()).hexdigest()[:4]


def _sibling(final: Path, suffix: str) -> Path:
    return final.with_name(f".{final.name}.{os.getpid()}.{host_tag()}{secrets.token_hex(2)}.{suffix}")


STALE_S = 3600.0  # a temporary of this machine's dead process is removed once untouched this long
OTHER_HOST_STALE_S = 7 * 86400.0  # another machine's (a shared cache): its pid means nothing here, only its age


def _untouched_s(path: Path) -> float:
    """Seconds since anything in `path` (a file, or a directory's whole tree) last changed."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, names in os.walk(path):
            for name in [*dirs, *names]:
                with contextlib.suppress(OSError):
                    newest = max(newest, os.lstat(os.path.join(root, name)).st_mtime)
    return time.time() - newest


def _stale(m: re.Match[str], entry: Path) -> bool:
    """Whether the writer of `entry` (pattern groups `pid`, `host`) is gone and the entry untouched long enough."""
    if m["host"] != host_tag():
        return _untouched_s(entry) >= OTHER_HOST_STALE_S
    pid = int(m["pid"])
    return pid != os.getpid() and not pid_alive(pid) and _untouched_s(entry) >= STALE_S


def remove_stale(parent: Path, pattern: str) -> list[Path]:
    """Remove what a killed writer (SIGKILL, OOM, power loss) left in `parent`; return what was removed.

    That is every entry whose whole name matches `pattern` (groups `pid` and `host`: the writer's process id and
    host_tag) when that process is gone from this machine and the entry is untouched for STALE_S (another machine's:
    OTHER_HOST_STALE_S).
    """
    gone = []
    with contextlib.suppress(OSError):
        for entry in parent.iterdir():
            m = re.fullmatch(pattern, entry.name)
            with contextlib.suppress(OSError):
                if not m or not _stale(m, entry):
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                gone.append(entry)
    return gone


def remove_stale_siblings(final: Path) -> list[Path]:
    """Remove the temporaries of `final` that a killed atomic_path left (`.NAME.PID.HOSTHEX.tmp` / `.old`).

    A writer killed between its two renames leaves the only copy in `.old` with `final` missing: that one is put
    back, not removed.
    """
    sib = rf"\.{re.escape(final.name)}\.(?P<pid>\d+)\.(?P<host>[0-9a-f]{{4}})[0-9a-f]{{4}}\."
    if not final.exists():
        with contextlib.suppress(OSError):
            for entry in sorted(final.parent.iterdir(), key=lambda p: p.lstat().st_mtime, reverse=True):
                m = re.fullmatch(sib + "old", entry.name)
                if m and _stale(m, entry):
                    os.replace(entry, final)
                    break
    return remove_stale(final.parent, sib + "(?:tmp|old)")


def _rename_into_place(tmp: Path, final: Path, existing: Callable[[Path], bool] | None) -> None:
    aside: list[Path] = []
    try:
        for _ in range(5):  # other writers may put a directory back between our two renames
            try:
                os.replace(tmp, final)
                return
            except OSError:
                if existing is None or (final.exists() and not final.is_dir()):
                    raise
                if not final.exists():
                    continue  # it went away between the two calls
            if existing(final):
                return
            aside.append(_sibling(final, "old"))
            with contextlib.suppress(FileNotFoundError):
                os.replace(final, aside[-1])
        raise OSError(f"could not put {final} in place: other writers keep replacing it")
    finally:
        for old in aside:
            shutil.rmtree(old, ignore_errors=True)


def default_mode(path: Path) -> None:
    """Give `path` the 0666 & ~umask permissions that open() gives a new file.

    A writer that made it 0600 (safetensors' does) would keep the other users of a shared cache from reading it.
    """
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


def atomic_write(path: Path, data: str | bytes, durable: bool = False) -> None:
    """Replace `path` with `data` atomically; the file gets the usual 0666 & ~umask permissions."""
    with atomic_path(Path(path), durable) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)


def _json_safe(value: object) -> object:
    """`value` with every NaN or infinity (a number that was not measured) as None, containers walked."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def json_text(doc: object, indent: int = 2) -> str:
    """Standard JSON for a file other programs read: an unmeasured number is null.

    Python's json writes NaN by default, which strict parsers (JavaScript's JSON.parse, jq) reject.
    """
    return json.dumps(_json_safe(doc), indent=indent, allow_nan=False) + "\n"
