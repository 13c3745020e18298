"""The report of a run directory, rebuilt from its CSVs and meta.json alone: `render(run_dir)` is the one entry.

It writes summary.csv, the plots and report.md; for a sweep it adds the sweep section (sweet_spot.csv/.json, sweep
plots). `print_report` shows the summary as a rich table; `llama_bench_table` is llama-bench's markdown layout. Runs
with locked SM clocks get an "SM clock" column (locked MHz, the request when it snapped) in both tables.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError, one_line
from luce_bench.files import atomic_write, json_text
from luce_bench.records import RunRecord, SummaryRow, SweetSpot, write_csv
from luce_bench.results import META, SUMMARY, ran_simulated, read_meta, read_runs, read_samples
from luce_bench.status import render_done
from luce_bench.summary import (
    StartTemps,
    baseline_notes,
    describe_spot,
    overhead_notes,
    start_temps,
    stress_notes,
    summarize,
    sweet_spots,
)
from luce_bench.tables import (
    TABLE_HEAD,
    clock_text,
    clocked,
    limit_text,
    llama_bench_table,
    mark_verdict,
    markdown_table,
    n_text,
    num_text,
    pm_text,
    styled,
    table_head,
    table_rows,
)

__all__ = [
    "TABLE_HEAD",
    "Report",
    "llama_bench_table",
    "markdown_table",
    "notes",
    "print_report",
    "render",
    "table_rows",
]


@dataclass
class Report:
    """What `render` produced."""

    run_dir: Path
    summary: list[SummaryRow]
    meta: dict[str, Any]
    markdown: str
    spots: list[SweetSpot] | None = None  # None: not a sweep
    min_speed: float = 0.95
    quality: list[str] = dataclasses.field(default_factory=list)  # how the run ended, if badly; stressed repetitions


def notes(meta: dict[str, Any]) -> list[str]:
    """Warnings a reader must see next to the numbers."""
    out = []
    energy = meta.get("energy", {})
    if energy.get("simulated"):
        out.append("SIMULATED GPU (--fake-gpu): power, energy and clocks come from a model, not from hardware.")
    elif not energy.get("available"):
        out.append(f"GPU energy unavailable: {energy.get('reason', 'unknown reason')}. tok/J columns are empty.")
    backends = {k: v for k, v in meta.get("backends", {}).items() if isinstance(v, dict)}
    if energy.get("simulated"):
        for name, info in backends.items():
            if name == "sim":
                out.append("sim: a SIMULATED backend: no model runs; its tok/s come from the simulated card's model")
            elif str(info.get("device", "")).startswith("cpu"):
                out.append(f"{name} ran on the CPU: its W and tok/J are the simulated card's, not its own")
    for name, info in backends.items():
        if info.get("setup"):
            out.append(f"{name}: {info['setup']}")
        if info.get("skipped"):
            out.append(f"{name}: skipped: {info['skipped']}")
        if info.get("warning"):
            out.append(f"{name}: {_warning_text(info)}")
        if info.get("error"):
            out.append(f"{name}: FAILED: {info['error']}")
    for name, info in backends.items():
        if energy.get("available") and not energy.get("simulated") and str(info.get("device", "")).startswith("cpu"):
            out.append(f"{name} ran on the CPU: the GPU energy counter does not cover its work.")
    out += [f"published with a failure (no rows): {f}" for f in meta.get("published_with_failures", [])]
    if meta.get("token_agreement"):
        pairs = "; ".join(f"{k}: {v}" for k, v in meta["token_agreement"].items())
        synthetic = (meta.get("model") or {}).get("synthetic")
        out.append(f"greedy tokens, first tg run: {pairs}" + (f" ({AGREEMENT_CAVEAT})" if synthetic else ""))
    return out


def _warning_text(info: dict[str, Any]) -> str:
    """A backend's warning from meta.json, its fallback line in today's words.

    Runs before 2026-12-07 wrote "GDN layers ran on ... fallbacks" also where only the short convolution fell back.
    """
    import re

    from luce_bench.backends.hf_paths import fallback_warning

    text, fallbacks = str(info["warning"]), info.get("torch_fallbacks") or []
    if fallbacks:
        old = r"GDN layers ran on transformers' pure-torch fallbacks \([^)]*\): install [^;]*? for the fast path"
        text = re.sub(old, lambda _: fallback_warning(fallbacks), text)
    return text


# What a split in the free-running tokens does and does not say (report notes of a run on synthetic weights).
AGREEMENT_CAVEAT = (
    "free-running, no allowance for near ties: engines that round differently part at the first near-tied logits, "
    "which random synthetic weights often have; correctness is the parity tests' job, against an fp32 reference"
)


def _energy_from_rows(runs: Sequence[RunRecord]) -> dict[str, Any]:
    """meta.json's `energy` when meta.json is missing: what the rows themselves say."""
    has_energy = any(r.energy_j is not None for r in runs)
    return {
        "available": has_energy,
        "simulated": any(r.gpu_simulated for r in runs),
        "reason": "" if has_energy else "no energy values in runs.csv (meta.json missing)",
    }


