"""The summary as tables: the report's markdown table, llama-bench's layout, and the cells the console table shows.

Runs with locked SM clocks get an "SM clock" column (locked MHz, the request when it snapped). Verdicts that
quality.mark flags stand out (`mark_verdict`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from luce_bench.quality import mark
from luce_bench.records import SummaryRow

TABLE_HEAD = ["backend", "test", "limit", "tok/s", "95% CI tok/s", "mean W", "tok/J", "95% CI tok/J", "n", "verdict"]


def _ok(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def num_text(x: float | None, digits: int = 1) -> str:
    """`x` with `digits` decimals, "n/a" when missing."""
    return f"{x:.{digits}f}" if _ok(x) else "n/a"


def pm_text(mean: float | None, std: float | None, digits: int = 2) -> str:
    """The mean ± the sample std ("n/a" when missing), as report.md and llama-bench write it."""
    if not _ok(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if _ok(std) else f"{mean:.{digits}f}"


def _range(lo: float | None, hi: float | None, digits: int) -> str:
    """A 95 % CI of tok/s or tok/J, its lower end at 0 at least.

    Neither can be negative, though the t-interval of two scattered repetitions reaches below 0 (summary.csv keeps
    the interval as computed).
    """
    return f"{num_text(max(lo, 0.0), digits)}–{num_text(hi, digits)}" if _ok(lo) else "n/a"


def limit_text(r: SummaryRow) -> str:
    """A row's power limit: "300 W" as a sweep set it, "700 W (in force)" where the run set none, "n/a" without NVML."""
    if r.power_limit_req_w is not None:
        return f"{r.power_limit_req_w:g} W"
    return f"{r.power_limit_w:g} W (in force)" if _ok(r.power_limit_w) else "n/a"


def clocked(summary: Sequence[SummaryRow]) -> bool:
    """Whether any row ran at a locked SM clock."""
    return any(r.sm_clock_mhz is not None for r in summary)


def clock_text(r: SummaryRow) -> str:
    """The locked SM clock, with the request when it snapped: "1605 MHz (req 1600)"; "-" when not locked."""
    if r.sm_clock_mhz is None:
        return "-"
    req = f" (req {r.sm_clock_req_mhz})" if r.sm_clock_req_mhz not in (None, r.sm_clock_mhz) else ""
    return f"{r.sm_clock_mhz} MHz{req}"


def styled(text: str, lead: str = "", style: str = "") -> Any:
    """A console line that rich never reads as markup (paths and error messages may hold brackets).

    `lead`, in `style`, labels `text` ("note:"); `style` without a lead colours the whole line.
    """
    from rich.text import Text

    return Text.assemble((lead, style), " ", text) if lead else Text(text, style=style)


def n_text(r: SummaryRow) -> str:
    """Windows averaged: tok/s over n, tok/J over the windows with energy, named where some (not all) have none."""
    return f"{r.n} (tok/J {r.valid_reps})" if 0 < r.valid_reps < r.n else str(r.n)


def table_head(summary: Sequence[SummaryRow]) -> list[str]:
    """TABLE_HEAD, with an "SM clock" column after the limit when clocks were locked."""
    return [*TABLE_HEAD[:3], "SM clock", *TABLE_HEAD[3:]] if clocked(summary) else list(TABLE_HEAD)


def table_rows(summary: Sequence[SummaryRow]) -> list[list[str]]:
    """Human rows for the summary table (`table_head`)."""
    has_clocks = clocked(summary)
    return [
        [
            r.backend,
            r.test,
            limit_text(r),
            *([clock_text(r)] if has_clocks else []),
            pm_text(r.avg_ts, r.stddev_ts),
            _range(r.ts_ci95_lo, r.ts_ci95_hi, 1),
            num_text(r.mean_power_w),
            pm_text(r.tok_per_j, r.tok_per_j_std, 3),
            _range(r.tok_per_j_ci95_lo, r.tok_per_j_ci95_hi, 3),
            n_text(r),
            mark_verdict(r.verdict),
        ]
        for r in summary
    ]


def mark_verdict(verdict: str, markup: bool = False) -> str:
    """A summary verdict as tables show it: flagged rows (quality.mark) stand out ("⚠"; red / yellow in rich)."""
    kind = mark(verdict)
    if kind is None:
        return verdict
    color = "red" if kind == "stressed" else "yellow"
    return f"[{color}]⚠ {verdict}[/{color}]" if markup else f"⚠ {verdict}"


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i > 1 else "---" for i in range(len(head))) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _size(nbytes: Any) -> str:
    if not isinstance(nbytes, int | float):
        return "n/a"
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.2f} MiB"


def _count(n: Any) -> str:
    if not isinstance(n, int | float):
        return "n/a"
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def llama_bench_table(summary: Sequence[SummaryRow], meta: dict[str, Any]) -> str:
    """llama-bench's md printer layout (model, size, params, backend, test, t/s), extended with energy columns.

    A sweep's rows also name their setting (limit, and SM clock when clocks were locked): without it the rows of one
    backend and test would look like repeats.
    """
    model = meta.get("model", {})
    swept = any(r.power_limit_req_w is not None for r in summary)
    locks = clocked(summary)
    setting = (["limit"] if swept else []) + (["SM clock"] if locks else [])
    head = ["model", "size", "params", "backend", "test", *setting, "t/s", "W", "tok/J"]
    rows = [
        [
            str(model.get("type", "qwen35")),
            _size(model.get("bytes")),
            _count(model.get("n_params")),
            r.backend,
            r.test.replace("@", " @ "),  # llama-bench writes a depth test as "tg128 @ d4096"
            *([limit_text(r)] if swept else []),
            *([clock_text(r)] if locks else []),
            pm_text(r.avg_ts, r.stddev_ts),
            num_text(r.mean_power_w),
            pm_text(r.tok_per_j, r.tok_per_j_std, 3),
        ]
        for r in summary
    ]
    return markdown_table(head, rows)
