"""One look for the progress bars of long file work (synthetic checkpoints, GGUF exports)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def param_bar(description: str, total: int) -> Iterator[tuple[Callable[[int], None], Callable[[str], None]]]:
    """A transient rich bar over `total` units; yields (advance(n), describe(text))."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield (lambda n: bar.advance(task, n)), (lambda text: bar.update(task, description=text))
