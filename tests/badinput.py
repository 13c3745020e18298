"""What every bad-input test checks: one line, exit code 2, nothing created, no GPU setting changed.

`watched` runs the CLI with the run itself stubbed out (`runner.run` raises `Reached`): an input either reaches the
run (it was accepted) or is refused before it. Refused means: exit code 2, exactly one line of output starting with
"error:", no traceback, no run directory, and no GPU setter called (`forbid_gpu_setters` records every attempt).
Hypothesis tests cannot take function-scoped fixtures, so the environment is patched per call here.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.gpu.testing import forbid_gpu_setters

runner = CliRunner()


class Reached(Exception):
    """The input was accepted: the run would start now."""


@contextlib.contextmanager
def sandbox() -> Iterator[Path]:
    """A fresh directory with private journal and card state, offline, no faults or read-only mode."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {
            "LUCE_BENCH_STATE_DIR": f"{tmp}/state",
            "LUCE_BENCH_FAKE_GPU_STATE": f"{tmp}/card.json",
            "HF_HUB_OFFLINE": "1",
        }
        drop = ("LUCE_BENCH_READONLY", "LUCE_BENCH_FAKE_GPU_NO_PERMISSION", "LUCE_BENCH_FAKE_GPU_FAULTS")
        clean = {k: v for k, v in os.environ.items() if k not in drop}
        with mock.patch.dict(os.environ, {**clean, **env}, clear=True):
            yield Path(tmp)


def invoke(args: list[str], tmp: Path) -> tuple[Any, list[Any]]:
    """Run the CLI with `args` (plus --out into `tmp`) and the run stubbed; (result, GPU setter calls attempted)."""
    with forbid_gpu_setters(strict=False) as calls, mock.patch("luce_bench.runner.run", side_effect=Reached):
        result = runner.invoke(app, args)
    return result, calls


def refused(result: Any, calls: list[Any], tmp: Path, fragment: str = "") -> str:
    """Assert the input was refused as bad input (see the module docstring); return its one line."""
    assert not isinstance(result.exception, Reached), f"accepted: {result.output}"
    assert result.exit_code == 2, (result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output and fragment in lines[0], lines
    assert calls == []
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir()), "a run directory was created"
    return lines[0]


def refused_or_reached(result: Any, calls: list[Any], tmp: Path) -> bool:
    """Either property holds; True when the input was accepted (and nothing changed while planning)."""
    if isinstance(result.exception, Reached):
        assert calls == [], "planning changed a GPU setting"
        return True
    refused(result, calls, tmp)
    return False
