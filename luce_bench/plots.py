"""The plots of a run directory, and the one place matplotlib is imported (`pyplot()`; Agg backend).

Run plots: tok/s and tok/J per backend and test, and the power/clock timeline. The sweep plots (sweep_plots.py) draw
through `pyplot()` and `save()` here. Results the verdict flags (quality.mark) are marked in every plot: stressed
ones (a stress flag) in red, ones from windows shorter than 10 s in orange: hatched bars, rings around points
(`mark_flagged`), coloured windows in the timeline. A run on the simulated GPU is stamped on every plot (report.py
renders them inside `stamped`: a title starts with the stamp, which is written across the figure too), as report.md
and the console say it.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from luce_bench.files import atomic_path
from luce_bench.quality import mark
from luce_bench.records import RunRecord, SummaryRow
from luce_bench.sampler import Sample
from luce_bench.tables import limit_text

RUN_PLOTS = ("tok_s.png", "tok_j.png", "timeline.png")  # render_run's files, in the report's order
SIMULATED_STAMP = "SIMULATED GPU"  # power, energy and clocks of a --fake-gpu run come from a model
_stamp: contextvars.ContextVar[str] = contextvars.ContextVar("plot_stamp", default="")


@contextlib.contextmanager
def stamped(text: str) -> Iterator[None]:
    """Every plot `save` writes in the block carries `text` (none when empty): in its title and across the figure."""
    token = _stamp.set(text)
    try:
        yield
    finally:
        _stamp.reset(token)


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (imported on first use: `luce-bench --help` stays instant)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def num(x: float | None) -> float:
    """`x` as a float, NaN for None."""
    return math.nan if x is None else float(x)


def save(plt: Any, fig: Any, title: str, out: Path) -> Path:
    """Title, lay out, write `out` (whole or not at all: a full disk leaves no empty image) and close the figure."""
    try:
        stamp = _stamp.get()
        text = f"{stamp}: {title}" if stamp else title
        # wrapped to the figure's width (~10 characters an inch at the title's 12 pt): a one-panel figure is narrow
        fig.suptitle(textwrap.fill(text, width=max(30, int(fig.get_figwidth() * 10))))
        if stamp:
            fig.text(0.5, 0.5, stamp, fontsize=44, color="grey", alpha=0.2, rotation=25, ha="center", va="center")
        fig.tight_layout()
        with atomic_path(out) as tmp:
            fig.savefig(tmp, dpi=110, format=out.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return out


# quality.mark -> (colour, bar hatch, legend label)
MARKS = {
    "stressed": ("red", "//", "windows off the row's setting (see verdict)"),
    "short": ("orange", "..", "windows < 10 s (see verdict)"),
}


def mark_flagged(ax: Any, points: Sequence[tuple[float, float, str]]) -> None:
    """Ring the (x, y, verdict) points whose verdict is marked (quality.mark), one legend entry per kind and axis."""
    for kind, (color, _, text) in MARKS.items():
        hit = [(x, y) for x, y, v in points if mark(v) == kind and math.isfinite(x) and math.isfinite(y)]
        if hit:
            label = None if text in ax.get_legend_handles_labels()[1] else text
            xs, ys = [p[0] for p in hit], [p[1] for p in hit]  # (its own colour: the lines' colours stay put)
            ax.plot(xs, ys, "o", ms=13, color=color, mfc="none", mec=color, mew=1.8, label=label)


def _limit_label(row: SummaryRow) -> str:
    """The row's setting ("300 W", "300 W, 1605 MHz"), or the limit in force ("700 W (in force)", "n/a")."""
    return row.setting if row.is_setting else limit_text(row)


CROWDED_BARS = 6  # more bars than this in a panel (a grid sweep's settings) and the panel is drawn for many


def bar_label(v: float) -> str:
    """A bar's value as people read it: 14,625 and 1,636 (not 1.46e+04), 3.09, 0.0123."""
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"


