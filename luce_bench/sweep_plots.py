"""The plots of a sweep, drawn from its summary rows and sweet spots (matplotlib through plots.pyplot()).

* `sweep_tok_s.png`, `sweep_tok_j.png`: tok/s and tok/J (95 % CI error bars) against the enforced power limit, or,
  when SM clocks were swept, against the locked SM clock with one line per limit.
* `sweep_pareto.png`: tok/s against mean draw (W), points labelled by setting, the frontier drawn.
* `sweep_pareto_tok_j.png`: tok/s against tok/J, points labelled by setting; the frontier joins the settings no other
  setting beats on both; the star is the sweet spot, the dashed line `min_speed` x the reference tok/s.
* `sweep_heatmap.png` (a grid of limits x clocks): tok/J per cell, with the share of the reference tok/s; cells below
  the speed threshold are greyed, the sweet spot is outlined.
Flagged settings (quality.mark) get a ring: red when off the row's setting (a stress flag), orange for windows < 10 s (⚠
in the heat map). A point that stands on one window has no interval: it gets a grey square instead of a bar that would
read as exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.plots import drop_unmade, mark_flagged, num, pyplot, save
from luce_bench.quality import mark
from luce_bench.records import SummaryRow, SweetSpot
from luce_bench.summary import by_setting

Groups = dict[tuple[str, str], list[SummaryRow]]


def _short(row: SummaryRow) -> str:
    """A point label: "300 W", "1605 MHz" or "300 W/1605"."""
    if row.power_limit_req_w is not None and row.sm_clock_mhz is not None:
        return f"{row.power_limit_req_w:g} W/{row.sm_clock_mhz}"
    return row.setting


def _annotate(ax: Any, pts: Sequence[tuple[float, float, str]]) -> None:
    """Label each point; points within 3 % of both axes' spans share one label (one setting per line)."""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    dx, dy = 0.03 * ((max(xs) - min(xs)) or 1.0), 0.03 * ((max(ys) - min(ys)) or 1.0)
    clusters: list[tuple[float, float, list[str]]] = []
    for x, y, label in pts:
        near = next((c for c in clusters if abs(c[0] - x) <= dx and abs(c[1] - y) <= dy), None)
        if near is None:
            clusters.append((x, y, [label]))
        else:
            near[2].append(label)
    for x, y, labels in clusters:
        ax.annotate("\n".join(labels), (x, y), fontsize=7, textcoords="offset points", xytext=(4, 2), va="bottom")


def _half_ci(lo: float | None, hi: float | None, std: float | None) -> float:
    if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
        return (hi - lo) / 2
    return std if std is not None and math.isfinite(std) else 0.0


def _from_zero(ys: Sequence[float], err: Sequence[float]) -> list[list[float]]:
    """Asymmetric error bars that stop at 0 below, as report.md's intervals do (tok/s and tok/J are never negative)."""
    below = [min(e, max(y, 0.0)) if math.isfinite(y) else e for y, e in zip(ys, err, strict=True)]
    return [below, list(err)]


SINGLE = "one window: no interval"


def _mark_single(ax: Any, xs: Sequence[float], ys: Sequence[float], counts: Sequence[int]) -> None:
    """A grey square on each point that stands on one window (no 95 % CI to draw), one legend entry per axis.

    `counts`: the windows behind each point (tok/s: the repetitions; tok/J: those with a valid energy reading).
    """
    pts = zip(xs, ys, counts, strict=True)
    hit = [(x, y) for x, y, n in pts if n < 2 and math.isfinite(x) and math.isfinite(y)]
    if hit:
        label = None if SINGLE in ax.get_legend_handles_labels()[1] else SINGLE
        xs_, ys_ = [p[0] for p in hit], [p[1] for p in hit]  # (a colour of its own: the lines' colours stay put)
        ax.plot(xs_, ys_, "s", ms=10, color="0.45", mfc="none", mec="0.45", mew=1.2, label=label)


def _panels(groups: Groups) -> tuple[Any, Any, list[tuple[Any, str, list[SummaryRow]]]]:
    """(plt, fig, [(axis, backend, rows)]): one panel per test, each backend's rows on its test's panel."""
    plt = pyplot()
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
        # under the panel, where it covers no point ("best" inside searches, and warns when that is slow)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), ncol=2, frameon=False)


def _has_clocks(groups: Groups) -> bool:
    return any(r.sm_clock_mhz is not None for rows in groups.values() for r in rows)


def _lines(backend: str, rows: list[SummaryRow], clocks: bool) -> list[tuple[str, list[SummaryRow], list[float]]]:
    """(label, rows, x values) per line: one per backend, or with clocks one per (backend, limit) against the clock."""
    if not clocks:
        return [(backend, rows, [num(r.limit_w) for r in rows])]
    limits = list(dict.fromkeys(r.power_limit_req_w for r in rows))
    out = []
    for limit_w in limits:
        line = sorted((r for r in rows if r.power_limit_req_w == limit_w), key=lambda r: num(r.sm_clock_mhz))
        label = backend if limit_w is None else f"{backend} @ {limit_w:g} W"
        out.append((label, line, [num(r.sm_clock_mhz) for r in line]))
    return out


