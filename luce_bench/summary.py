"""From repetitions to conclusions: summary rows, the sweet spot of a sweep, greedy-token agreement.

A summary row averages every repetition of its group, stressed or not (quality.py: leaving windows out by their
outcome would favour the row); its verdict names every flag of every repetition, and `stress_notes` how many windows
carry a stress flag.

Sweet spot, per (backend, test): the setting with the best gross tok/J whose tok/s stays at or above `min_speed` x
the reference tok/s. The reference of a power-limit sweep is stock: the run at the card's default limit, else the
highest limit measured. When SM clocks were swept (alone or as a grid with limits) it is the fastest setting measured:
a clock sweep has no stock row (every row is locked), and "keep 95 % of the best speed" reads the same on both axes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from luce_bench import quality
from luce_bench.records import RunRecord, SummaryRow, SweetSpot, setting_text
from luce_bench.stats import describe, mean, median


def _v(x: float | None) -> float:
    return math.nan if x is None else x


def _max_abs(values: list[float | None]) -> float:
    return max((abs(v) for v in values if v is not None and math.isfinite(v)), default=math.nan)


def _net_tok_per_j(valid: Sequence[RunRecord]) -> float:
    """Mean net tok/J of the windows with an idle baseline; NaN if any of them drew no more than its idle baseline.

    Such a window has no net tok/J (runs.csv leaves it empty), and a mean over the others alone would keep only the
    windows that favour the row.
    """
    based = [r for r in valid if r.idle_power_w is not None and math.isfinite(r.idle_power_w)]
    nets = [r.net_tok_per_j for r in based]
    if any(v is None or not math.isfinite(v) for v in nets):
        return math.nan
    return mean(nets)


def _summary_row(rs: Sequence[RunRecord]) -> SummaryRow:
    """The summary of one group's repetitions: statistics and flags over all of them."""
    valid = [r for r in rs if r.valid]
    ts = describe(r.avg_ts for r in rs)
    tpj = describe(r.tok_per_j for r in valid)
    energy_j = sum(_v(r.energy_j) for r in valid)
    tokens = sum(r.n_tokens for r in valid)
    drift = [abs(_v(r.temp_end_c) - _v(r.temp_start_c)) for r in rs]
    flags = {f for r in rs for f in quality.flags_of(r.verdict)} or (set() if valid else {quality.NO_ENERGY})
    flags |= set(quality.spread_flags(ts, tpj))
    first = rs[0]
    return SummaryRow(
        backend=first.backend,
        model=first.model,
        test=first.test,
        n_prompt=first.n_prompt,
        n_gen=first.n_gen,
        n_depth=first.n_depth,
        power_limit_req_w=first.power_limit_req_w,
        power_limit_w=first.power_limit_w,
        sm_clock_req_mhz=first.sm_clock_req_mhz,
        sm_clock_mhz=first.sm_clock_mhz,
        n=ts.n,
        window_s=mean(r.window_s for r in rs),
        avg_ts=ts.mean,
        stddev_ts=ts.std,
        ts_ci95_lo=ts.ci95_lo,
        ts_ci95_hi=ts.ci95_hi,
        median_ts=median(r.avg_ts for r in rs),
        timed_ts=mean(r.timed_ts for r in rs),
        tok_per_j=tpj.mean,
        tok_per_j_std=tpj.std,
        tok_per_j_ci95_lo=tpj.ci95_lo,
        tok_per_j_ci95_hi=tpj.ci95_hi,
        j_per_tok=energy_j / tokens if tokens > 0 and valid else math.nan,
        mean_power_w=mean(r.mean_power_w for r in valid),
        idle_power_w=mean(r.idle_power_w for r in rs),
        net_tok_per_j=_net_tok_per_j(valid),
        mean_sm_mhz=mean(r.mean_sm_mhz for r in rs),
        mean_mem_mhz=mean(r.mean_mem_mhz for r in rs),
        throttled_share=mean(r.throttled_share for r in rs),
        clock_reasons=";".join(dict.fromkeys(n for r in rs for n in r.clock_reasons.split(";") if n)),
        max_counter_vs_sampled_pct=_max_abs([r.counter_vs_sampled_pct for r in rs]),
        temp_drift_c=_max_abs(drift),
        valid_reps=len(valid),
        device=first.device,
        gpu_simulated=first.gpu_simulated,
        verdict=quality.verdict(quality.ordered(flags)),
    )