NOTHING_MEASURED = "No repetition finished in this run: there is nothing to tabulate."


def _markdown(
    run_dir: Path, summary: Sequence[SummaryRow], meta: dict[str, Any], plots: Sequence[Path], quality: Sequence[str]
) -> str:
    gpu, model = meta.get("gpu", {}), meta.get("model", {})
    known = (run_dir / META).is_file()  # (a report rebuilt from runs.csv alone knows no GPU, model or commit)
    parts = [
        f"# luce-bench report: {one_line(Path(os.path.abspath(run_dir)).name)}",  # (".": the folder's own name)
        "",
        one_line(f"- model: {model.get('name', '?')} ({model.get('n_params', '?')} params)"),
        one_line(_gpu_line(gpu)) if known else f"- GPU: unknown here (no {META})",
        one_line(f"- git commit: {meta.get('git_commit', 'n/a')}"),
        "",
    ]
    parts += [f"> {one_line(n)}" for n in notes(meta)]
    parts += [f"> ⚠ {one_line(q)}" for q in quality]
    if not summary:  # the plots it has (the timeline of the samples) still say what happened
        return "\n".join([*parts, "", NOTHING_MEASURED, "", *(f"![{p.stem}]({p.name})" for p in plots)]) + "\n"
    parts += [
        "",
        "## Summary (mean ± sample std over repetitions; each repetition is one energy window)",
        "",
        markdown_table(table_head(summary), table_rows(summary)),
        "",
        "## llama-bench layout",
        "",
        llama_bench_table(summary, meta),
        "",
    ]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def _watts(value: Any) -> str:
    """A recorded power in W as the tables write it ("420 W"), or "n/a"."""
    return f"{value:g} W" if isinstance(value, (int, float)) and not isinstance(value, bool) else "n/a"


def _gpu_line(gpu: dict[str, Any]) -> str:
    """The report's GPU line: name, driver and the limit in force; "none" for a run without a GPU."""
    if not gpu.get("name"):
        return "- GPU: none"
    return f"- GPU: {gpu['name']} (driver {gpu.get('driver', 'n/a')}, limit {_watts(gpu.get('power_limit_w'))})"


def _sweep_intro(sweep: dict[str, Any]) -> list[str]:
    """The sweep section's heading and what was swept, in order."""
    limits = ", ".join(f"{w:g} W" for w in sweep.get("limits_requested_w", []))
    original_w = _watts(sweep.get("original_limit_w"))
    restored = f"original limit {original_w}"
    if not sweep.get("clocks_locked_mhz"):
        return [
            "## Power-limit sweep",
            "",
            f"Limits (requested, in order): {limits}; {restored} restored after the sweep.",
            "",
        ]
    pairs = zip(sweep.get("clocks_text", []), sweep["clocks_locked_mhz"], strict=False)
    clocks = ", ".join(f"{text} -> {mhz} MHz" for text, mhz in pairs)
    heading = "## Power-limit x SM-clock sweep (grid)" if limits else "## SM-clock sweep"
    lines = [heading, "", f"Locked SM clocks (requested -> locked, in order): {clocks}."]
    if limits:
        lines.append(f"Limits (requested): {limits}.")
    original = sweep.get("original_sm_lock_mhz")
    lock = "none" if original is None else original
    lines += [
        f"Sweet spot: best tok/J at >= {100 * float(sweep.get('sweet_spot_min_speed', 0.95)):.0f} % of the fastest "
        f"setting's tok/s. Original limit {original_w} and SM clock lock ({lock}) restored after the sweep.",
        "",
    ]
    return lines


