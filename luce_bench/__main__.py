"""`python -m luce_bench` runs the CLI."""

from luce_bench.cli import main

main()
