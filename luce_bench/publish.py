"""`luce-bench publish`: copy a run directory into the committed results tree and regenerate its README.

A run goes to `<results>/<gpu>/<date>-<name>/` (samples.csv gzipped); `<results>/README.md` gets one section per
committed run with its summary table, rebuilt from its CSVs.
"""

from __future__ import annotations

import gzip
import re
import shutil
from pathlib import Path

from luce_bench.files import atomic_write
from luce_bench.records import SummaryRow, read_csv
from luce_bench.report import TABLE_HEAD, markdown_table, notes, table_rows
from luce_bench.results import read_meta

COPY = ("runs.csv", "summary.csv", "meta.json", "report.md", "sweet_spot.csv", "sweet_spot.json")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def publish(run_dir: Path, results: Path, name: str | None = None) -> Path:
    """Copy `run_dir` under `results` and return the destination."""
    meta = read_meta(run_dir)
    gpu = _slug(meta.get("gpu", {}).get("name", "no-gpu"))
    stamp = run_dir.name.split("T")[0]
    dest = results / gpu / f"{stamp}-{name or run_dir.name.split('-', 1)[-1]}"
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


def write_index(results: Path) -> Path:
    """`results`/README.md: every committed run's summary (ad-hoc runs under `results/runs/` are left out)."""
    parts = [
        "# Reference results",
        "",
        "Committed runs of luce-bench (method: README.md, 'How it measures'). Each folder holds runs.csv, "
        "summary.csv, samples.csv.gz, meta.json (GPU, driver, versions, config, git commit), report.md and "
        "plots. Regenerate with `luce-bench publish RUN_DIR`.",
        "",
    ]
    for summary_csv in sorted(results.glob("*/*/summary.csv")):
        d = summary_csv.parent
        if d.parent.name == "runs":  # ad-hoc runs (results/runs/, not committed)
            continue
        meta = read_meta(d)
        gpu = meta.get("gpu", {})
        parts += [
            f"## {d.parent.name} / {d.name}",
            "",
            f"GPU {gpu.get('name', 'none')}, driver {gpu.get('driver', 'n/a')}, power limit "
            f"{gpu.get('power_limit_w', 'n/a')} W; model {meta.get('model', {}).get('name', '?')}; "
            f"commit {meta.get('git_commit', 'n/a')}. [report]({d.parent.name}/{d.name}/report.md)",
            "",
        ]
        parts += [f"> {n}" for n in notes(meta)]
        parts += ["", markdown_table(TABLE_HEAD, table_rows(read_csv(summary_csv, SummaryRow))), ""]
    out = results / "README.md"
    atomic_write(out, "\n".join(parts) + "\n")
    return out
