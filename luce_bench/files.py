"""Where luce-bench keeps files, and the one way it replaces a file: write a sibling temp, then rename it into place.

* Cache (synthetic checkpoints, GGUF exports): `$LUCE_BENCH_CACHE`, else platformdirs' user cache dir
  (`$XDG_CACHE_HOME/luce-bench`, `~/.cache/luce-bench` on Linux).
* State (power-limit journals and locks): `$LUCE_BENCH_STATE_DIR`, else platformdirs' user state dir
  (`$XDG_STATE_HOME/luce-bench`, `~/.local/state/luce-bench`).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

APP = "luce-bench"
CACHE_ENV = "LUCE_BENCH_CACHE"
STATE_ENV = "LUCE_BENCH_STATE_DIR"


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


@contextlib.contextmanager
def atomic_path(final: Path, durable: bool = False) -> Iterator[Path]:
    """Yield a fresh sibling path of `final`; on success it is renamed onto `final`, on failure removed.

    The caller creates a file or a directory at the yielded path. A reader never sees a half-written `final`.
    With `durable`, the file and the directory entry are fsynced (journals must survive a power cut).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if durable and tmp.is_file():
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
        if durable:
            _fsync_dir(final.parent)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write(path: Path, data: str | bytes, durable: bool = False) -> None:
    """Replace `path` with `data` atomically; the file gets the usual 0666 & ~umask permissions."""
    with atomic_path(Path(path), durable) as tmp:
        if isinstance(data, str):
            tmp.write_text(data)
        else:
            tmp.write_bytes(data)
