"""`luce-bench report --check results/`: the committed results agree with their CSVs, or one line per problem.

Problems: a run without meta.json or runs.csv; a CSV that breaks its schema (a missing or unknown column, a cell of
the wrong type); a derived file that is stale: summary.csv against runs.csv, report.md's table against summary.csv,
independent.md against the independent reader's log kept in the run, results/README.md and the project README's
block against every run. Stale files are regenerated, never edited: `luce-bench report RUN_DIR` rebuilds a run's
summary and report, `report RUN_DIR --independent LOG` its independent.md, `luce-bench publish` the tables.
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from pathlib import Path

from luce_bench.errors import UserError
from luce_bench.files import existing_dir, shell_arg
from luce_bench.publish import publishing_now
from luce_bench.published import NO_ROWS, run_dirs
from luce_bench.records import RunRecord, SummaryRow, columns, read_csv, to_cells
from luce_bench.results import META, RUNS, SAMPLES, SUMMARY, read_meta, repeated_row
from luce_bench.sampler import Sample
from luce_bench.summary import summarize
from luce_bench.tables import markdown_table, table_head, table_rows

SCHEMAS = ((RUNS, RunRecord), (SUMMARY, SummaryRow), (f"{SAMPLES}.gz", Sample), (SAMPLES, Sample))
REPORT_FIX = "run `luce-bench report {}`"


def _header(path: Path) -> list[str]:
    if path.suffix == ".gz":
        f = gzip.open(path, "rt", newline="", encoding="utf-8-sig")
    else:
        f = path.open(newline="", encoding="utf-8-sig")
    with f:
        return next(csv.reader(f), [])


def schema_problems(run: Path) -> list[str]:
    """Missing files, unknown columns and unreadable cells of one run folder."""
    out = [f"{run}: no {name}" for name in (META, RUNS) if not (run / name).is_file()]
    for name, cls in SCHEMAS:
        path = run / name
        if not path.is_file():
            continue
        try:
            unknown = [c for c in _header(path) if c not in columns(cls)]
        except (gzip.BadGzipFile, EOFError, zlib.error, UnicodeDecodeError, csv.Error) as exc:  # corrupt, or no text
            out.append(f"{path} is not a luce-bench {name.removesuffix('.gz')}: {exc}")
            continue
        except OSError as exc:  # (not a file's content: no permission, an I/O error)
            out.append(f"{path}: cannot read: {exc.strerror or exc}")
            continue
        if unknown:
            out.append(f"{path}: not in the {name} schema: column(s) {', '.join(unknown)}")
        try:
            rows = read_csv(run / name.removesuffix(".gz"), cls)
        except UserError as exc:
            out.append(str(exc))
            continue
        if name == RUNS and not rows:
            out.append(f"{path}: {NO_ROWS}")
        if name == RUNS and (repeated := repeated_row(rows)):
            out.append(f"{path}: {repeated}")
    return out


def publishable_problems(run: Path) -> list[str]:
    """What `luce-bench publish` would refuse in a committed run (schema-clean runs only).

    A simulated run, a sweep, no GPU energy, not finished; rows that its status.json does not count; a GPU folder that
    is not its GPU's.
    """
    from luce_bench.publish import gpu_folder, refusal
    from luce_bench.status import read_status

    meta, rows = read_meta(run), read_csv(run / RUNS, RunRecord)
    try:
        status = read_status(run)  # (none in what publish commits: a run copied in by hand)
    except UserError as exc:
        return [str(exc)]
    out = []
    why = refusal(run, meta, rows, allow_failures=bool(meta.get("published_with_failures")))
    if why:
        out.append(f"{run}: not a publishable run: {why}")
    counted = status.get("rows") if status is not None else None
    if isinstance(counted, int) and counted != len(rows):
        out.append(f"{run / RUNS}: holds {len(rows)} rows where its status.json counted {counted} measured")
    gpu = gpu_folder(meta)
    if run.parent.name != gpu:
        out.append(f"{run}: in the folder of GPU {run.parent.name!r}, but measured on {gpu!r} (meta.json)")
    return out


def plot_problems(run: Path) -> list[str]:
    """Plots that the run's report.md shows but the run lacks (the tables' links to them are then left out)."""
    report = run / "report.md"
    if not report.is_file():
        return []
    linked = sorted(set(re.findall(r"\]\(([^)/]+\.png)\)", report.read_text())))
    return [
        f"{run / name}: missing, shown by report.md ({REPORT_FIX.format(shell_arg(run))})"
        for name in linked
        if not (run / name).is_file()
    ]


def summary_problems(run: Path) -> list[str]:
    """summary.csv against runs.csv, report.md's table against summary.csv, and report.md against `report`'s.

    The whole report.md is compared with what `report` writes now (`report.markdown_of`); schema-clean runs only.
    """
    if not (run / SUMMARY).is_file():
        return [f"{run}: no {SUMMARY} ({REPORT_FIX.format(shell_arg(run))})"]
    runs = read_csv(run / RUNS, RunRecord)
    summary = summarize(runs)
    with (run / SUMMARY).open(newline="") as f:
        got = list(csv.reader(f))
    if got != [columns(SummaryRow), *(to_cells(r) for r in summary)]:
        return [f"{run / SUMMARY} is stale against {RUNS} ({REPORT_FIX.format(shell_arg(run))})"]
    report = run / "report.md"
    text = report.read_text() if report.is_file() else None
    table = markdown_table(table_head(summary), table_rows(summary))
    if text is None or table not in text:
        return [f"{report}: missing or its table is stale against {SUMMARY} ({REPORT_FIX.format(shell_arg(run))})"]
    from luce_bench.report import markdown_of

    want = markdown_of(run, runs, summary)
    if want is not None and text != want:
        fix = REPORT_FIX.format(shell_arg(run))
        return [f"{report} is stale: it differs from what `luce-bench report` writes now ({fix})"]
    return []


def independent_problems(run: Path) -> list[str]:
    """independent.md against the independent reader's log kept in the run (a run without a log: nothing to check)."""
    from luce_bench.independent import LOG, REPORT, report_text

    if not (run / LOG).is_file():
        return []
    fix = f"run `luce-bench report {shell_arg(run)} --independent {shell_arg(run / LOG)}`"
    try:
        text = report_text(run)[0]
    except UserError as exc:
        return [f"{run / LOG}: {exc}"]
    if not (run / REPORT).is_file() or (run / REPORT).read_text() != text:
        return [f"{run / REPORT}: missing or stale against {LOG} ({fix})"]
    return []