def _bars(summary: Sequence[SummaryRow], metric: str) -> list[SummaryRow]:
    """The summary rows that have a bar of `metric`."""
    return [r for r in summary if math.isfinite(num(getattr(r, metric)))]


def _timeline_points(samples: Sequence[Sample]) -> list[Sample]:
    """The samples the timeline draws."""
    return [s for s in samples if math.isfinite(s.t_s) and math.isfinite(s.power_w)]


def run_plot_names(summary: Sequence[SummaryRow], samples: Sequence[Sample]) -> list[str]:
    """The files `render_run` draws for this data, in its order, drawing nothing (`report --check`)."""
    drawn = (bool(_bars(summary, "avg_ts")), bool(_bars(summary, "tok_per_j")), bool(_timeline_points(samples)))
    return [name for name, yes in zip(RUN_PLOTS, drawn, strict=True) if yes]


def _who(backend: str, on_cpu: set[str]) -> str:
    """A bar's backend as its label names it: "hf (CPU)" for one that ran on the CPU."""
    return f"{backend} (CPU)" if backend in on_cpu else backend


def bar_chart(summary: Sequence[SummaryRow], metric: str, err: str, ylabel: str, title: str, out: Path) -> Path | None:
    """Grouped bars: one group per test, one bar per backend (x power limit when several). None if no data."""
    rows = _bars(summary, metric)
    if not rows:
        return None
    plt = pyplot()
    tests = list(dict.fromkeys(r.test for r in rows))
    series = list(dict.fromkeys((r.backend, _limit_label(r)) for r in rows))
    on_cpu = {r.backend for r in rows if str(r.device).startswith("cpu")}  # said on the bar: not the GPU's speed
    multi_limit = len({s[1] for s in series}) > 1
    crowded = len(series) > CROWDED_BARS  # a grid sweep's settings: wider panels, labels turned, smaller numbers
    width_in = max(4.5, 0.55 * len(series) + 1.0) if crowded else 4.5
    fig, axes = plt.subplots(1, len(tests), figsize=(width_in * len(tests), 4.8 if crowded else 4), squeeze=False)
    pairs = plt.get_cmap("tab20").colors  # dark and light of ten hues: all dark ones first, then the light ones
    colors = plt.get_cmap("tab10").colors if len(series) <= 10 else pairs[0::2] + pairs[1::2]  # none twice up to 20
    for ax, test in zip(axes[0], tests, strict=True):
        for i, (backend, lim) in enumerate(series):
            match = [r for r in rows if r.test == test and r.backend == backend and _limit_label(r) == lim]
            if not match:
                continue
            v, e = num(getattr(match[0], metric)), num(getattr(match[0], err))
            label = f"{_who(backend, on_cpu)} @ {lim}" if multi_limit else _who(backend, on_cpu)
            kind = mark(match[0].verdict)
            hatch = {"hatch": MARKS[kind][1], "edgecolor": MARKS[kind][0]} if kind else {}
            color = colors[i % len(colors)]
            spread = e if math.isfinite(e) and e > 0 else None
            yerr = None if spread is None else [[min(spread, max(v, 0.0))], [spread]]  # (stops at 0, as report.md's)
            ax.bar(i, v, yerr=yerr, capsize=4, label=label, color=color, **hatch)
            top = v + spread if spread is not None else v  # above the error bar's cap, not across it
            text = bar_label(v) + (" ⚠" if kind else "")
            size, turn = (6, 90) if crowded else (8, 0)
            ax.annotate(
                text, (i, top), xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=size,
                rotation=turn,
            )  # fmt: skip
        ax.set_ylim(top=ax.get_ylim()[1] * (1.25 if crowded else 1.1))  # room for the labels above the error bars
        depth = next(r.n_depth for r in rows if r.test == test)
        ax.set_title(f"{test}\n(after {depth} cached tokens)" if depth else test)
        ax.set_xticks(range(len(series)))
        labels = [f"{_who(b, on_cpu)}\n{lim}" if multi_limit else _who(b, on_cpu) for b, lim in series]
        if crowded:  # one line each, turned: "sim 700 W, 1785 MHz"
            ax.set_xticklabels([t.replace("\n", " ") for t in labels], fontsize=7, rotation=45, ha="right")
        else:  # a grid's setting on two lines ("700 W" over "1980 MHz"): side by side at ~1 inch a bar they overlapped
            ax.set_xticklabels([t.replace(", ", "\n") for t in labels], fontsize=8)
        ax.set_ylabel(ylabel)
    return save(plt, fig, title, out)


