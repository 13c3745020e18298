"""Install luce-bench into the running venv without a build backend: a .pth file and the `luce-bench` script.

What `pip install -e .` does, for an offline machine whose WHEELS lack hatchling: the venv's Python finds the package
in the checkout and `luce-bench` runs `luce_bench.cli.main`. Run as `.venv/bin/python -m luce_bench.setup.link`.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from luce_bench.setup.probe import ROOT

SCRIPT = """#!{python}
import sys

from luce_bench.cli import main

sys.exit(main())
"""


def link(root: Path = ROOT, python: str = sys.executable) -> tuple[Path, Path]:
    """Write `luce_bench_checkout.pth` (pointing at `root`) and bin/luce-bench; return both paths."""
    pth = Path(sysconfig.get_paths()["purelib"]) / "luce_bench_checkout.pth"
    pth.write_text(f"{root}\n")
    script = Path(sysconfig.get_paths()["scripts"]) / "luce-bench"
    script.write_text(SCRIPT.format(python=python))
    script.chmod(0o755)
    return pth, script


if __name__ == "__main__":
    for path in link():
        print(f"wrote {path}")
