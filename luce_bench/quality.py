"""The quality verdict of one energy window (measurement.md rule 13), and which windows a summary leaves out.

A window's verdict is "ok" or a ";"-joined list of flags, in this order:
* `short-window`: shorter than MIN_TRUSTED_WINDOW_S (the counter's ~0.1 s ticks give >2 % error, rule 4).
* `power-disagree`: the sampled instant-power integral and the counter differ by more than MAX_DISAGREE_PCT.
* `sampler-gap`: the sampler left a stretch of the window unsampled longer than SAMPLER_GAP_PERIODS periods and
  MAX_GAP_SHARE of the window (a Python-bound backend starving its thread): the sampled integral interpolates over
  it, so the cross-check is not judged (no `power-disagree`); the counter's energy is not affected.
* `temp-drift`: the temperature moved by more than MAX_TEMP_DRIFT_C within the window (from its first second's end,
  sampler.TEMP_SETTLE_S: the die's rebound from the gap before a repetition is not a drift).
* `thermal-throttle`: a thermal or hardware slowdown (sw/hw thermal, hw slowdown, power brake) held the clocks down
  in any sample of the window: the card ran below the setting the row names.
* `power-capped`: the power cap held the clocks down in more than MAX_POWER_CAPPED_SHARE of the samples of a window
  whose limit luce-bench did not set (compare, bench, a clocks-only sweep): the number depends on a limit the run did
  not choose to measure, and a locked clock was not what ran. Under a limit the sweep set, the cap holding the clock
  down is the effect being measured (`clock_reasons` records it), not a flaw.
* `limit-mismatch`: the enforced power limit was not the row's: more than MAX_LIMIT_MISMATCH_W from the limit the run
  set (another cap, a BMC's, held the card lower), or, where the run set none, from the limit in force when the
  run began (something changed it mid-run), in the read-back after setting it or in any sample of the window.
* `no-samples`: the sampler recorded nothing in or around the window (it failed): no cross-check, no clocks, no
  temperatures. A window shorter than the sampler's period that falls between two polls is not one: the two samples
  around it give its cross-check, clocks and temperatures (and its length flags it `short-window`).
* `counter-reset`: the energy counter went backwards (a driver reload resets it): no energy for this window.
* `energy-invalid`: the counter did not advance; `no-energy`: no NVML counter at all.

One flag belongs to a summary row, not to a window: `noisy`, where the repetitions' tok/s or tok/J spread by more than
MAX_SPREAD_PCT (sample std over mean, from MIN_SPREAD_REPS repetitions): the mean is not a number to quote alone (a
shared CPU, a backend bound by Python's launch overhead).

`STRESS_FLAGS` mark windows measured in a different operating state than the row's setting. A summary averages every
window, stressed or not (leaving the stressed ones out would choose windows by their outcome, in the row's favour),
and its verdict names the flag; the report says how many windows carry it (summary.stress_notes). Tables and plots
mark results whose verdict has a stress flag ("stressed": throttled, capped, or under another limit) or a short
window ("short"): `mark`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from luce_bench.stats import Stat

MIN_TRUSTED_WINDOW_S = 10.0
MAX_DISAGREE_PCT = 5.0
MAX_TEMP_DRIFT_C = 5.0
MAX_POWER_CAPPED_SHARE = 0.05
MAX_LIMIT_MISMATCH_W = 1.0
SAMPLER_GAP_PERIODS = 2.5
MAX_GAP_SHARE = 0.05
MAX_SPREAD_PCT = 5.0
MIN_SPREAD_REPS = 3

SHORT_WINDOW = "short-window"
POWER_DISAGREE = "power-disagree"
SAMPLER_GAP = "sampler-gap"
TEMP_DRIFT = "temp-drift"
THERMAL_THROTTLE = "thermal-throttle"
POWER_CAPPED = "power-capped"
LIMIT_MISMATCH = "limit-mismatch"
NO_SAMPLES = "no-samples"
COUNTER_RESET = "counter-reset"
ENERGY_INVALID = "energy-invalid"
NO_ENERGY = "no-energy"
NOISY = "noisy"

STRESS_FLAGS = (THERMAL_THROTTLE, POWER_CAPPED, LIMIT_MISMATCH)
# every flag a window's verdict can hold, in the order it is written (NOISY belongs to summary rows only)
WINDOW_FLAGS = (
    SHORT_WINDOW,
    POWER_DISAGREE,
    SAMPLER_GAP,
    TEMP_DRIFT,
    THERMAL_THROTTLE,
    POWER_CAPPED,
    LIMIT_MISMATCH,
    NO_SAMPLES,
    COUNTER_RESET,
    ENERGY_INVALID,
    NO_ENERGY,
)


def verdict_problems(
    verdict_text: str,
    window_s: float,
    disagree_pct: float | None,
    temp_start_c: float | None,
    temp_end_c: float | None,
    energy_j: float | None,
) -> list[str]:
    """How a window's verdict contradicts the row's own numbers (a hand-edited runs.csv); [] if it does not.

    Unknown flags, and the flags that follow from the row alone (short-window, power-disagree, temp-drift,
    counter-reset) present without their reason (or without the numbers it is read from) or missing with it. The
    CSVs keep 6 significant digits, so a value within 1e-4 of its threshold is not judged.
    """
    flags = flags_of(verdict_text)
    out = [f"verdict {verdict_text!r}: {f!r} is not a window's flag" for f in flags if f not in WINDOW_FLAGS]

    def judge(flag: str, value: float | None, limit: float, why: str) -> None:
        if value is None:
            if flag in flags:
                out.append(f"verdict {verdict_text!r}: {flag} without the numbers it is read from ({why})")
            return
        if abs(value - limit) <= 1e-4 * max(abs(limit), 1.0):
            return
        if (value > limit) != (flag in flags):
            said = "without" if flag in flags else "missing, with"
            out.append(f"verdict {verdict_text!r}: {flag} {said} {why}")

    judge(SHORT_WINDOW, -window_s, -MIN_TRUSTED_WINDOW_S, f"a window of {window_s:g} s")
    if NO_SAMPLES in flags:  # (the sampler's flags were not judged: older runs kept a held cross-check)
        disagree_pct = temp_start_c = temp_end_c = None
    if SAMPLER_GAP in flags:  # (the cross-check was not judged: a gap of the sampler's, not a disagreement)
        pass
    elif disagree_pct is None:
        judge(POWER_DISAGREE, None, MAX_DISAGREE_PCT, "counter_vs_sampled_pct is empty")
    else:
        judge(POWER_DISAGREE, abs(disagree_pct), MAX_DISAGREE_PCT, f"counter vs sampled {disagree_pct:+.3g} %")
    if temp_start_c is None or temp_end_c is None:
        judge(TEMP_DRIFT, None, MAX_TEMP_DRIFT_C, "a temperature is empty")
    else:
        drift = abs(temp_end_c - temp_start_c)
        judge(TEMP_DRIFT, drift, MAX_TEMP_DRIFT_C, f"a drift of {drift:g} C")
    if energy_j is None:
        judge(COUNTER_RESET, None, 0.0, "energy_j is empty")
    elif energy_j >= 0 or ENERGY_INVALID not in flags:  # (before counter-reset existed, a reset was energy-invalid)
        judge(COUNTER_RESET, -energy_j, 0.0, f"energy_j = {energy_j:g}")
    return out


def window_flags(window_s: float) -> list[str]:
    """The flags a window gets from its length alone."""
    return [] if window_s >= MIN_TRUSTED_WINDOW_S else [SHORT_WINDOW]


def sampled_flags(
    sampled: dict[str, Any],
    disagree_pct: float | None,
    limit_set: bool,
    expected_limit_w: float | None = None,
    enforced_w: float | None = None,
    window_s: float | None = None,
    period_s: float | None = None,
) -> list[str]:
    """Flags from the sampler's view of a window (`Sampler.summarize`): disagreement, drift, throttling, the limit.

    `limit_set`: luce-bench set this window's power limit (a sweep's limit), so capping is the measured effect.
    `expected_limit_w`: the limit the row names (the one set, else the one in force when the run began); with
    `enforced_w`, the limit read back when it was set, they give `limit-mismatch` (`limit_flags`). `window_s` and the
    sampler's `period_s` give `sampler-gap` (`gapped`).
    """
    mismatch = limit_flags(expected_limit_w, enforced_w, sampled)
    if sampled.get("mean_power_w") is None:  # (a window between two polls has the samples around it)
        return [*mismatch, NO_SAMPLES]
    flags = []
    if gapped(sampled.get("max_gap_s"), window_s, period_s):  # the cross-check interpolated too far to be judged
        flags.append(SAMPLER_GAP)
    elif disagree_pct is not None and abs(disagree_pct) > MAX_DISAGREE_PCT:
        flags.append(POWER_DISAGREE)
    ts, te = sampled.get("temp_start_c"), sampled.get("temp_end_c")
    if ts is not None and te is not None and abs(te - ts) > MAX_TEMP_DRIFT_C:
        flags.append(TEMP_DRIFT)
    if (sampled.get("thermal_share") or 0.0) > 0.0:
        flags.append(THERMAL_THROTTLE)
    if not limit_set and (sampled.get("power_cap_share") or 0.0) > MAX_POWER_CAPPED_SHARE:
        flags.append(POWER_CAPPED)
    return flags + mismatch


def gapped(max_gap_s: float | None, window_s: float | None, period_s: float | None) -> bool:
    """Whether a window's longest unsampled stretch exceeds SAMPLER_GAP_PERIODS periods and MAX_GAP_SHARE of it."""
    if max_gap_s is None or window_s is None or period_s is None:
        return False
    return max_gap_s > max(SAMPLER_GAP_PERIODS * period_s, MAX_GAP_SHARE * window_s)


