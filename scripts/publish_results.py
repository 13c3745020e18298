"""Publish a run directory as a committed reference result and regenerate results/README.md.

    python scripts/publish_results.py results/runs/20261124T120000Z-compare [--name h100-compare]

Copies the run's CSVs, meta.json, report.md and plots to results/<gpu>/<date>-<name>/ (samples.csv gzipped), then
rewrites results/README.md: one section per reference run with its summary table, rebuilt from its CSVs.
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from luce_bench.report import TABLE_HEAD, markdown_table, notes, table_rows  # noqa: E402
from luce_bench.results import atomic_write_text, read_csv  # noqa: E402

COPY = ("runs.csv", "summary.csv", "meta.json", "report.md", "sweet_spot.csv", "sweet_spot.json")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def publish(run_dir: Path, name: str | None) -> Path:
    """Copy `run_dir` under results/ and return the destination."""
    meta = json.loads((run_dir / "meta.json").read_text())
    gpu = _slug(meta.get("gpu", {}).get("name", "no-gpu"))
    stamp = run_dir.name.split("T")[0]
    dest = ROOT / "results" / gpu / f"{stamp}-{name or run_dir.name.split('-', 1)[-1]}"
    dest.mkdir(parents=True, exist_ok=True)
    for f in COPY:
        if (run_dir / f).is_file():
            shutil.copy2(run_dir / f, dest / f)
    for png in run_dir.glob("*.png"):
        shutil.copy2(png, dest / png.name)
    if (run_dir / "samples.csv").is_file():
        with (run_dir / "samples.csv").open("rb") as src, gzip.open(dest / "samples.csv.gz", "wb") as out:
            shutil.copyfileobj(src, out)
    return dest


def write_index() -> Path:
    """results/README.md: every committed reference run's summary."""
    parts = ["# Reference results", "",
             "Committed runs of luce-bench (method: README.md, 'How it measures'). Each folder holds runs.csv, "
             "summary.csv, samples.csv.gz, meta.json (GPU, driver, versions, config, git commit), report.md and "
             "plots. Regenerate with `python scripts/publish_results.py RUN_DIR`.", ""]
    for summary_csv in sorted((ROOT / "results").glob("*/*/summary.csv")):
        d = summary_csv.parent
        meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").is_file() else {}
        gpu = meta.get("gpu", {})
        parts += [f"## {d.parent.name} / {d.name}", "",
                  f"GPU {gpu.get('name', 'none')}, driver {gpu.get('driver', 'n/a')}, power limit "
                  f"{gpu.get('power_limit_w', 'n/a')} W; model {meta.get('model', {}).get('name', '?')}; "
                  f"commit {meta.get('git_commit', 'n/a')}. [report]({d.parent.name}/{d.name}/report.md)", ""]
        parts += [f"> {n}" for n in notes(meta)]
        parts += ["", markdown_table(TABLE_HEAD, table_rows(read_csv(summary_csv))), ""]
    out = ROOT / "results" / "README.md"
    atomic_write_text(out, "\n".join(parts) + "\n")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run_dir", type=Path, nargs="?")
    ap.add_argument("--name")
    args = ap.parse_args()
    if args.run_dir is not None:
        print(f"published to {publish(args.run_dir, args.name)}")
    print(f"wrote {write_index()}")


if __name__ == "__main__":
    main()
