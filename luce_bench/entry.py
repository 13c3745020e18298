"""The console script's entry point: a Ctrl-C while the CLI's modules load is `interrupted` and exit code 130.

This module imports nothing of luce-bench's, so the window in which a Ctrl-C prints a traceback is the interpreter's
own start-up only.
"""

import sys


def main() -> None:
    """Load the CLI and run it."""
    try:
        from luce_bench.cli import main as cli_main
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
    cli_main()