def _sweep_section(
    run_dir: Path, summary: Sequence[SummaryRow], meta: dict[str, Any], provisional: bool, temps: StartTemps
) -> tuple[list[SweetSpot], str]:
    """Sweet spots (written to sweet_spot.csv/.json), the sweep plots, and the report's sweep section.

    `provisional`: the sweep stopped before its plan's end, so a setting it did not reach may be better.
    """
    from luce_bench.sweep_plots import render_sweep

    sweep = meta["sweep"]
    min_speed = float(sweep.get("sweet_spot_min_speed", 0.95))
    spots = sweet_spots(summary, min_speed, sweep.get("default_limit_w"), provisional, temps)
    write_csv(run_dir / "sweet_spot.csv", SweetSpot, spots)
    doc = {"min_speed": min_speed, "complete": not provisional, "sweet_spots": [dataclasses.asdict(s) for s in spots]}
    atomic_write(run_dir / "sweet_spot.json", json_text(doc))
    plots = render_sweep(run_dir, summary, spots, min_speed)
    lines = _sweep_intro(sweep)
    none = f"- no sweet spot: no {'setting' if sweep.get('clocks_locked_mhz') else 'limit'} has energy data"
    lines += [f"- **{describe_spot(s, min_speed)}**" for s in spots] or [none]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots]
    return spots, "\n".join(lines) + "\n"


def _plot_stamp(meta: dict[str, Any]) -> str:
    """What every plot of the run is stamped with: the simulated GPU's mark, or nothing."""
    from luce_bench.plots import SIMULATED_STAMP

    return SIMULATED_STAMP if ran_simulated(meta) else ""


def run_state(run_dir: Path) -> list[str]:
    """A line when the run did not finish cleanly (status.json): how far it got, where it stopped, why."""
    return _ending(run_dir)[0]


def _ending(run_dir: Path) -> tuple[list[str], bool]:
    """(run_state's lines, whether the run stopped before its plan's end or is still going), from one status read."""
    from luce_bench.status import FAILURES, FINISHED, as_ended, describe, effective_state, read_status

    try:
        doc = read_status(run_dir)
    except UserError as exc:
        return [str(exc)], False
    doc = as_ended(doc) if doc is not None else None  # (a signal that stopped only the report's writing: its run's)
    state = effective_state(doc) if doc is not None else FINISHED
    resumed = _attempts_line(doc.get("attempts") or []) if doc is not None else []
    if state == FINISHED:
        return resumed, False
    told = describe(doc, run_dir)
    ending = f"this run is {told}" if state == "running" else f"run {told}"
    return [ending, *resumed], state != FAILURES


def _attempts_line(attempts: list[dict[str, Any]]) -> list[str]:
    """One line on a resumed run's earlier attempts (status.json): its windows come from more than one sitting."""
    if not attempts:
        return []
    told = "; ".join(
        f"{a.get('state', '?')} with {a.get('rows', '?')} rows so far (last written {a.get('updated_utc', '?')})"
        for a in attempts
    )
    return [
        f"run in {len(attempts) + 1} attempts ({told}): each attempt measured its own idle baselines and warm-up, "
        "and the timeline joins them"
    ]


def markdown_of(
    run_dir: Path, runs: Sequence[RunRecord] | None = None, summary: Sequence[SummaryRow] | None = None
) -> str | None:
    """The report.md that `render` writes for `run_dir` now, from its files, writing nothing (`report --check`).

    For a run with meta.json that is not a sweep (a sweep's section is built with its plots); None otherwise. The
    plots linked are those `render` would draw from the data (a missing file is `plot_problems`' to name). `runs`,
    `summary`: the run's rows and their summary when the caller has them already.
    """
    run_dir = Path(run_dir)
    if not (run_dir / META).is_file():
        return None
    meta = read_meta(run_dir)
    if meta.get("sweep"):
        return None
    runs = read_runs(run_dir) if runs is None else runs
    meta.setdefault("energy", _energy_from_rows(runs))
    summary = summarize(runs) if summary is None else summary
    from luce_bench.plots import run_plot_names

    plots = [run_dir / name for name in run_plot_names(summary, read_samples(run_dir))]
    return _markdown(run_dir, summary, meta, plots, _quality(run_dir, runs)[0])


