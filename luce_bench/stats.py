"""Summary statistics: mean, sample standard deviation (n-1, as llama-bench) and a 95 % t-interval."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# two-sided 95 % Student-t quantiles t(0.975, df) for df = 1..30; larger df use the normal 1.960
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 97.5 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T975[df - 1] if df <= len(_T975) else 1.960


@dataclass(frozen=True)
class Stat:
    """mean ± std with the 95 % confidence interval of the mean, over n values."""

    n: int
    mean: float
    std: float
    ci95_lo: float
    ci95_hi: float

    @property
    def ci95_half(self) -> float:
        """Half-width of the 95 % CI."""
        return (self.ci95_hi - self.ci95_lo) / 2


def describe(values: Sequence[float]) -> Stat:
    """Stats of the finite values in `values` (NaN/None dropped); all-NaN when none are left."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return Stat(0, math.nan, math.nan, math.nan, math.nan)
    mean = sum(xs) / n
    if n == 1:
        return Stat(1, mean, math.nan, math.nan, math.nan)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t975(n - 1) * std / math.sqrt(n)
    return Stat(n, mean, std, mean - half, mean + half)


def to_float(v: object) -> float:
    """float(v), or NaN for None, empty strings and other non-numbers (CSV cells)."""
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def median(values: Sequence[float]) -> float:
    """Median of the finite values (NaN if none)."""
    xs = sorted(float(v) for v in values if v is not None and math.isfinite(float(v)))
    if not xs:
        return math.nan
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