def table_problems(results: Path, readme: Path | None) -> list[str]:
    """The generated documents against what the committed runs give now."""
    from luce_bench.published_tables import expected

    try:
        docs = expected(results, readme)
    except UserError as exc:
        return [str(exc)]
    fix = f"run `luce-bench publish --results {shell_arg(results)}`"
    return [
        f"{path} is missing ({fix})" if not path.is_file() else f"{path} is stale against the committed CSVs ({fix})"
        for path, text in docs.items()
        if not path.is_file() or path.read_text() != text
    ]


def check(results: Path, readme: Path | None) -> list[str]:
    """Every problem of the results tree `results` (and the README block in `readme`), one line each."""
    existing_dir(results, "results directory")
    runs = run_dirs(results)
    if not runs:
        hint = (
            f"; it is one run (luce-bench report {shell_arg(results)} rebuilds its report)"
            if (results / "runs.csv").is_file()
            else " (give the folder that holds the published runs, e.g. results/)"
        )
        raise UserError(f"{results} is not a results tree: no <gpu>/<run>/ folder in it holds a run's files{hint}")
    problems: list[str] = [
        f"{d}: left by a publish that did not finish (remove it)"
        for d in sorted(results.glob("*/.publish-*"))
        if not publishing_now(d)
    ]
    clean = True
    for run in runs:
        found = schema_problems(run)
        problems += found or (
            publishable_problems(run) + summary_problems(run) + plot_problems(run) + independent_problems(run)
        )
        clean = clean and not found
    if clean:  # the tables are built from every run: only meaningful once each run reads cleanly
        problems += table_problems(results, readme)
    else:
        problems.append(f"{results}: generated tables not checked until the CSVs above read cleanly")
    return problems