GroupKey = tuple[str, str, float | None, int | None]  # (backend, test, requested power limit, locked SM clock)


def _groups(runs: Sequence[RunRecord]) -> dict[GroupKey, list[RunRecord]]:
    """The repetitions behind each summary row, by (backend, test, requested limit, locked clock), first seen first."""
    groups: dict[GroupKey, list[RunRecord]] = {}
    for r in runs:
        groups.setdefault((r.backend, r.test, r.power_limit_req_w, r.sm_clock_mhz), []).append(r)
    return groups


def summarize(runs: Sequence[RunRecord]) -> list[SummaryRow]:
    """One row per (backend, test, requested power limit, locked SM clock), in first-seen order."""
    return [_summary_row(rs) for rs in _groups(runs).values()]


def stress_notes(runs: Sequence[RunRecord]) -> list[str]:
    """One line per group with stressed repetitions: how many, which flags; the summary averages them in."""
    out = []
    for (backend, test, limit_w, clock_mhz), rs in _groups(runs).items():
        hit = [r for r in rs if quality.stressed(r.verdict)]
        if not hit:
            continue
        names = ", ".join(sorted({f for r in hit for f in quality.stressed(r.verdict)}))
        where = f"{backend} {test} @ {setting_text(limit_w, clock_mhz)}"
        if len(hit) == len(rs):
            out.append(f"{where}: all {len(rs)} repetitions flagged {names}; the summary averages them")
        else:
            out.append(
                f"{where}: {len(hit)} of {len(rs)} repetitions flagged {names}; the summary averages them with the rest"
            )
    return out


# A group whose windows spend more than this share outside the backend's timed calls is said so. Units: %
MAX_OVERHEAD_PCT = 2.0


def overhead_notes(runs: Sequence[RunRecord]) -> list[str]:
    """One line per group whose windows spend over MAX_OVERHEAD_PCT outside the backend's timed calls.

    A window's tok/s (`avg_ts`) and tok/J count all of it: the timed calls and each iteration's unmeasured start (a
    new sequence, a depth test's context put back) and the harness between them. llama-bench's t/s times the calls
    alone (`timed_ts`), so a backend with a costly start reads lower here than there, and a ratio between backends
    carries the difference of their shares.
    """
    out = []
    for (backend, test, limit_w, clock_mhz), rs in _groups(runs).items():
        # the summary row's tok/s (means over the windows), and the share they imply: one window's 1 - compute/window
        timed_ts, avg_ts = mean(r.timed_ts for r in rs), mean(r.avg_ts for r in rs)
        if not (math.isfinite(timed_ts) and math.isfinite(avg_ts)) or timed_ts <= 0:
            continue
        share_pct = 100.0 * (1.0 - avg_ts / timed_ts)
        if share_pct > MAX_OVERHEAD_PCT:
            out.append(
                f"{backend} {test} @ {setting_text(limit_w, clock_mhz)}: {share_pct:.1f} % of its windows is outside "
                f"the timed calls (each iteration's start, the harness); its tok/s and tok/J count that time, "
                f"llama-bench's t/s would not ({timed_ts:,.1f} timed vs {avg_ts:,.1f} tok/s)"
            )
    return out


# Idle baselines of one setting further apart than this share of their mean are said so. Units: %
MAX_IDLE_SPREAD_PCT = 2.0


