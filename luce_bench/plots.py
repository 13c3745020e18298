"""Every plot of a run directory (the only module that imports matplotlib; Agg backend).

Run plots: tok/s and tok/J per backend and test, and the power/clock timeline. Sweep plots: tok/s and tok/J against
the enforced limit (95 % CI error bars), and the Pareto plot of tok/s against mean draw.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.records import RunRecord, SummaryRow
from luce_bench.sampler import Sample


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _f(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _save(plt: Any, fig: Any, title: str, out: Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _limit_label(row: SummaryRow) -> str:
    return f"{row.power_limit_req_w:g} W" if row.power_limit_req_w is not None else "current limit"


def bar_chart(summary: Sequence[SummaryRow], metric: str, err: str, ylabel: str, title: str, out: Path) -> Path | None:
    """Grouped bars: one group per test, one bar per backend (x power limit when several). None if no data."""
    rows = [r for r in summary if math.isfinite(_f(getattr(r, metric)))]
    if not rows:
        return None
    plt = _pyplot()
    tests = list(dict.fromkeys(r.test for r in rows))
    series = list(dict.fromkeys((r.backend, _limit_label(r)) for r in rows))
    multi_limit = len({s[1] for s in series}) > 1
    fig, axes = plt.subplots(1, len(tests), figsize=(4.5 * len(tests), 4), squeeze=False)
    for ax, test in zip(axes[0], tests, strict=True):
        for i, (backend, lim) in enumerate(series):
            match = [r for r in rows if r.test == test and r.backend == backend and _limit_label(r) == lim]
            if not match:
                continue
            v, e = _f(getattr(match[0], metric)), _f(getattr(match[0], err))
            label = f"{backend} @ {lim}" if multi_limit else backend
            ax.bar(i, v, yerr=e if math.isfinite(e) else None, capsize=4, label=label)
            ax.text(i, v, f"{v:.3g}", ha="center", va="bottom", fontsize=8)
        ax.set_title(test)
        ax.set_xticks(range(len(series)))
        ax.set_xticklabels([f"{b}\n{lim}" if multi_limit else b for b, lim in series], fontsize=8)
        ax.set_ylabel(ylabel)
    return _save(plt, fig, title, out)


def timeline(samples: Sequence[Sample], runs: Sequence[RunRecord], out: Path) -> Path | None:
    """Power (W) and SM clock (MHz) against time, with every measured window shaded and labelled."""
    pts = [s for s in samples if math.isfinite(s.t_s) and math.isfinite(s.power_w)]
    if not pts:
        return None
    plt = _pyplot()
    t = [s.t_s for s in pts]
    fig, (ax_p, ax_c) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True)
    ax_p.plot(t, [s.power_w for s in pts], lw=0.8, label="instant power (field 186)")
    if any(math.isfinite(_f(s.limit_w)) for s in pts):
        ax_p.plot(t, [_f(s.limit_w) for s in pts], lw=0.8, ls="--", color="gray", label="power limit")
    ax_c.plot(t, [_f(s.sm_mhz) for s in pts], lw=0.8, color="tab:orange", label="SM clock")
    ax_c.plot(t, [_f(s.mem_mhz) for s in pts], lw=0.8, color="tab:green", label="memory clock")
    seen: set[str] = set()
    for r in runs:
        a, b = _f(r.t_start_s), _f(r.t_end_s)
        if math.isfinite(a) and math.isfinite(b):
            for ax in (ax_p, ax_c):
                ax.axvspan(a, b, alpha=0.12, color="tab:blue")
            key = f"{r.backend} {r.test}"
            if key not in seen:
                seen.add(key)
                ax_p.text(a, ax_p.get_ylim()[1] * 0.95, key, fontsize=7, va="top")
    ax_p.set_ylabel("W")
    ax_c.set_ylabel("MHz")
    ax_c.set_xlabel("time (s)")
    ax_p.legend(fontsize=7, loc="lower right")
    ax_c.legend(fontsize=7, loc="lower right")
    return _save(plt, fig, "GPU power and clocks (shaded: measured windows)", out)


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
            "Throughput (mean ± std over repetitions)",
            run_dir / "tok_s.png",
        ),
        bar_chart(
            summary,
            "tok_per_j",
            "tok_per_j_std",
            "tokens / J",
            "Energy efficiency (GPU board energy)",
            run_dir / "tok_j.png",
        ),
        timeline(samples, runs, run_dir / "timeline.png"),
    ]
    return [p for p in made if p is not None]


# --- sweep plots ------------------------------------------------------------------------------------------------------
def _groups(summary: Sequence[SummaryRow]) -> dict[tuple[str, str], list[SummaryRow]]:
    out: dict[tuple[str, str], list[SummaryRow]] = {}
    for r in summary:
        if r.power_limit_req_w is not None:
            out.setdefault((r.backend, r.test), []).append(r)
    return {k: sorted(v, key=lambda r: -_f(r.power_limit_req_w)) for k, v in out.items()}


def _half_ci(lo: float | None, hi: float | None, std: float | None) -> float:
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return (hi - lo) / 2
    return std if std is not None and math.isfinite(std) else 0.0


def _panels(groups: dict[tuple[str, str], list[SummaryRow]]) -> tuple[Any, Any, list[tuple[Any, str, list]]]:
    """(plt, fig, [(axis, backend, rows)]): one panel per test, each backend's rows on its test's panel."""
    plt = _pyplot()
    tests = list(dict.fromkeys(t for _, t in groups))
    fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 4), squeeze=False)
    axis_of = dict(zip(tests, axes[0], strict=True))
    for test, ax in axis_of.items():
        ax.set_title(test)
    return plt, fig, [(axis_of[t], backend, rows) for (backend, t), rows in groups.items()]


def _style(axes: Any, xlabel: str, ylabel: str) -> None:
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def vs_limit_plot(summary: Sequence[SummaryRow], metric: str, out: Path) -> Path | None:
    """tok/s or tok/J (error bars: 95 % CI) against the enforced limit, one line per backend, one panel per test."""
    groups = _groups(summary)
    if not groups:
        return None
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        xs = [_f(r.limit_w) for r in rows]
        if metric == "avg_ts":
            ax.errorbar(
                xs,
                [_f(r.avg_ts) for r in rows],
                capsize=3,
                marker="o",
                label=backend,
                yerr=[_half_ci(r.ts_ci95_lo, r.ts_ci95_hi, r.stddev_ts) for r in rows],
            )
            continue
        ax.errorbar(
            xs,
            [_f(r.tok_per_j) for r in rows],
            capsize=3,
            marker="o",
            label=f"{backend} gross",
            yerr=[_half_ci(r.tok_per_j_ci95_lo, r.tok_per_j_ci95_hi, r.tok_per_j_std) for r in rows],
        )
        net = [_f(r.net_tok_per_j) for r in rows]
        if any(math.isfinite(v) for v in net):
            ax.plot(xs, net, marker="x", ls="--", label=f"{backend} net of idle")
    _style(fig.axes, "power limit (W, enforced)", "tokens / s" if metric == "avg_ts" else "tokens / J")
    title = ("Throughput" if metric == "avg_ts" else "Energy efficiency") + " vs power limit (95 % CI)"
    return _save(plt, fig, title, out)


def pareto_plot(summary: Sequence[SummaryRow], out: Path) -> Path | None:
    """tok/s against mean draw (W) per backend and test, each point labelled with its limit; the frontier is drawn."""
    groups = {k: [r for r in v if math.isfinite(_f(r.mean_power_w))] for k, v in _groups(summary).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        pts = sorted((_f(r.mean_power_w), _f(r.avg_ts), _f(r.power_limit_req_w)) for r in rows)
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=":", label=backend)[0]
        front, best = [], -math.inf
        for w, ts, _ in pts:  # lowest power first: a point is on the frontier if it is faster than all cheaper ones
            if ts > best:
                front.append((w, ts))
                best = ts
        ax.plot([p[0] for p in front], [p[1] for p in front], color=line.get_color(), lw=2, alpha=0.5)
        for w, ts, lim in pts:
            ax.annotate(f"{lim:g} W", (w, ts), fontsize=7, textcoords="offset points", xytext=(3, 3))
    _style(fig.axes, "mean GPU power (W)", "tokens / s")
    return _save(plt, fig, "Pareto: throughput vs power (labels: power limit)", out)


def render_sweep(run_dir: Path, summary: Sequence[SummaryRow]) -> list[Path]:
    """Write sweep_tok_s.png, sweep_tok_j.png and sweep_pareto.png where there is data."""
    made = [
        vs_limit_plot(summary, "avg_ts", run_dir / "sweep_tok_s.png"),
        vs_limit_plot(summary, "tok_per_j", run_dir / "sweep_tok_j.png"),
        pareto_plot(summary, run_dir / "sweep_pareto.png"),
    ]
    return [p for p in made if p is not None]
