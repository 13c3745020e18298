"""Background GPU sampler: polls instant power, clocks, temperature and throttle reasons every `period_s`.

Energy itself comes from the counter delta at window edges (measurement.md rule 1); the sampler's instant-power trace
is the cross-check (rule 2) and the timeline. The polls run through the run's `Clock`: a daemon thread on the real
clock (enough: pynvml calls go through ctypes, which releases the GIL), due times inside sleeps in virtual time.
Readings <= 0 W are skipped (NVML returns them when polled too fast), and so are polls that raise a GPUError (the first
20 are kept in `errors`). Any other exception (a bug in a driver binding, say) stops the sampler for good: it is kept
in `failure`, later polls do nothing, and the run goes on without samples (its windows are flagged `no-samples`).
`now_s()` gives the samples' clock and origin, so callers can mark window edges; `t_offset_s` continues the timeline
of an earlier run (a resumed sweep).
"""

from __future__ import annotations

import functools
import operator
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from luce_bench.clock import Cancel, Clock, RealClock
from luce_bench.gpu.base import GPU, REASON_SW_POWER_CAP, THERMAL_MASK, GPUError, is_throttled, reason_names

MIN_PERIOD_S = 0.05


@dataclass(frozen=True)
class Sample:
    """One poll. `t_s` is seconds since the sampler's origin (see `Sampler.now_s`)."""

    t_s: float
    power_w: float
    avg_power_w: float | None
    sm_mhz: int
    mem_mhz: int
    temp_c: int
    reasons: int
    energy_mj: int
    limit_w: float


BRACKET_PERIODS = 2  # the most periods apart that two samples around a window with none of its own may be
# A window's start temperature is read this far in: the die cools by ~9 C within 0.6 s of a gap between repetitions
# and is back within ~0.5 s of load (an H200's samples), so an earlier reading measures the gap, not the window.
TEMP_SETTLE_S = 1.0