def baseline_notes(runs: Sequence[RunRecord]) -> list[str]:
    """One line per setting whose idle baselines differ by more than MAX_IDLE_SPREAD_PCT of their mean.

    Each setting's idle baseline is measured each time the setting is applied: once per round (`sweep.rounds`) and
    again in a resumed run's sitting. Each window's net tok/J stands on its own application's baseline; the summary's
    net tok/J and mean idle W then average over them, and this says by how much the baselines differ where that is
    more than the counter's own scatter.
    """
    settings: dict[tuple[float | None, int | None], set[float]] = {}
    for r in runs:
        if r.idle_power_w is not None and math.isfinite(r.idle_power_w):
            settings.setdefault((r.power_limit_req_w, r.sm_clock_mhz), set()).add(round(r.idle_power_w, 1))
    out = []
    for (limit_w, clock_mhz), idle_w in settings.items():
        if len(idle_w) > 1 and 100.0 * (max(idle_w) - min(idle_w)) > MAX_IDLE_SPREAD_PCT * mean(idle_w):
            told = ", ".join(f"{w:.1f}" for w in sorted(idle_w))
            out.append(
                f"{setting_text(limit_w, clock_mhz)}: the idle baseline differs between its measurements ({told} W; "
                f"{max(idle_w) - min(idle_w):.1f} W apart): net tok/J averages windows over all of them"
            )
    return out


def _setting_key(r: SummaryRow) -> tuple[bool, float, bool, float]:
    """Highest limit first (no limit last), then highest clock (no lock last)."""
    limit_w, clock_mhz = r.power_limit_req_w, r.sm_clock_mhz
    return limit_w is None, -(limit_w or 0.0), clock_mhz is None, -(clock_mhz or 0.0)


def by_setting(summary: Sequence[SummaryRow]) -> dict[tuple[str, str], list[SummaryRow]]:
    """Rows of the settings luce-bench made (a limit and/or a clock), per (backend, test), in `_setting_key` order."""
    out: dict[tuple[str, str], list[SummaryRow]] = {}
    for r in summary:
        if r.is_setting and (r.power_limit_req_w is None or math.isfinite(r.power_limit_req_w)):
            out.setdefault((r.backend, r.test), []).append(r)
    return {k: sorted(v, key=_setting_key) for k, v in out.items()}


def _is_limit(row: SummaryRow, limit_w: float | None) -> bool:
    return limit_w is not None and abs(_v(row.power_limit_req_w) - limit_w) < 0.5


def _reference(rows: list[SummaryRow], default_w: float | None) -> tuple[SummaryRow, str]:
    """The row tok/s is kept against, and which kind it is: stock, highest (limit measured) or fastest."""
    if any(r.sm_clock_mhz is not None for r in rows):
        return max(rows, key=lambda r: _v(r.avg_ts) if math.isfinite(_v(r.avg_ts)) else -math.inf), "fastest"
    stock = next((r for r in rows if _is_limit(r, default_w)), None)
    return (stock, "stock") if stock is not None else (rows[0], "highest")


StartTemps = dict[GroupKey, float]
# Settings whose windows started further apart than this are not compared silently (a hotter card leaks more power:
# part of a tok/J difference may be the heat, not the setting). Units: °C
TEMP_APART_C = 5.0


def start_temps(runs: Sequence[RunRecord]) -> StartTemps:
    """The mean start temperature of the windows of each summary row. Units: °C."""
    out = {}
    for key, rs in _groups(runs).items():
        temp_c = mean(r.temp_start_c for r in rs)
        if math.isfinite(temp_c):
            out[key] = temp_c
    return out


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _start_temp_c(row: SummaryRow, temps: StartTemps) -> float:
    return temps.get((row.backend, row.test, row.power_limit_req_w, row.sm_clock_mhz), math.nan)


