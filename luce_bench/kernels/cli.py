"""`luce-bench kernel ...`: build the megakernel and show its ptxas report (mounted by the lead with add_typer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Build and inspect the bundled CUDA decode megakernel.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Build and inspect the bundled CUDA decode megakernel."""


@app.command("info")
def info_cmd(arch: Optional[str] = typer.Option(None, help="arch to describe (default: the GPU's)")) -> None:
    """Show nvcc, arch, cache path and (if built) registers/spills as JSON; never compiles."""
    import json

    from luce_bench.errors import UserError
    from luce_bench.kernels import build_info

    info = build_info(arch)
    if arch is not None and info.get("error"):  # an explicit bad --arch is bad input, not a state to report
        raise UserError(info["error"])
    typer.echo(json.dumps(info, indent=2))


@app.command("build")
def build_cmd(
    arch: Optional[str] = typer.Option(None, help="comma-separated archs, e.g. sm_90 or sm_80,sm_90; default: the GPU's"),
    out: Optional[Path] = typer.Option(None, help="output directory (default: the content-hash cache)"),
    force: bool = typer.Option(False, help="rebuild even if a cached build exists"),
) -> None:
    """Compile the megakernel with nvcc (cached by sources + flags + nvcc version) and print registers/spills."""
    from luce_bench.kernels.build import build

    res = build(arch, out, force=force)
    typer.echo(f"{'cached' if res.cached else 'built'}: {res.lib}")
    typer.echo(f"nvcc: {res.nvcc_version}")
    for r in res.reports:
        typer.echo(f"  {r.arch}: {r.registers} registers, {r.stack_bytes} B stack, "
                   f"{r.spill_stores} B spill stores, {r.spill_loads} B spill loads  ({r.function})")
    if any(r.spill_stores or r.spill_loads for r in res.reports):
        typer.echo("WARNING: register spills (see ptxas.txt next to the library)", err=True)
