"""The parser of every path option and argument (typer's `parser=`).

Outside the CLI package, so `kernel`'s commands can use it without importing the rest of the CLI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def path_param(value: Any) -> Path:
    """A path option's or argument's value: an empty one is bad input, not the working directory.

    `Path("")` is `.`, so `publish --results ""` would otherwise write into whatever directory the command ran in.
    """
    if isinstance(value, Path):  # a default
        return value
    if not str(value).strip():
        import typer

        raise typer.BadParameter("is empty: name a path")
    return Path(value)