def _spot(
    backend: str,
    test: str,
    rows: list[SummaryRow],
    min_speed: float,
    default_w: float | None,
    provisional: bool,
    temps: StartTemps,
) -> SweetSpot | None:
    stock, reference = _reference(rows, default_w)
    stock_ts, stock_tpj = _v(stock.avg_ts), _v(stock.tok_per_j)
    measured = [r for r in rows if math.isfinite(_v(r.tok_per_j))]
    ok = [r for r in measured if _v(r.avg_ts) >= min_speed * stock_ts]
    if not ok or not math.isfinite(stock_ts):
        return None
    best = max(ok, key=lambda r: _v(r.tok_per_j))
    tpj = _v(best.tok_per_j)
    return SweetSpot(
        backend=backend,
        test=test,
        limit_w=best.power_limit_req_w,
        enforced_w=_v(best.limit_w),
        sm_clock_mhz=best.sm_clock_mhz,
        avg_ts=_v(best.avg_ts),
        speed_share=_v(best.avg_ts) / stock_ts,
        tok_per_j=tpj,
        net_tok_per_j=_v(best.net_tok_per_j),
        mean_power_w=_v(best.mean_power_w),
        power_share=_v(best.mean_power_w) / _v(stock.mean_power_w),
        stock_limit_w=stock.power_limit_req_w,
        stock_sm_clock_mhz=stock.sm_clock_mhz,
        stock_ts=stock_ts,
        stock_tok_per_j=stock_tpj,
        tok_per_j_gain_pct=100.0 * (tpj / stock_tpj - 1.0) if stock_tpj > 0 else math.nan,
        stock_is_default=reference == "stock",
        # (every setting measured besides the reference is a candidate: the speed filter chose among them by their
        # own numbers, so counting only those it kept would make the level depend on the outcome)
        significant=None
        if best is stock
        else gain_is_significant(best, stock, candidates=sum(r is not stock for r in measured)),
        reference=reference,
        provisional=provisional,
        settings=len(rows),
        start_temp_diff_c=_finite_or_none(_start_temp_c(best, temps) - _start_temp_c(stock, temps)),
    )


SIGNIFICANCE_P = 0.05  # the one-sided Welch test's level for "the sweet spot's tok/J is higher than the reference's"


def gain_is_significant(best: SummaryRow, ref: SummaryRow, candidates: int = 1) -> bool | None:
    """Whether `best`'s mean tok/J exceeds `ref`'s by more than their windows' spread explains.

    Welch's t-test (unequal variances), one-sided, on both rows' tok/J mean, sample std and windows with energy
    (`valid_reps`): both rows' scatter counts (a CI of the sweet spot alone against the reference's mean ignored the
    reference's). `best` was chosen as the best of `candidates` settings, so the level is Bonferroni's,
    SIGNIFICANCE_P / candidates: picking the winner first would otherwise make a chance gain look significant more
    often than 5 %. None when either row has fewer than 2 windows with energy (no spread to test against).
    """
    from scipy.stats import ttest_ind_from_stats

    stats = [(_v(r.tok_per_j), _v(r.tok_per_j_std), r.valid_reps) for r in (best, ref)]
    if any(n < 2 or not (math.isfinite(m) and math.isfinite(sd)) for m, sd, n in stats):
        return None
    (m1, s1, n1), (m2, s2, n2) = stats
    if s1 == 0 and s2 == 0:  # no scatter at all (a simulation without noise): the means decide
        return m1 > m2
    p = ttest_ind_from_stats(m1, s1, n1, m2, s2, n2, equal_var=False, alternative="greater").pvalue
    return bool(p < SIGNIFICANCE_P / max(candidates, 1))


def sweet_spots(
    summary: Sequence[SummaryRow],
    min_speed: float = 0.95,
    default_limit_w: float | None = None,
    provisional: bool = False,
    temps: StartTemps | None = None,
) -> list[SweetSpot]:
    """One sweet spot per (backend, test) with at least one measured setting; see the module docstring.

    `provisional`: the sweep stopped before measuring every setting, so a setting it never reached may be better.
    `temps`: the groups' mean start temperatures (`start_temps`), to say how far apart the two compared settings began.
    """
    groups = by_setting(summary).items()
    spots = [_spot(b, t, rows, min_speed, default_limit_w, provisional, temps or {}) for (b, t), rows in groups]
    return [s for s in spots if s is not None]


