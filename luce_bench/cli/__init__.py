"""luce-bench command line: flags become a validated config, the config a plan; the work lives in other modules.

A user error prints one line and exits with code 2; `--debug` prints the traceback before that line (the exit code
stays). That holds for flags that do not parse as well (`--reps abc`, an unknown option or command): `OneLineErrors`
prints click's message on one line.
"""

from __future__ import annotations

import signal
import sys
import traceback
from typing import Annotated, Any

import click
import typer
from typer import core as typer_core
from typer.core import TyperGroup

from luce_bench.cli import measure, tools
from luce_bench.cli.options import handle_errors, help_text, one_line, state
from luce_bench.errors import UserError
from luce_bench.files import WRITE_ERRNOS

# typer >= 0.2x carries its own copy of click (typer.core._click); older versions use click itself: catch both
_CLICK = {click, getattr(typer_core, "_click", click)}
USAGE_ERRORS = tuple(m.exceptions.ClickException for m in _CLICK)
ABORTS = (click.exceptions.Abort, typer.Abort)
ROOT_ONLY = ("--debug", "--version")  # options of luce-bench itself, not of its commands


class OneLineErrors(TyperGroup):
    """The root command group: a usage error (a flag of the wrong type, an unknown option or command) is one line."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Run the CLI; usage errors become `error: ...` on stderr and exit code 2."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except USAGE_ERRORS as exc:
            _close_options_only(exc)
            message = one_line(" ".join(exc.format_message().split()))
            if message:  # empty: a group called without a command, whose help is shown already
                ctx = getattr(exc, "ctx", None)
                argv = args[0] if args else kwargs.get("args")  # (None: sys.argv)
                where = ctx.command_path if ctx is not None else self._command_path(argv)
                name = getattr(exc, "option_name", None)
                if name in ROOT_ONLY and ctx is not None and ctx.parent is not None:  # (`luce-bench sweep --debug`)
                    rest = ctx.command_path.split(" ", 1)[-1]
                    message += f": it is luce-bench's own option, given before the command (luce-bench {name} {rest})"
                typer.echo(f"error: {message} (see `{where} --help`)", err=True)
            sys.exit(exc.exit_code)
        except ABORTS:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)

    def _command_path(self, argv: Any) -> str:
        """The command that `argv` names ("luce-bench kernel build").

        For an error the parser raised without its context (an option given without its value).
        """
        words, group = ["luce-bench"], self
        for token in argv if argv is not None else sys.argv[1:]:
            sub = getattr(group, "commands", {}).get(token)
            if sub is None:
                if token.startswith("-"):
                    continue  # (luce-bench's own options before the command)
                break
            words.append(token)
            group = sub
        return " ".join(words)


def _close_options_only(exc: Exception) -> None:
    """Keep only suggestions that look like the unknown option without their dashes (`--foo` is not `--out`)."""
    import difflib

    name, possibilities = getattr(exc, "option_name", None), getattr(exc, "possibilities", None)
    if name and possibilities:
        bare = name.lstrip("-")
        exc.possibilities = [  # type: ignore[attr-defined]
            p for p in possibilities if difflib.SequenceMatcher(None, bare, p.lstrip("-")).ratio() >= 0.6
        ]


def _flags_show_no_type() -> None:
    """Help lists a flag that takes no value (--clamp, --debug, --help) without a type.

    typer 0.2x writes `<bool>` after it, which reads as a value to give (`--clamp true` is then an error); click, and
    typer before, wrote nothing. Patched once, where typer has the method; other options keep their `<int>`, `<Path>`.
    """
    option = getattr(typer_core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if option is None or shown is None or getattr(shown, "flags_show_no_type", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> str | None:
        return None if getattr(self, "is_flag", False) and self.metavar is None else shown(self, ctx)

    display_type_rich.flags_show_no_type = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_flags_show_no_type()

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every subcommand
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help=(
        "Energy-efficiency benchmarks and DVFS sweeps (power limits and/or locked SM clocks) for local LLM inference "
        "on NVIDIA GPUs."
    ),
)
model_app = typer.Typer(no_args_is_help=True, help="Prepare model checkpoints.")


def _print_version(value: bool) -> None:
    if value:
        import os

        from luce_bench import __version__

        try:
            typer.echo(f"luce-bench {__version__}")
            sys.stdout.flush()
        except BrokenPipeError:  # (`luce-bench --version | true`): quietly, as SIGPIPE would end it
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (the interpreter's last flush)
            sys.exit(128 + signal.SIGPIPE)
        raise typer.Exit()


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and exit.")
    ] = False,
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
    app.command(_fn.__name__, help=help_text(_fn))(handle_errors(_fn))
model_app.command("prepare", help=help_text(tools.model_prepare))(handle_errors(tools.model_prepare))
app.add_typer(model_app, name="model")


KERNEL_HELP = "The CUDA megakernel on its own: info (build facts), build, bench (decode speed) and trace (phase times)."


def _mount_kernel() -> None:
    # `luce-bench kernel ...` lives with the kernel code; a missing module must not break --help of the rest
    try:
        from luce_bench.kernels.cli import app as kernel_app
    except ImportError:
        return
    for command in kernel_app.registered_commands:  # the same one-line errors and help as every other command
        command.help = command.help or help_text(command.callback)
        command.callback = handle_errors(command.callback)
    app.add_typer(kernel_app, name="kernel", help=KERNEL_HELP)


_mount_kernel()


def _rich_broken_pipe(exc: BaseException) -> bool:
    """Whether `exc` was raised by rich's console on a broken pipe (typer's help printer has no hook for it)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and tb.tb_frame.f_code.co_name == "on_broken_pipe"


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserError as exc:  # raised outside a command (e.g. while mounting)
        if state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: {one_line(str(exc))}", err=True)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:  # outside a command (its options being read): no traceback either
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit as exc:  # rich's console ends the process with 1 when the pipe's reader is gone (--help | head)
        if exc.code == 1 and _rich_broken_pipe(exc):
            sys.exit(128 + signal.SIGPIPE)  # quietly, as SIGPIPE would end it, as every command does
        raise
    except OSError as exc:  # outside a command: --help or --version into a full disk (`> /dev/full`)
        if exc.errno not in WRITE_ERRNOS:
            raise
        if state["debug"]:
            traceback.print_exc()
        typer.echo(f"error: cannot write standard output: {one_line(exc.strerror or str(exc))}", err=True)
        sys.exit(4)
    finally:
        # The work is done and recorded: a Ctrl-C from now on ends the process at once, instead of a
        # KeyboardInterrupt raised inside the interpreter's shutdown (printed as an ignored exception).
        signal.signal(signal.SIGINT, signal.SIG_DFL)