def vs_setting_plot(summary: Sequence[SummaryRow], metric: str, out: Path) -> Path | None:
    """tok/s or tok/J (error bars: 95 % CI) against the limit, or against the locked SM clock when clocks were swept."""
    groups = by_setting(summary)
    if not groups:
        return None
    clocks = _has_clocks(groups)
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        for label, line, xs in _lines(backend, rows, clocks):
            ys = [num(getattr(r, metric)) for r in line]
            mark_flagged(ax, [(x, y, r.verdict) for x, y, r in zip(xs, ys, line, strict=True)])
            _mark_single(ax, xs, ys, [r.n if metric == "avg_ts" else r.valid_reps for r in line])
            if metric == "avg_ts":
                err = [_half_ci(r.ts_ci95_lo, r.ts_ci95_hi, r.stddev_ts) for r in line]
                ax.errorbar(xs, ys, capsize=3, marker="o", label=label, yerr=_from_zero(ys, err))
                continue
            err = [_half_ci(r.tok_per_j_ci95_lo, r.tok_per_j_ci95_hi, r.tok_per_j_std) for r in line]
            tpj = [num(r.tok_per_j) for r in line]
            bars = ax.errorbar(xs, tpj, capsize=3, marker="o", label=f"{label} gross", yerr=_from_zero(tpj, err))
            net = [num(r.net_tok_per_j) for r in line]
            if any(math.isfinite(v) for v in net):  # a clock sweep's many lines: net in its gross line's colour
                color = bars[0].get_color() if clocks else None
                ax.plot(xs, net, marker="x", ls="--", color=color, label=f"{label} net of idle")
    xlabel = "SM clock (MHz, locked)" if clocks else "power limit (W, enforced)"
    _style(fig.axes, xlabel, "tokens / s" if metric == "avg_ts" else "tokens / J")
    title = ("Throughput" if metric == "avg_ts" else "Energy efficiency") + (
        " vs SM clock (95 % CI)" if clocks else " vs power limit (95 % CI)"
    )
    return save(plt, fig, title, out)


def pareto_plot(summary: Sequence[SummaryRow], out: Path) -> Path | None:
    """tok/s against mean draw (W) per backend and test, each point labelled with its setting; the frontier is drawn."""
    groups = {k: [r for r in v if math.isfinite(num(r.mean_power_w))] for k, v in by_setting(summary).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        pts = sorted(((num(r.mean_power_w), num(r.avg_ts), _short(r)) for r in rows), key=lambda p: p[:2])
        line = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=":", label=backend)[0]
        front, best = [], -math.inf
        for w, ts, _ in pts:  # lowest power first: a point is on the frontier if it is faster than all cheaper ones
            if ts > best:
                front.append((w, ts))
                best = ts
        ax.plot([p[0] for p in front], [p[1] for p in front], color=line.get_color(), lw=2, alpha=0.5)
        mark_flagged(ax, [(num(r.mean_power_w), num(r.avg_ts), r.verdict) for r in rows])
        _annotate(ax, pts)
    _style(fig.axes, "mean GPU power (W)", "tokens / s")
    return save(plt, fig, "Pareto: throughput vs power (labels: setting)", out)