def describe_spot(s: SweetSpot, min_speed: float) -> str:
    """One sentence for the console and the report."""
    head = ("provisional (the sweep did not finish): " if s.provisional else "") + f"{s.backend} {s.test}: "
    enforced = f" (enforced {_v(s.enforced_w):g} W)" if s.limit_w is not None else ""
    if s.settings == 1:  # nothing to choose between: the numbers, not a gain against itself
        return head + (
            f"one setting measured, {s.setting}{enforced}: {s.tok_per_j:.3f} tok/J at {s.avg_ts:,.1f} tok/s; "
            "a sweet spot needs two or more"
        )
    if s.reference == "fastest":
        where = s.setting + enforced
        stock = f"the fastest setting, {s.stock_setting}"
    else:
        where = f"{_v(s.limit_w):g} W (enforced {_v(s.enforced_w):g} W)"
        stock = f"{'stock' if s.stock_is_default else 'the highest measured limit'} {_v(s.stock_limit_w):g} W"
    if s.limit_w == s.stock_limit_w and s.sm_clock_mhz == s.stock_sm_clock_mhz:
        text = head + (
            f"sweet spot {where}, the reference itself ({stock}): {s.tok_per_j:.3f} tok/J; no other setting kept "
            f">= {100 * min_speed:.0f} % of its tok/s with more tok/J"
        )
    else:
        text = head + (
            f"sweet spot {where}: "
            f"{s.tok_per_j:.3f} tok/J ({_v(s.tok_per_j_gain_pct):+.1f} % vs {stock}), "
            f"{100 * s.speed_share:.1f} % of its tok/s at {100 * _v(s.power_share):.0f} % of its power "
            f"(threshold >= {100 * min_speed:.0f} %)"
        )
    if s.reference == "highest":
        text += "; the card's default limit was not measured"
    diff_c = s.start_temp_diff_c
    if diff_c is not None and abs(diff_c) > TEMP_APART_C:
        text += (
            f"; its windows started {abs(diff_c):.1f} °C {'hotter' if diff_c > 0 else 'cooler'} than the reference's "
            "(a hotter card draws more: part of the difference may be the heat, not the setting)"
        )
    if s.significant is False:
        text += (
            "; not significant (one-sided Welch test, Bonferroni over the settings: the windows' scatter explains it)"
        )
    elif s.significant is None and (s.limit_w, s.sm_clock_mhz) != (s.stock_limit_w, s.stock_sm_clock_mhz):
        text += "; not tested for significance (a setting with fewer than two windows with energy)"
    return text


def _test_tokens(test: str) -> int | None:
    """The tokens a tg test generates ("tg128@d4096" -> 128); None for a name that is not a test's."""
    from luce_bench.config import TestSpec
    from luce_bench.errors import UserError

    try:
        return TestSpec.parse(test).n
    except UserError:
        return None


def token_agreement(first_tokens: dict[str, list[int]]) -> dict[str, str]:
    """For each tg test, how many leading greedy tokens each backend shares with the first backend measured.

    Only the first tokens of a run are kept (`measure.py`: at most 32 of a tg128), and the text says so.
    """
    out: dict[str, str] = {}
    by_test: dict[str, list[tuple[str, list[int]]]] = {}
    for label, toks in first_tokens.items():
        backend, test = label.split(" ", 1)
        by_test.setdefault(test, []).append((backend, toks))
    for test, entries in by_test.items():
        ref_name, ref = entries[0]
        for name, toks in entries[1:]:
            same = next(
                (i for i, (a, b) in enumerate(zip(ref, toks, strict=False)) if a != b), min(len(ref), len(toks))
            )
            kept = min(len(ref), len(toks))
            n = _test_tokens(test)
            of = f" of {n}" if n and n > kept else ""
            out[f"{test} {name} vs {ref_name}"] = f"{same}/{kept} leading tokens equal (the first {kept}{of} compared)"
    return out
