"""Library warnings during a run go to the run directory's `run.log`, not between the progress bars.

A run's console shows luce-bench's own lines (progress, notes, the summary); a FutureWarning from transformers or a
UserWarning from torch in the middle of it tells a newcomer nothing they can act on. Each one is appended to
`<run_dir>/run.log` (created only when there is something to write) with where it came from.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOG_NAME = "run.log"


@contextlib.contextmanager
def warnings_to_log(run_dir: Path) -> Iterator[Path]:
    """While inside, `warnings.warn(...)` anywhere in this process appends to `run_dir/run.log`; yields that path."""
    path = run_dir / LOG_NAME
    saved = warnings.showwarning

    def to_log(message: Any, category: type[Warning], filename: str, lineno: int, file: Any = None, line: Any = None):  # noqa: ANN202
        with contextlib.suppress(OSError), open(path, "a") as f:
            f.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = to_log
    try:
        yield path
    finally:
        warnings.showwarning = saved
