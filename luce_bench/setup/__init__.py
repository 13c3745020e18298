"""`make setup`: what this machine has (`probe`), what to install (`decide`), doing it with progress (`steps`).

Run by the system Python before the venv exists (`python3 -m luce_bench.setup`), so everything here is stdlib only.
`luce-bench info` reuses `probe` and `decide.missing_pieces` to name what is missing and the command that fixes it.
"""