class Sampler:
    """Poll `gpu` every `period_s` on `clock`; use as a context manager or start()/stop()."""

    def __init__(
        self,
        gpu: GPU,
        period_s: float = 0.1,
        clock: Clock | None = None,
        read_average: bool = True,
        t_offset_s: float = 0.0,
    ) -> None:
        """Prepare a sampler (polling starts on `start()` / `with`).

        Args:
            gpu: any GPU-protocol object.
            period_s: poll period; warns below 0.05 s.
            clock: the run's clock (default: the real one).
            read_average: also read field 185 (average power).
            t_offset_s: the samples' time at the start (a resumed run continues the earlier timeline).
        """
        if period_s <= 0:
            raise ValueError("period_s must be positive")
        if period_s < MIN_PERIOD_S:
            warnings.warn(
                f"sampler period {period_s} s < {MIN_PERIOD_S} s: NVML may return zero or NotSupported readings",
                stacklevel=2,
            )
        self.gpu, self.period_s, self.read_average = gpu, period_s, read_average
        self.clock: Clock = clock or RealClock()
        self.samples: list[Sample] = []
        self.errors: list[str] = []
        self.failure: str | None = None  # why the sampler stopped for good (see the module docstring)
        self._origin = self.clock.now_s() - t_offset_s
        self._cancel: Cancel | None = None

    def now_s(self) -> float:
        """Seconds on the sampler's clock, same origin as `Sample.t_s`."""
        return self.clock.now_s() - self._origin

    @property
    def origin_unix_s(self) -> float:
        """The wall-clock time (Unix s) of `t_s = 0`: the anchor that lines the timeline up with outside logs."""
        return self.clock.unix_s() - self.now_s()

    def start(self) -> Sampler:
        """Start polling; returns once the first poll has been attempted."""
        if self._cancel is None:
            self._cancel = self.clock.every(self.period_s, self.poll_once)
        return self

    def stop(self) -> None:
        """Stop polling and wait for the poller (idempotent)."""
        if self._cancel is not None:
            self._cancel()
            self._cancel = None

    def __enter__(self) -> Sampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wait_past(self, t_s: float) -> None:
        """Wait, at most BRACKET_PERIODS periods, until a poll after `t_s` has been taken (none if the sampler failed).

        A window shorter than the period that no poll fell into is summarized from the polls around it, and the one
        after it comes up to a period later.
        """
        deadline_s = self.now_s() + BRACKET_PERIODS * self.period_s
        while self.failure is None and self._cancel is not None and self.now_s() < deadline_s:
            if self.samples and self.samples[-1].t_s > t_s:
                return
            self.clock.sleep(self.period_s / 4)

    def poll_once(self) -> Sample | None:
        """Take one sample now (also used by tests with a fake clock); None when the reading is skipped."""
        if self.failure is not None:
            return None
        try:
            return self._poll()
        except Exception as exc:  # noqa: BLE001 - a poller that raises must not take the run (or its thread) down
            self.failure = f"{type(exc).__name__}: {exc}"
            return None

    def _poll(self) -> Sample | None:
        t_s = self.now_s()
        try:
            power_w = self.gpu.power_usage_mw() / 1000.0
            if power_w <= 0:
                return None
            avg_w = None
            if self.read_average:
                try:
                    avg_w = self.gpu.average_power_mw() / 1000.0
                except GPUError:
                    self.read_average = False
            sm_mhz, mem_mhz = self.gpu.clocks_mhz()
            limit_w = self.gpu.power_limit_mw() / 1000.0  # every poll: a window's limit-mismatch flag reads it
            sample = Sample(
                t_s,
                power_w,
                avg_w,
                sm_mhz,
                mem_mhz,
                self.gpu.temperature_c(),
                self.gpu.clock_event_reasons(),
                self.gpu.total_energy_mj(),
                limit_w,
            )
        except GPUError as exc:
            if len(self.errors) < 20:
                self.errors.append(str(exc))
            return None
        self.samples.append(sample)
        return sample

    def window(self, t0_s: float, t1_s: float) -> list[Sample]:
        """Samples with t0_s <= t_s <= t1_s."""
        return [s for s in list(self.samples) if t0_s <= s.t_s <= t1_s]

    def integrate_power_j(self, t0_s: float, t1_s: float) -> float:
        """Trapezoid integral of instant power over [t0_s, t1_s], edges interpolated (or held). Units: J."""
        pts = [(s.t_s, s.power_w) for s in list(self.samples)]
        if not pts or t1_s <= t0_s:
            return 0.0
        inside = [(t, p) for t, p in pts if t0_s < t < t1_s]
        before = [(t, p) for t, p in pts if t <= t0_s]
        after = [(t, p) for t, p in pts if t >= t1_s]
        first_p = before[-1][1] if before else (inside[0][1] if inside else after[0][1])
        last_p = after[0][1] if after else (inside[-1][1] if inside else before[-1][1])
        # interpolate at the edges when bracketing samples exist, else hold the nearest value
        if before and (inside or after):
            t_a, p_a = before[-1]
            t_b, p_b = (inside or after)[0]
            first_p = p_a + (p_b - p_a) * (t0_s - t_a) / (t_b - t_a) if t_b > t_a else p_a
        if after and (inside or before):
            t_a, p_a = (inside or before)[-1]
            t_b, p_b = after[0]
            last_p = p_a + (p_b - p_a) * (t1_s - t_a) / (t_b - t_a) if t_b > t_a else p_b
        trace = [(t0_s, first_p), *inside, (t1_s, last_p)]
        return sum(0.5 * (p0 + p1) * (t1 - t0) for (t0, p0), (t1, p1) in zip(trace, trace[1:], strict=False))

    def summarize(self, t0_s: float, t1_s: float) -> dict[str, float | int | str | None]:
        """Window stats: mean power, SM and memory clocks, temperatures, throttled share, reasons seen, n_samples.

        Keys: mean_power_w, mean_sm_mhz, mean_mem_mhz, temp_start_c, temp_end_c, throttled_share, clock_reasons (the
        reasons seen in any sample, named), n_samples, and the shares of samples held down by thermal or hardware
        slowdowns (thermal_share) and by the power cap (power_cap_share), the lowest and highest enforced power limit
        read (limit_min_w, limit_max_w), and the longest stretch of the window without a sample (max_gap_s: between
        two samples, or between an edge and the sample nearest it; the integral interpolates over it). temp_start_c is
        the first sample at least TEMP_SETTLE_S into a window longer than twice that (the first sample of a shorter
        one).

        A window shorter than the period can fall between two polls: n_samples is 0, and the two samples around it
        (the edges `integrate_power_j` interpolates between; `wait_past` waits for the second) give its clocks and
        temperatures, if they are at most BRACKET_PERIODS periods apart. Otherwise (the sampler failed or skipped
        readings, or has not polled since) every value is None.
        """
        win = self.window(t0_s, t1_s)
        n = len(win)
        if not win:
            pts = list(self.samples)
            before = [s for s in pts if s.t_s < t0_s]
            after = [s for s in pts if s.t_s > t1_s]
            near = before and after and after[0].t_s - before[-1].t_s <= BRACKET_PERIODS * self.period_s
            win = [before[-1], after[0]] if near else []
        if not win:
            return {
                "mean_power_w": None,
                "mean_sm_mhz": None,
                "mean_mem_mhz": None,
                "temp_start_c": None,
                "temp_end_c": None,
                "throttled_share": None,
                "clock_reasons": "",
                "n_samples": 0,
                "thermal_share": None,
                "power_cap_share": None,
                "limit_min_w": None,
                "limit_max_w": None,
                "max_gap_s": None,
            }
        k = len(win)
        edges = [t0_s, *(s.t_s for s in win), t1_s] if n else [win[0].t_s, win[-1].t_s]  # (n = 0: the two around it)
        return {
            "mean_power_w": self.integrate_power_j(t0_s, t1_s) / (t1_s - t0_s) if t1_s > t0_s else win[0].power_w,
            "mean_sm_mhz": sum(s.sm_mhz for s in win) / k,
            "mean_mem_mhz": sum(s.mem_mhz for s in win) / k,
            "temp_start_c": _settled(win, t0_s, t1_s).temp_c,
            "temp_end_c": win[-1].temp_c,
            "throttled_share": sum(is_throttled(s.reasons) for s in win) / k,
            "clock_reasons": reason_names(functools.reduce(operator.or_, (s.reasons for s in win), 0)),
            "n_samples": n,
            "thermal_share": sum(bool(s.reasons & THERMAL_MASK) for s in win) / k,
            "power_cap_share": sum(bool(s.reasons & REASON_SW_POWER_CAP) for s in win) / k,
            "limit_min_w": min(s.limit_w for s in win),
            "limit_max_w": max(s.limit_w for s in win),
            "max_gap_s": max(b - a for a, b in zip(edges, edges[1:], strict=False)),
        }

    def jitter_ms(self) -> dict[str, float | int]:
        """Sample-interval jitter vs the period: mean/std/max interval and max |interval - period|, in ms."""
        ts = [s.t_s for s in list(self.samples)]
        gaps = [(b - a) * 1000.0 for a, b in zip(ts, ts[1:], strict=False)]
        if not gaps:
            return {"n_intervals": 0, "period_ms": self.period_s * 1000.0}
        return {
            "n_intervals": len(gaps),
            "period_ms": self.period_s * 1000.0,
            "mean_interval_ms": statistics.fmean(gaps),
            "std_interval_ms": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
            "max_interval_ms": max(gaps),
            "max_abs_jitter_ms": max(abs(g - self.period_s * 1000.0) for g in gaps),
        }


def _settled(win: Sequence[Sample], t0_s: float, t1_s: float) -> Sample:
    """The first sample of `win` at least TEMP_SETTLE_S after `t0_s` (the first one in a window under twice that)."""
    if t1_s - t0_s >= 2.0 * TEMP_SETTLE_S:
        for s in win:
            if s.t_s >= t0_s + TEMP_SETTLE_S:
                return s
    return win[0]