def _quality(run_dir: Path, runs: Sequence[RunRecord]) -> tuple[list[str], bool]:
    """(The report's warnings: how the run ended, stressed repetitions, several idle baselines; whether cut short)."""
    ending, cut_short = _ending(run_dir)
    return ending + stress_notes(runs) + overhead_notes(runs) + baseline_notes(runs), cut_short


def render(run_dir: Path) -> Report:
    """Rebuild summary.csv, plots and report.md of `run_dir` (and the sweep section of a sweep) from its files."""
    from luce_bench.plots import render_run, stamped

    run_dir = Path(run_dir)
    runs, meta = read_runs(run_dir), read_meta(run_dir)
    meta.setdefault("energy", _energy_from_rows(runs))
    summary = summarize(runs)
    if summary:
        write_csv(run_dir / SUMMARY, SummaryRow, summary)
    else:
        (run_dir / SUMMARY).unlink(missing_ok=True)  # one from an earlier render would contradict the report
    quality, cut_short = _quality(run_dir, runs)
    sweep_files = [run_dir / "sweet_spot.csv", run_dir / "sweet_spot.json", *sorted(run_dir.glob("sweep_*.png"))]
    sweep_files = [p for p in sweep_files if p.is_file()]
    if not (run_dir / META).is_file():  # (a report rebuilt from runs.csv alone)
        quality.append(f"no {META} in {run_dir}: the model, the GPU and the run's settings are unknown here")
        if sweep_files:  # kept: without meta.json they cannot be rebuilt, but they are not this report's
            names = ", ".join(p.name for p in sweep_files)
            quality.append(f"{names}: from an earlier report; the sweep section needs {META} to be rebuilt")
    with stamped(_plot_stamp(meta)):  # every plot of the run, the sweep's too
        plots = render_run(run_dir, summary, runs, read_samples(run_dir))
        sweep = _sweep_section(run_dir, summary, meta, cut_short, start_temps(runs)) if meta.get("sweep") else None
    report = Report(run_dir, summary, meta, _markdown(run_dir, summary, meta, plots, quality), quality=quality)
    if sweep is not None:
        report.spots, section = sweep
        report.min_speed = float(meta["sweep"].get("sweet_spot_min_speed", 0.95))
        report.markdown += "\n" + section
    elif (run_dir / META).is_file():  # not a sweep: sweep files from an earlier render would contradict the report
        for path in sweep_files:
            path.unlink(missing_ok=True)
    atomic_write(run_dir / "report.md", report.markdown)
    render_done(run_dir)
    return report


def _summary_table(summary: Sequence[SummaryRow]) -> Any:
    from rich.table import Table

    table = Table(title="luce-bench summary (mean ± sample std over repetitions, as in report.md)")
    has_clocks = clocked(summary)
    head = ("backend", "test", "limit", *(("SM clock",) if has_clocks else ()), "tok/s", "W", "tok/J", "n", "verdict")
    for h in head:
        table.add_column(h, justify="left" if h in ("backend", "test", "verdict") else "right")
    for r in summary:
        table.add_row(
            r.backend,
            r.test,
            limit_text(r),
            *([clock_text(r)] if has_clocks else []),
            pm_text(r.avg_ts, r.stddev_ts, 1),
            num_text(r.mean_power_w),
            pm_text(r.tok_per_j, r.tok_per_j_std, 3),
            n_text(r),
            mark_verdict(r.verdict, markup=True),
        )
    return table


def print_report(report: Report, console: Any) -> None:
    """Compact rich table of the summary (mean ± sample std, as report.md), its notes, and a sweep's sweet spots."""
    console.print(_summary_table(report.summary) if report.summary else NOTHING_MEASURED)
    for n in notes(report.meta):
        console.print(styled(n, "note:", "yellow"))
    for q in report.quality:
        console.print(styled(q, "quality:", "red"))
    for s in report.spots or []:
        console.print(styled(describe_spot(s, report.min_speed), style="green"))
