"""Sweep results: the sweet spot, tok/s and tok/J vs power limit, and the Pareto plot of tok/s vs W.

Works from summary rows alone (dicts from `results.summarize` or read back from summary.csv), so `luce-bench report`
can rebuild it. Sweet spot, per (backend, test): the limit with the best gross tok/J whose tok/s stays at or above
`min_speed` x the stock tok/s (stock = the run at the card's default limit, else the highest limit measured).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from luce_bench.plots import _pyplot
from luce_bench.stats import to_float as _f

SWEET_SPOT_COLUMNS = [
    "backend",
    "test",
    "limit_w",
    "enforced_w",
    "avg_ts",
    "speed_share",
    "tok_per_j",
    "net_tok_per_j",
    "mean_power_w",
    "power_share",
    "stock_limit_w",
    "stock_ts",
    "stock_tok_per_j",
    "tok_per_j_gain_pct",
]




def _limit_w(row: dict[str, Any]) -> float:
    w = _f(row.get("power_limit_w"))
    return w if math.isfinite(w) else _f(row.get("power_limit_req_w"))


def _groups(summary: Sequence[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in summary:
        if math.isfinite(_f(r.get("power_limit_req_w"))):
            out.setdefault((str(r.get("backend")), str(r.get("test"))), []).append(r)
    return {k: sorted(v, key=lambda r: -_f(r.get("power_limit_req_w"))) for k, v in out.items()}


def sweet_spots(
    summary: Sequence[dict[str, Any]], min_speed: float = 0.95, default_limit_w: float | None = None
) -> list[dict[str, Any]]:
    """One sweet spot per (backend, test) with at least one measured limit; see the module docstring."""
    spots = []
    for (backend, test), rows in _groups(summary).items():
        stock = next(
            (
                r
                for r in rows
                if default_limit_w is not None and abs(_f(r.get("power_limit_req_w")) - default_limit_w) < 0.5
            ),
            rows[0],
        )
        stock_ts, stock_tpj = _f(stock.get("avg_ts")), _f(stock.get("tok_per_j"))
        ok = [r for r in rows if math.isfinite(_f(r.get("tok_per_j"))) and _f(r.get("avg_ts")) >= min_speed * stock_ts]
        if not ok or not math.isfinite(stock_ts):
            continue
        best = max(ok, key=lambda r: _f(r.get("tok_per_j")))
        tpj = _f(best.get("tok_per_j"))
        spots.append(
            {
                "backend": backend,
                "test": test,
                "limit_w": _f(best.get("power_limit_req_w")),
                "enforced_w": _limit_w(best),
                "avg_ts": _f(best.get("avg_ts")),
                "speed_share": _f(best.get("avg_ts")) / stock_ts,
                "tok_per_j": tpj,
                "net_tok_per_j": _f(best.get("net_tok_per_j")),
                "mean_power_w": _f(best.get("mean_power_w")),
                "power_share": _f(best.get("mean_power_w")) / _f(stock.get("mean_power_w")),
                "stock_limit_w": _f(stock.get("power_limit_req_w")),
                "stock_ts": stock_ts,
                "stock_tok_per_j": stock_tpj,
                "tok_per_j_gain_pct": 100.0 * (tpj / stock_tpj - 1.0) if stock_tpj > 0 else math.nan,
                "stock_is_default": default_limit_w is not None
                and abs(_f(stock.get("power_limit_req_w")) - default_limit_w) < 0.5,
                # the gain is noise when the sweet spot's tok/J CI reaches the stock row's mean
                "significant": best is stock or _f(best.get("tok_per_j_ci95_lo")) > stock_tpj,
            }
        )
    return spots


def describe_spot(s: dict[str, Any], min_speed: float) -> str:
    """One sentence for the console and the report."""
    stock = "stock" if s.get("stock_is_default", True) else "the highest measured limit"
    text = (
        f"{s['backend']} {s['test']}: sweet spot {s['limit_w']:g} W (enforced {s['enforced_w']:g} W): "
        f"{s['tok_per_j']:.3f} tok/J ({s['tok_per_j_gain_pct']:+.1f} % vs {stock} {s['stock_limit_w']:g} W), "
        f"{100 * s['speed_share']:.1f} % of its tok/s at {100 * s['power_share']:.0f} % of its power "
        f"(threshold >= {100 * min_speed:.0f} %)"
    )
    if not s.get("stock_is_default", True):
        text += "; the card's default limit was not measured"
    if not s.get("significant", True):
        text += "; the gain is within the 95 % CI: not significant"
    return text


def _half_ci(r: dict[str, Any], lo: str, hi: str, std: str) -> float:
    a, b = _f(r.get(lo)), _f(r.get(hi))
    if math.isfinite(a) and math.isfinite(b):
        return (b - a) / 2
    s = _f(r.get(std))
    return s if math.isfinite(s) else 0.0


def _panels(groups: dict[tuple[str, str], list[dict[str, Any]]]) -> tuple[Any, Any, list[tuple[Any, str, list]]]:
    """(plt, fig, [(axis, backend, rows)]): one panel per test, each backend's rows on its test's panel."""
    plt = _pyplot()
    tests = list(dict.fromkeys(t for _, t in groups))
    fig, axes = plt.subplots(1, len(tests), figsize=(5 * len(tests), 4), squeeze=False)
    axis_of = dict(zip(tests, axes[0], strict=True))
    for test, ax in axis_of.items():
        ax.set_title(test)
    return plt, fig, [(axis_of[t], backend, rows) for (backend, t), rows in groups.items()]


def _save(plt: Any, fig: Any, title: str, out: Path) -> Path:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _style(axes: Any, xlabel: str, ylabel: str) -> None:
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)


def vs_limit_plot(summary: Sequence[dict[str, Any]], metric: str, out: Path) -> Path | None:
    """tok/s or tok/J (error bars: 95 % CI) against the enforced limit, one line per backend, one panel per test."""
    groups = _groups(summary)
    if not groups:
        return None
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        xs = [_limit_w(r) for r in rows]
        if metric == "avg_ts":
            ax.errorbar(xs, [_f(r.get("avg_ts")) for r in rows], capsize=3, marker="o", label=backend,
                        yerr=[_half_ci(r, "ts_ci95_lo", "ts_ci95_hi", "stddev_ts") for r in rows])
            continue
        ax.errorbar(xs, [_f(r.get("tok_per_j")) for r in rows], capsize=3, marker="o", label=f"{backend} gross",
                    yerr=[_half_ci(r, "tok_per_j_ci95_lo", "tok_per_j_ci95_hi", "tok_per_j_std") for r in rows])
        net = [_f(r.get("net_tok_per_j")) for r in rows]
        if any(math.isfinite(v) for v in net):
            ax.plot(xs, net, marker="x", ls="--", label=f"{backend} net of idle")
    _style(fig.axes, "power limit (W, enforced)", "tokens / s" if metric == "avg_ts" else "tokens / J")
    title = ("Throughput" if metric == "avg_ts" else "Energy efficiency") + " vs power limit (95 % CI)"
    return _save(plt, fig, title, out)


def pareto_plot(summary: Sequence[dict[str, Any]], out: Path) -> Path | None:
    """tok/s against mean draw (W) per backend and test, each point labelled with its limit; the frontier is drawn."""
    groups = {k: [r for r in v if math.isfinite(_f(r.get("mean_power_w")))] for k, v in _groups(summary).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        return None
    plt, fig, panels = _panels(groups)
    for ax, backend, rows in panels:
        pts = sorted((_f(r.get("mean_power_w")), _f(r.get("avg_ts")), _f(r.get("power_limit_req_w"))) for r in rows)
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


def section(run_dir: Path, summary: Sequence[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Write the sweep plots and sweet_spot.json/csv into `run_dir`; return report.md lines (report.build hook)."""
    from luce_bench.results import atomic_write_text, write_csv_atomic

    sweep = meta.get("sweep", {})
    min_speed = float(sweep.get("sweet_spot_min_speed", 0.95))
    spots = sweet_spots(summary, min_speed, sweep.get("default_limit_w"))
    write_csv_atomic(run_dir / "sweet_spot.csv", SWEET_SPOT_COLUMNS, spots)
    atomic_write_text(
        run_dir / "sweet_spot.json", json.dumps({"min_speed": min_speed, "sweet_spots": spots}, indent=2) + "\n"
    )
    plots = [
        vs_limit_plot(summary, "avg_ts", run_dir / "sweep_tok_s.png"),
        vs_limit_plot(summary, "tok_per_j", run_dir / "sweep_tok_j.png"),
        pareto_plot(summary, run_dir / "sweep_pareto.png"),
    ]
    lines = [
        "## Power-limit sweep",
        "",
        f"Limits (requested, in order): {', '.join(f'{w:g} W' for w in sweep.get('limits_requested_w', []))}; "
        f"original limit {sweep.get('original_limit_w', 'n/a')} W restored after the sweep.",
        "",
    ]
    lines += [f"- **{describe_spot(s, min_speed)}**" for s in spots] or ["- no sweet spot: no limit has energy data"]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in plots if p is not None]
    return lines


def finish(run_dir: Path, min_speed: float, console: Any = None) -> list[dict[str, Any]]:
    """After a sweep: summary.csv, the lead's report and plots, then the sweep section; prints the sweet spots."""
    from luce_bench.report import build, print_table
    from luce_bench.results import atomic_write_text

    summary, meta, md = build(run_dir)
    meta.setdefault("sweep", {})["sweet_spot_min_speed"] = min_speed
    lines = section(run_dir, summary, meta)
    if "## Power-limit sweep" not in md:
        atomic_write_text(run_dir / "report.md", md + "\n" + "\n".join(lines) + "\n")
    spots = json.loads((run_dir / "sweet_spot.json").read_text())["sweet_spots"]
    if console is not None:
        print_table(summary, meta, console)
        for s in spots:
            console.print(f"[green]{describe_spot(s, min_speed)}[/green]")
        console.print(f"results: {run_dir}")
    return spots
