"""`python -m luce_bench` runs the CLI."""

from luce_bench.entry import main

main()
