"""Summary statistics: mean, sample standard deviation (n-1, as llama-bench) and a 95 % Student-t interval.

The standard library's `statistics` does the moments; scipy gives the exact t quantile.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from dataclasses import dataclass


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom (NaN for df < 1)."""
    if df < 1:
        return math.nan
    from scipy.special import stdtrit

    return float(stdtrit(df, 0.975))


@dataclass(frozen=True)
class Stat:
    """mean ± std with the 95 % confidence interval of the mean, over n values."""

    n: int
    mean: float
    std: float
    ci95_lo: float
    ci95_hi: float


def finite(values: Iterable[float | None]) -> list[float]:
    """The finite values of `values` as floats (None and NaN dropped)."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def describe(values: Iterable[float | None]) -> Stat:
    """Stats of the finite values in `values`; all-NaN when none are left, NaN spread for one value."""
    xs = finite(values)
    n = len(xs)
    if n == 0:
        return Stat(0, math.nan, math.nan, math.nan, math.nan)
    mean = statistics.fmean(xs)
    if n == 1:
        return Stat(1, mean, math.nan, math.nan, math.nan)
    std = statistics.stdev(xs)
    half = t975(n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def mean(values: Iterable[float | None]) -> float:
    """Mean of the finite values (NaN if none)."""
    xs = finite(values)
    return statistics.fmean(xs) if xs else math.nan


def median(values: Iterable[float | None]) -> float:
    """Median of the finite values (NaN if none)."""
    xs = finite(values)
    return statistics.median(xs) if xs else math.nan
