"""Appending rows to a run directory's CSVs so that a row is either all there or not at all.

Each `add` is one write of complete lines, fsynced; if it fails (a full disk, a file-size limit), the file is cut
back to where it was and RunDirError says why. A file whose last line lacks its newline (a crash mid-write on a
filesystem that allows it) is cut back to its last complete line when reopened. `signals_deferred` holds SIGINT,
SIGTERM and SIGHUP back over a few statements (a row and the count of rows that goes with it), so that a signal lands
before or after them, never between.
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from luce_bench.records import columns, to_cells


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP back in the block (main thread); they are raised again when it ends.

    A handler that only records stands in for each one meanwhile (a signal mask would not do: the kernel delivers a
    process signal to any thread that does not block it, the sampler's, and Python then runs the handler at once).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = [s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    old = {s: signal.getsignal(s) for s in held}
    held = [s for s in held if old[s] is not None]  # a handler installed outside Python stays as it is
    pending: list[int] = []
    for s in held:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s in held:
            signal.signal(s, old[s])
        for s in pending:
            signal.raise_signal(s)


class RunDirError(Exception):
    """A run directory could not be written (disk full, I/O error): the run stops, its finished rows stay intact."""


def _header(path: Path) -> list[str]:
    """The column names on the first line of the CSV `path` (a byte-order mark ignored)."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        return next(csv.reader([f.readline()]), [])


class CsvAppender:
    """A CSV of records of one type that gains whole, fsynced rows as they finish (see the module docstring)."""

    def __init__(self, path: Path, cls: type) -> None:
        """Open `path` for appending; a new file gets the header first.

        Rows follow the file's own header: a file begun by an older luce-bench (a resumed run) lacks the columns added
        since, so its new rows leave those out instead of shifting every cell after them.
        """
        self.path = path
        self._columns = columns(cls)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            if self._cut_partial_line(os.fstat(self._fd).st_size) == 0:
                self._write(",".join(self._columns) + "\n")
            else:
                self._columns = _header(path) or self._columns
        except BaseException:
            self.close()
            raise

    @classmethod
    def repair(cls, path: Path, record_cls: type) -> None:
        """Cut a line a crash left unfinished, or give an empty file its header; open the file only if either is due.

        (A finished run may lie in a read-only folder: reading it must not need write access.)
        """
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            if size:
                f.seek(size - 1)
            whole = size > 0 and f.read(1) == b"\n"
        if not whole:
            cls(path, record_cls).close()

    def _cut_partial_line(self, size: int) -> int:
        """Cut the file back to its last complete line; return its size."""
        if size == 0:
            return 0
        with open(self.path, "rb") as f:
            f.seek(max(size - (1 << 16), 0))  # a row is far shorter than 64 KiB
            tail = f.read()
        if not tail.endswith(b"\n"):
            size = size - len(tail) + tail.rfind(b"\n") + 1
            os.ftruncate(self._fd, size)
        return size

    def _write(self, text: str) -> None:
        data = text.encode("utf-8")
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            done = 0
            while done < len(data):
                done += os.write(self._fd, data[done:])
            os.fsync(self._fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, start)  # no half-written row: cut back to the last complete one
            raise RunDirError(f"cannot append to {self.path}: {exc.strerror or exc}") from exc

    def add(self, records: Sequence[Any]) -> None:
        """Append `records` and make them durable; RunDirError (file unchanged) if they cannot be written."""
        if records:
            buf = io.StringIO()
            csv.writer(buf, lineterminator="\n").writerows(to_cells(r, self._columns) for r in records)
            self._write(buf.getvalue())

    def close(self) -> None:
        """Close the file."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
