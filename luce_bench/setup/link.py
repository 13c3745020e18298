"""Install luce-bench into the running venv without a build backend: a .pth file and the `luce-bench` script.

What `pip install -e .` does, for an offline machine whose WHEELS lack hatchling: the venv's Python finds the package
in the checkout and `luce-bench` runs `luce_bench.entry.main`. Run as `.venv/bin/python -m luce_bench.setup.link`.

`--host-site DIR...` instead writes `luce_bench_host_site.pth` (pointing at DIRs): when the Python that made the venv is
itself a venv (an image's python3 in /opt/torch/.venv, a conda env), `--system-site-packages` shows the new venv only
the base interpreter's packages, not that venv's torch; the .pth adds them after the venv's own.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

from luce_bench.setup.probe import ROOT

SCRIPT = """#!{python}
import sys

from luce_bench.entry import main

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


def see_host_site(dirs: list[str]) -> Path:
    """Write `luce_bench_host_site.pth` listing `dirs` into the running venv's site-packages; return its path."""
    pth = Path(sysconfig.get_paths()["purelib"]) / "luce_bench_host_site.pth"
    pth.write_text("".join(f"{d}\n" for d in dirs))
    return pth


if __name__ == "__main__":
    if sys.argv[1:2] == ["--host-site"]:
        print(f"wrote {see_host_site(sys.argv[2:])}")
    else:
        for path in link():
            print(f"wrote {path}")