def limit_flags(expected_w: float | None, enforced_w: float | None, sampled: dict[str, Any]) -> list[str]:
    """[LIMIT_MISMATCH] when the read-back `enforced_w` or a sample's limit is off `expected_w` by over 1 W."""
    if expected_w is None:
        return []
    seen = [enforced_w, sampled.get("limit_min_w"), sampled.get("limit_max_w")]
    off = [abs(w - expected_w) for w in seen if w is not None]
    return [LIMIT_MISMATCH] if off and max(off) > MAX_LIMIT_MISMATCH_W else []


def energy_flag(energy_j: float) -> str | None:
    """The flag of a counter delta that cannot be trusted (None when it can)."""
    if energy_j < 0:
        return COUNTER_RESET
    return ENERGY_INVALID if energy_j == 0 else None


def spread_flags(*stats: Stat) -> list[str]:
    """[NOISY] when any statistic of the repetitions (tok/s, tok/J) has a sample std over MAX_SPREAD_PCT of its mean."""
    for s in stats:
        if s.n >= MIN_SPREAD_REPS and s.mean > 0 and 100.0 * s.std / s.mean > MAX_SPREAD_PCT:
            return [NOISY]
    return []


def verdict(flags: Sequence[str]) -> str:
    """The verdict cell: the flags ";"-joined, or "ok"."""
    return ";".join(flags) or "ok"


def ordered(flags: set[str]) -> list[str]:
    """Flags in the order a window's verdict writes them, then NOISY, then any unknown one (a hand-edited runs.csv)."""
    order = (*WINDOW_FLAGS, NOISY)
    return [f for f in order if f in flags] + sorted(flags - set(order))


def flags_of(verdict_text: str) -> list[str]:
    """The flags of a verdict cell ("ok" has none)."""
    return [f for f in verdict_text.split(";") if f and f != "ok"]


def stressed(verdict_text: str) -> list[str]:
    """The stress flags in a verdict cell."""
    return [f for f in flags_of(verdict_text) if f in STRESS_FLAGS]


def mark(verdict_text: str) -> str | None:
    """How tables and plots mark a result: "stressed" (a stress flag), "short" (a short window), or None."""
    flags = flags_of(verdict_text)
    if any(f in STRESS_FLAGS for f in flags):
        return "stressed"
    return "short" if SHORT_WINDOW in flags else None