def timeline(samples: Sequence[Sample], runs: Sequence[RunRecord], out: Path) -> Path | None:
    """Power (W) and SM clock (MHz) against time, with every measured window shaded and labelled."""
    pts = _timeline_points(samples)
    if not pts:
        return None
    plt = pyplot()
    t = [s.t_s for s in pts]
    fig, (ax_p, ax_c) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    ax_p.plot(t, [s.power_w for s in pts], lw=0.8, label="instant power (field 186)")
    if any(math.isfinite(num(s.limit_w)) for s in pts):
        ax_p.plot(t, [num(s.limit_w) for s in pts], lw=0.8, ls="--", color="gray", label="power limit")
    ax_c.plot(t, [num(s.sm_mhz) for s in pts], lw=0.8, color="tab:orange", label="SM clock")
    ax_c.plot(t, [num(s.mem_mhz) for s in pts], lw=0.8, color="tab:green", label="memory clock")
    seen: set[str] = set()
    for r in runs:
        a, b = num(r.t_start_s), num(r.t_end_s)
        if math.isfinite(a) and math.isfinite(b):
            kind = mark(r.verdict)
            color = MARKS[kind][0] if kind else "tab:blue"
            for ax in (ax_p, ax_c):
                ax.axvspan(a, b, alpha=0.12, color=color)
            key = f"{r.backend} {r.test}"
            if key not in seen:
                seen.add(key)
                ax_p.text(a, ax_p.get_ylim()[1] * 0.95, key, fontsize=7, va="top")
    ax_p.set_ylabel("W")
    ax_c.set_ylabel("MHz")
    ax_c.set_xlabel("time (s)")
    ax_p.legend(fontsize=7, loc="lower right")
    ax_c.legend(fontsize=7, loc="lower right")
    title = "GPU power and clocks (shaded: measured windows; red: off the row's setting, orange: < 10 s)"
    return save(plt, fig, title, out)


def render_run(
    run_dir: Path, summary: Sequence[SummaryRow], runs: Sequence[RunRecord], samples: Sequence[Sample]
) -> list[Path]:
    """Write tok_s.png, tok_j.png and timeline.png where there is data; returns the files written."""
    made = [
        bar_chart(
            summary,
            "avg_ts",
            "stddev_ts",
            "tokens / s",
            "Throughput (mean ± std; ⚠ hatched: flagged windows, see verdict)",
            run_dir / "tok_s.png",
        ),
        bar_chart(
            summary,
            "tok_per_j",
            "tok_per_j_std",
            "tokens / J",
            "Energy efficiency (GPU board energy; ⚠ hatched: flagged windows)",
            run_dir / "tok_j.png",
        ),
        timeline(samples, runs, run_dir / "timeline.png"),
    ]
    return drop_unmade(made, run_dir, RUN_PLOTS)


def drop_unmade(made: Sequence[Path | None], run_dir: Path, names: Sequence[str]) -> list[Path]:
    """The plots written; the others of `names` are removed.

    A plot from an earlier render that this one cannot draw would show rows that the CSVs no longer hold.
    """
    written = [p for p in made if p is not None]
    for name in names:
        if run_dir / name not in written:
            (run_dir / name).unlink(missing_ok=True)
    return written
