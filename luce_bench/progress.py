"""One look for progress bars: long file work (synthetic checkpoints, GGUF exports) and a sweep's timed waits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any


@contextlib.contextmanager
def param_bar(description: str, total: int) -> Iterator[tuple[Callable[[int], None], Callable[[str], None]]]:
    """A transient rich bar over `total` units; yields (advance(n), describe(text)).

    Where the console is no terminal (a log, a pipe) the bar would show nothing: a line per description instead.
    """
    from rich import get_console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    console = get_console()
    if not console.is_terminal:
        console.print(f"{description}…", highlight=False, markup=False)
        yield (lambda n: None), (lambda text: console.print(f"{text}…", highlight=False, markup=False))
        return
    with Progress(
        TextColumn("{task.description}", style="bold", markup=False),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield (lambda n: bar.advance(task, n)), (lambda text: bar.update(task, description=text))


def waited_s(task: Any) -> float:
    """The seconds of a timed wait gone so far: its task's elapsed time, at most its total. Units: s."""
    return min(task.elapsed or 0.0, task.total or 0.0)


@contextlib.contextmanager
def wait_bar(console: Any, description: str, total_s: float) -> Iterator[None]:
    """A transient rich bar over a wait of `total_s` seconds that fills with the time elapsed (e.g. "3/10 s").

    For waits whose length is known and that report nothing while they last: a sweep's settling under load and its
    idle baseline. The bar follows the wall clock (rich refreshes it), so a run in virtual time only flashes it.
    """
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn
    from rich.text import Text

    class ElapsedBar(BarColumn):
        def render(self, task: Any) -> Any:
            bar = super().render(task)
            bar.completed = waited_s(task)
            return bar

    class Seconds(ProgressColumn):
        def render(self, task: Any) -> Text:
            digits = 0 if float(task.total).is_integer() else 1
            return Text(f"{waited_s(task):.{digits}f}/{task.total:g} s", style="progress.download")

    with Progress(
        TextColumn("{task.description}", markup=False),
        ElapsedBar(),
        Seconds(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        bar.add_task(description, total=total_s)
        yield