def _frontier(pts: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points no other point beats on both tok/J (x) and tok/s (y), by tok/J."""
    front, best_ts = [], -math.inf
    for p in sorted(pts, key=lambda p: (-p[0], -p[1])):  # most efficient first: keep those faster than all before
        if p[1] > best_ts:
            front.append(p)
            best_ts = p[1]
    return sorted(front)


def efficiency_pareto_plot(
    summary: Sequence[SummaryRow], spots: Sequence[SweetSpot], min_speed: float, out: Path
) -> Path | None:
    """tok/s against tok/J per backend and test, points labelled by setting, frontier, sweet spot and speed line."""
    groups = {k: [r for r in v if math.isfinite(num(r.tok_per_j))] for k, v in by_setting(summary).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    spot_of = {(s.backend, s.test): s for s in spots}
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        pts = [(num(r.tok_per_j), num(r.avg_ts), _short(r)) for r in rows]
        dots = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls="none", label=backend)[0]
        front = _frontier(pts)
        color = dots.get_color()
        ax.plot([p[0] for p in front], [p[1] for p in front], color=color, lw=2, alpha=0.5, label=f"{backend} frontier")
        mark_flagged(ax, [(num(r.tok_per_j), num(r.avg_ts), r.verdict) for r in rows])
        _annotate(ax, pts)
        spot = spot_of.get((backend, rows[0].test))
        if spot is not None:
            star = f"{backend} sweet spot: {spot.setting}"
            ax.plot([spot.tok_per_j], [spot.avg_ts], "*", ms=16, color=color, mec="black", label=star)
            line = f"{100 * min_speed:.0f} % of {spot.stock_setting}"
            ax.axhline(min_speed * spot.stock_ts, color=color, ls="--", lw=0.8, label=line)
    _style(fig.axes, "tokens / J (gross)", "tokens / s")
    return save(plt, fig, "Pareto: throughput vs efficiency (labels: setting; star: sweet spot)", out)


def _grid(rows: list[SummaryRow]) -> tuple[list[float], list[int]] | None:
    """(limits, clocks), both highest first, when `rows` form a grid of at least 2 x 2; else None."""
    limits = sorted({r.power_limit_req_w for r in rows if r.power_limit_req_w is not None}, reverse=True)
    clocks = sorted({r.sm_clock_mhz for r in rows if r.sm_clock_mhz is not None}, reverse=True)
    return (limits, clocks) if len(limits) >= 2 and len(clocks) >= 2 else None


def _cell(ax: Any, plt: Any, i: int, j: int, row: SummaryRow, ref_ts: float, min_speed: float, dark: bool) -> None:
    """One heat-map cell's text (tok/J to 3 decimals, as the tables give it; share of the reference tok/s).

    A cell too slow for the sweet spot is hatched.
    """
    share = num(row.avg_ts) / ref_ts
    text = f"{num(row.tok_per_j):.3f}\n{100 * share:.0f} %" + (" ⚠" if mark(row.verdict) else "")
    ax.text(j, i, text, ha="center", va="center", fontsize=7, color="white" if dark else "black")
    if not share >= min_speed:
        ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", ec="0.5", lw=0))


def heatmap(summary: Sequence[SummaryRow], spots: Sequence[SweetSpot], min_speed: float, out: Path) -> Path | None:
    """tok/J over the limit x clock grid, one panel per backend and test (None without a 2 x 2 grid)."""
    grids = {k: (rows, g) for k, rows in by_setting(summary).items() if (g := _grid(rows)) is not None}
    if not grids:
        return None
    plt = pyplot()
    n_clocks = max(len(g[1]) for _, g in grids.values())
    n_limits = max(len(g[0]) for _, g in grids.values())
    fig, axes = plt.subplots(1, len(grids), figsize=((1.3 * n_clocks + 2) * len(grids), 0.8 * n_limits + 2))
    spot_of = {(s.backend, s.test): s for s in spots}
    for ax, ((backend, test), (rows, (limits, clocks))) in zip(fig.axes, grids.items(), strict=False):
        cell = {(r.power_limit_req_w, r.sm_clock_mhz): r for r in rows}
        values = [[num(cell[(w, c)].tok_per_j) if (w, c) in cell else math.nan for c in clocks] for w in limits]
        image = ax.imshow(values, cmap="viridis", aspect="auto")
        fig.colorbar(image, ax=ax, label="tokens / J")
        spot = spot_of.get((backend, test))
        ref_ts = spot.stock_ts if spot is not None else max(num(r.avg_ts) for r in rows)
        for i, w in enumerate(limits):
            for j, c in enumerate(clocks):
                if (w, c) in cell:  # viridis is dark below ~60 % of its range: white text there
                    _cell(ax, plt, i, j, cell[(w, c)], ref_ts, min_speed, image.norm(values[i][j]) < 0.6)
        if spot is not None and spot.limit_w in limits and spot.sm_clock_mhz in clocks:
            i, j = limits.index(spot.limit_w), clocks.index(spot.sm_clock_mhz)
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=2.5))
        ax.set_xticks(range(len(clocks)), [str(c) for c in clocks], fontsize=8)
        ax.set_yticks(range(len(limits)), [f"{w:g}" for w in limits], fontsize=8)
        ax.set_xlabel("SM clock (MHz, locked)")
        ax.set_ylabel("power limit (W)")
        ax.set_title(f"{backend} {test}", fontsize=9)
    title = (
        f"tok/J per setting (cell: tok/J, % of the fastest tok/s; hatched: < {100 * min_speed:.0f} %; red: sweet spot)"
    )
    return save(plt, fig, title, out)


def render_sweep(
    run_dir: Path, summary: Sequence[SummaryRow], spots: Sequence[SweetSpot], min_speed: float
) -> list[Path]:
    """Write the sweep plots where there is data (see the module docstring); returns the files written."""
    made = [
        vs_setting_plot(summary, "avg_ts", run_dir / "sweep_tok_s.png"),
        vs_setting_plot(summary, "tok_per_j", run_dir / "sweep_tok_j.png"),
        pareto_plot(summary, run_dir / "sweep_pareto.png"),
        efficiency_pareto_plot(summary, spots, min_speed, run_dir / "sweep_pareto_tok_j.png"),
        heatmap(summary, spots, min_speed, run_dir / "sweep_heatmap.png"),
    ]
    names = ("sweep_tok_s.png", "sweep_tok_j.png", "sweep_pareto.png", "sweep_pareto_tok_j.png", "sweep_heatmap.png")
    return drop_unmade(made, run_dir, names)
