"""The console side of a run: status lines, a loading spinner, progress bars or one line per repetition."""

from __future__ import annotations

from typing import Any

from luce_bench.records import RunRecord


class ConsoleUI:
    """Shows a run on a rich console: progress bars per backend, or one line per finished repetition.

    Lines come with `rows` (sweeps), and wherever the console is not a terminal: a bar in a log or a pipe shows only
    once it is complete.
    """

    def __init__(self, console: Any, rows: bool = False) -> None:
        """Print to `console`; `rows` replaces the progress bars by a line per repetition (sweeps)."""
        self.console, self.rows = console, rows or not console.is_terminal
        self._bar: Any = None
        self._tasks: dict[str, Any] = {}

    def status(self, msg: str, lead: str = "", style: str = "") -> None:
        """One line of news, plain text; `lead` labels it in `style` (`style` alone: the whole line)."""
        from luce_bench.tables import styled

        self.console.print(styled(msg, lead, style))

    def loading(self, backend: str, model: str) -> Any:
        """A spinner while `backend` loads."""
        from rich.text import Text

        return self.console.status(Text(f"loading {backend} with {model}…"))

    def waiting(self, label: str, total_s: float) -> Any:
        """A bar that fills over a timed wait of `total_s` seconds (a sweep's settling and idle baseline)."""
        import contextlib

        from luce_bench.progress import wait_bar

        if total_s <= 0:
            return contextlib.nullcontext()
        if not self.console.is_terminal:  # a log or a pipe: a line when the wait starts, no bar
            self.console.print(f"{label}, {total_s:g} s…", markup=False)
            return contextlib.nullcontext()
        self.close()  # one live display at a time
        return wait_bar(self.console, label, total_s)

    def progress(self, label: str, done: int, total: int) -> None:
        """Advance the bar of `label` (no bars in `rows` mode: a line per repetition instead)."""
        if self.rows:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
        if label not in self._tasks:
            self._tasks[label] = self._bar.add_task(f"{label} repetitions", total=total)
        self._bar.update(self._tasks[label], completed=done)

    def record(self, record: RunRecord) -> None:
        """In `rows` mode, one line per finished repetition."""
        if self.rows:
            energy = f", {record.tok_per_j:.3f} tok/J" if record.tok_per_j else ""
            self.console.print(f"  {record.backend} {record.test} rep {record.rep}: {record.avg_ts:.1f} tok/s{energy}")

    def backend_done(self, backend: str) -> None:
        """Close the bars of a backend that has finished."""
        self.close()

    def close(self) -> None:
        """Stop the live display, if any."""
        if self._bar is not None:
            self._bar.stop()
            self._bar, self._tasks = None, {}
