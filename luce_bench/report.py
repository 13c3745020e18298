"""Tables of a run: a rich console table, a markdown report, and a llama-bench style markdown table.

Everything is rebuilt from the run directory's CSVs and meta.json alone (`luce-bench report RUN_DIR`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.results import SUMMARY_COLUMNS, atomic_write_text, read_csv, summarize, write_csv_atomic
from luce_bench.stats import to_float as _f


def _pm(mean: Any, std: Any, digits: int = 2) -> str:
    m, s = _f(mean), _f(std)
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {s:.{digits}f}" if math.isfinite(s) else f"{m:.{digits}f}"


def _num(v: Any, digits: int = 1) -> str:
    x = _f(v)
    return f"{x:.{digits}f}" if math.isfinite(x) else "n/a"


def _limit(v: Any) -> str:
    x = _f(v)
    return f"{x:g} W" if math.isfinite(x) else "current"


TABLE_HEAD = ["backend", "test", "limit", "tok/s", "95% CI tok/s", "mean W", "tok/J", "95% CI tok/J", "n", "verdict"]


def table_rows(summary: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Human rows for the summary table."""
    out = []
    for r in summary:
        ci_ts = f"{_num(r.get('ts_ci95_lo'))}–{_num(r.get('ts_ci95_hi'))}" if math.isfinite(_f(r.get("ts_ci95_lo"))) else "n/a"
        ci_j = (f"{_num(r.get('tok_per_j_ci95_lo'), 3)}–{_num(r.get('tok_per_j_ci95_hi'), 3)}"
                if math.isfinite(_f(r.get("tok_per_j_ci95_lo"))) else "n/a")
        out.append([str(r.get("backend")), str(r.get("test")), _limit(r.get("power_limit_req_w")),
                    _pm(r.get("avg_ts"), r.get("stddev_ts")), ci_ts, _num(r.get("mean_power_w")),
                    _pm(r.get("tok_per_j"), r.get("tok_per_j_std"), 3), ci_j, str(r.get("n")), str(r.get("verdict"))])
    return out


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _size(nbytes: Any) -> str:
    b = _f(nbytes)
    if not math.isfinite(b):
        return "n/a"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.2f} MiB"


def _count(n: Any) -> str:
    x = _f(n)
    if not math.isfinite(x):
        return "n/a"
    return f"{x / 1e9:.2f} B" if x >= 1e9 else f"{x / 1e6:.2f} M"


def llama_bench_table(summary: Sequence[dict[str, Any]], meta: dict[str, Any]) -> str:
    """llama-bench's md printer layout (model, size, params, backend, test, t/s), extended with energy columns."""
    model = meta.get("model", {})
    head = ["model", "size", "params", "backend", "test", "t/s", "W", "tok/J"]
    rows = [[str(model.get("type", "qwen35")), _size(model.get("bytes")), _count(model.get("n_params")),
             str(r.get("backend")), str(r.get("test")),
             _pm(r.get("avg_ts"), r.get("stddev_ts")), _num(r.get("mean_power_w")), _pm(r.get("tok_per_j"), r.get("tok_per_j_std"), 3)]
            for r in summary]
    return markdown_table(head, rows)


def notes(meta: dict[str, Any]) -> list[str]:
    """Warnings a reader must see next to the numbers."""
    out = []
    energy = meta.get("energy", {})
    if energy.get("simulated"):
        out.append("SIMULATED GPU (--fake-gpu): power, energy and clocks come from a model, not from hardware.")
    elif not energy.get("available"):
        out.append(f"GPU energy unavailable: {energy.get('reason', 'unknown reason')}. tok/J columns are empty.")
    for name, info in meta.get("backends", {}).items():
        if isinstance(info, dict) and info.get("warning"):
            out.append(f"{name}: {info['warning']}")
        if isinstance(info, dict) and info.get("error"):
            out.append(f"{name}: FAILED: {info['error']}")
    for name, info in meta.get("backends", {}).items():
        device = str(info.get("device", "")) if isinstance(info, dict) else ""
        if energy.get("available") and not energy.get("simulated") and device.startswith("cpu"):
            out.append(f"{name} ran on the CPU: the GPU energy counter does not cover its work.")
    if meta.get("token_agreement"):
        out.append("Greedy tokens, first tg run: " + "; ".join(f"{k}: {v}" for k, v in meta["token_agreement"].items()))
    return out


