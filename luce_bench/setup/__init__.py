"""`make setup`: what this machine has, what to install on it, and doing that with progress.

`probe` reads the machine, `decide` turns it into steps and gaps (in the terms of `plan`), `steps` runs them, `link`
is an editable install without a build backend (offline machines). Run by the system Python before the venv exists
(`python3 -m luce_bench.setup`), so everything here is stdlib only. `luce-bench info` reuses `probe` and `decide` to
name what is missing and the command that fixes it.
"""
