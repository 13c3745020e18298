"""luce-bench command line: flags become a validated config, the config a plan; the work lives in other modules.

A user error prints one line and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from luce_bench.cli import measure, tools
from luce_bench.cli.options import handle_errors, state
from luce_bench.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Energy-efficiency benchmarks and power-limit sweeps for local LLM inference on NVIDIA GPUs.",
)
model_app = typer.Typer(no_args_is_help=True, help="Prepare model checkpoints.")


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every GPU setter (also LUCE_BENCH_READONLY=1).")
    ] = False,
) -> None:
    """luce-bench: tok/s and tok/J of a CUDA megakernel vs llama.cpp vs HF transformers (Qwen3.5-0.8B)."""
    state["debug"] = debug
    if read_only:
        from luce_bench.gpu import enable_read_only_mode

        enable_read_only_mode()


for _fn in (measure.compare, measure.bench, measure.sweep, tools.report, tools.info, tools.restore, tools.publish):
    app.command(_fn.__name__)(handle_errors(_fn))
model_app.command("prepare")(handle_errors(tools.model_prepare))
app.add_typer(model_app, name="model")


def _mount_kernel() -> None:
    # `luce-bench kernel ...` lives with the kernel code; a missing module must not break --help of the rest
    try:
        from luce_bench.kernels.cli import app as kernel_app
    except ImportError:
        return
    for command in kernel_app.registered_commands:  # the same one-line errors as every other command
        command.callback = handle_errors(command.callback)
    app.add_typer(kernel_app, name="kernel", help="Build the CUDA megakernel.")


_mount_kernel()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserError as exc:  # raised outside a command (e.g. while mounting)
        if state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