def build(run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any], str]:
    """Rebuild summary.csv, plots and report.md of `run_dir` from its CSVs; returns (summary, meta, markdown)."""
    from luce_bench.plots import render

    run_dir = Path(run_dir)
    if not (run_dir / "runs.csv").is_file():
        raise UserError(f"{run_dir} is not a luce-bench run directory (no runs.csv)")
    runs, samples = read_csv(run_dir / "runs.csv"), read_csv(run_dir / "samples.csv")
    if runs and not {"backend", "test", "n_tokens", "window_s"} <= set(runs[0]):
        raise UserError(f"{run_dir / 'runs.csv'} is not a luce-bench runs.csv (missing columns)")
    meta: dict[str, Any] = {}
    if (run_dir / "meta.json").is_file():
        try:
            meta = json.loads((run_dir / "meta.json").read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{run_dir / 'meta.json'} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if "energy" not in meta:  # rebuilt from the CSVs alone: say what the rows themselves say
        simulated = any(str(r.get("gpu_simulated")).lower() == "true" for r in runs)
        has_energy = any(str(r.get("energy_j") or "").strip() for r in runs)
        meta["energy"] = {"available": has_energy, "simulated": simulated,
                          "reason": "" if has_energy else "no energy values in runs.csv (meta.json missing)"}
    summary = summarize(runs) if runs else []
    if summary:
        write_csv_atomic(run_dir / "summary.csv", SUMMARY_COLUMNS, summary)
    plots = render(run_dir, summary, runs, samples)
    md = _markdown(run_dir, summary, meta, plots)
    if meta.get("sweep"):
        from luce_bench import sweep_report

        md += "\n" + "\n".join(sweep_report.section(run_dir, summary, meta)) + "\n"
    atomic_write_text(run_dir / "report.md", md)
    return summary, meta, md


def _markdown(run_dir: Path, summary: Sequence[dict[str, Any]], meta: dict[str, Any], plots: Sequence[Path]) -> str:
    gpu = meta.get("gpu", {})
    parts = [f"# luce-bench report: {run_dir.name}", "",
             f"- model: {meta.get('model', {}).get('name', '?')} ({meta.get('model', {}).get('n_params', '?')} params)",
             f"- GPU: {gpu.get('name', 'none')} (driver {gpu.get('driver', 'n/a')}, limit {gpu.get('power_limit_w', 'n/a')} W)",
             f"- git commit: {meta.get('git_commit', 'n/a')}", ""]
    parts += [f"> {n}" for n in notes(meta)]
    parts += ["", "## Summary (mean ± sample std over repetitions; each repetition is one energy window)", "",
              markdown_table(TABLE_HEAD, table_rows(summary)), "", "## llama-bench layout", "",
              llama_bench_table(summary, meta), ""]
    parts += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(parts) + "\n"


def _ci(mean: Any, lo: Any, hi: Any, digits: int) -> str:
    m, a, b = _f(mean), _f(lo), _f(hi)
    if not math.isfinite(m):
        return "n/a"
    return f"{m:.{digits}f} ± {(b - a) / 2:.{digits}f}" if math.isfinite(a) and math.isfinite(b) else f"{m:.{digits}f}"


def print_table(summary: Sequence[dict[str, Any]], meta: dict[str, Any], console: Any = None) -> None:
    """Compact rich table of the summary (mean ± 95 % CI half-width), with the notes below it."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="luce-bench summary (mean ± 95% CI)")
    for h in ("backend", "test", "limit", "tok/s", "W", "tok/J", "n", "verdict"):
        table.add_column(h, justify="left" if h in ("backend", "test", "verdict") else "right")
    for r in summary:
        table.add_row(str(r.get("backend")), str(r.get("test")), _limit(r.get("power_limit_req_w")),
                      _ci(r.get("avg_ts"), r.get("ts_ci95_lo"), r.get("ts_ci95_hi"), 1), _num(r.get("mean_power_w")),
                      _ci(r.get("tok_per_j"), r.get("tok_per_j_ci95_lo"), r.get("tok_per_j_ci95_hi"), 3),
                      str(r.get("n")), str(r.get("verdict")))
    console.print(table)
    for n in notes(meta):
        console.print(f"[yellow]note:[/yellow] {n}")
