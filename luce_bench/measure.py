"""Measuring one test of a loaded backend: warm-up, then `reps` energy windows, each one `RunRecord`.

Method (`measurement.md`): each test (llama-bench `pp<N>` / `tg<N>`) gets a time-based warm-up, then `reps`
repetitions. A repetition is one energy window of at least `window_s` that loops the test; before it opens and after
it closes the backend has synchronised its device, and the NVML total-energy counter is read at both edges. tok/s and
tok/J come from that same window (tokens / window seconds, tokens / counter joules). The sampler's instant power,
integrated over the window, cross-checks the counter. Random 0..`rep_gap_max_s` gaps between windows break phase
locking with the sensor's update period. A `tg<N>` iteration resets the sequence and times N one-token forward
steps, the first feeding a seed token and each later one the previous argmax, as llama-bench's tg
(`config.TG_ITERATION`; before 2026-12-06 a seed step ran first, untimed but inside the window: N + 1 steps for N
tokens); a `pp<N>` iteration resets and times the prefill of N seeded token ids.
A depth test (`tg128@d4096`, llama-bench's `-d`) prefills its D context tokens once, unmeasured, before its warm-up,
and the backend keeps that state (`save_context`); each iteration then goes back to it (`restore_context`, a copy of
the state, inside the window like a reset) and times only the N prompt tokens or decode steps that follow.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from luce_bench import quality
from luce_bench.backends.base import Backend, ModelSpec, StepResult
from luce_bench.clock import Clock, rfc3339
from luce_bench.config import TestSpec
from luce_bench.context import RunContext
from luce_bench.deadline import deadline
from luce_bench.gpu.base import GPU
from luce_bench.records import RunRecord
from luce_bench.sampler import Sampler

# Unmeasured work between a repetition's random gap and its window: the energy counter read at the start edge is up to
# one tick (~100 ms) old, and that stale stretch must be load, as at the end edge, not the gap's lower draw. Units: s.
PREROLL_S = 0.2

# The idle baseline: its unmeasured start after the settling under load, and how its edges find the energy counter's
# tick (NVML's counter moves about every 100 ms; measurement.md, rule 4). Units: s.
IDLE_DRAIN_S = 1.0
TICK_POLL_S = 0.002
TICK_WAIT_S = 0.25


def _no_deadline() -> None:
    """Outside a test (settling at a new setting) there is no deadline."""


def make_prompt(n: int, vocab_size: int, seed: int) -> list[int]:
    """`n` seeded token ids in [0, vocab_size) (llama-bench uses random ids too)."""
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(n)]


def prepare_context(backend: Backend, test: TestSpec, prompt: Sequence[int]) -> None:
    """Before a depth test: prefill its context (the prompt's first `test.depth` ids, not measured) and keep it."""
    if test.depth:
        backend.reset()
        backend.prefill(prompt[: test.depth])
        backend.save_context()


def start_iteration(backend: Backend, test: TestSpec, prompt: Sequence[int]) -> None:
    """The unmeasured start of an iteration: back to a depth test's context, else a new sequence."""
    if test.depth:
        backend.restore_context()
    else:
        backend.reset()


def generate_tokens(backend: Backend, test: TestSpec, prompt: Sequence[int], n: int) -> StepResult:
    """The StepResult of a tg iteration's first n steps, after `start_iteration`.

    At a depth they continue the kept context; else they start from a new sequence's seed token, the prompt's first id.
    """
    return backend.decode(n) if test.depth else backend.generate(prompt[0], n)


def run_once(backend: Backend, test: TestSpec, prompt: Sequence[int]) -> tuple[int, float]:
    """One iteration of `test`: (tokens counted, timed seconds). A depth test needs `prepare_context` first."""
    start_iteration(backend, test, prompt)
    if test.kind == "pp":
        return test.n, backend.prefill(prompt[test.depth : test.depth + test.n]).elapsed_s
    return test.n, generate_tokens(backend, test, prompt, test.n).elapsed_s


@dataclass(frozen=True)
class Conditions:
    """What a block of tests runs under: power limit, SM clock lock, and the idle baseline measured there.

    Limits and idle power in W; clocks in MHz (None: not locked by luce-bench).
    """

    requested_w: float | None = None
    enforced_w: float | None = None
    idle_power_w: float | None = None
    sm_clock_req_mhz: int | None = None
    sm_clock_mhz: int | None = None
    start_limit_w: float | None = None  # the limit in force when the run began (where it sets none, the row's)


def _expected_limit_w(limit: Conditions) -> float | None:
    """The power limit a row names: the one the run set, else the one in force when the run began. Units: W."""
    if limit.requested_w is not None:
        return limit.requested_w
    return limit.start_limit_w if limit.start_limit_w is not None else limit.enforced_w


@dataclass
class Edge:
    """Readings at one edge of an energy window."""

    t_s: float | None  # sampler time
    energy_mj: int | None  # NVML counter
    cpu_uj: list[int] | None  # RAPL counters
    violation_ns: dict[str, int] | None = None  # NVML's violation counters that are readable (GPU.violation_ns)


@dataclass
class Meter:
    """Runs tests of loaded backends on the run's GPU and clock; every finished repetition goes to `on_record`."""

    ctx: RunContext
    model: ModelSpec
    sampler: Sampler | None
    on_record: Callable[[RunRecord], None]
    on_progress: Callable[[str, int, int], None] = lambda label, done, total: None
    on_status: Callable[[str], None] = lambda msg: None
    first_tokens: dict[str, list[int]] = field(default_factory=dict)  # greedy tokens of each tg test, for agreement
    start_temp_c: float | None = None
    violations_failed: bool = False  # NVML's violation counters failed once (said once)
    _check: Callable[[], None] = field(default=_no_deadline, repr=False)  # the running test's deadline check

    def prompt(self, test: TestSpec) -> list[int]:
        """The seeded prompt of `test`: its context first (depth tests), then its own tokens."""
        return make_prompt(test.depth + max(test.n, 1), self.model.config.vocab_size, self.ctx.cfg.prompt_seed)

    def run_test(
        self, backend: Backend, test: TestSpec, limit: Conditions, reps: Sequence[int] | None = None
    ) -> list[RunRecord]:
        """Warm up, then one window of `test` per repetition index in `reps` (default: all of `cfg.reps`).

        The whole test has `cfg.test_deadline_s` (deadline.py): past it, TrialTimeout; the window in progress is lost.
        With the automatic deadline, a backend whose first iteration is slow gets 3x that iteration per window more.
        """
        cfg, clock, gpu = self.ctx.cfg, self.ctx.clock, self.ctx.gpu
        todo = list(range(cfg.reps)) if reps is None else list(reps)
        prompt = self.prompt(test)
        label = f"{backend.name} {test.name}"
        records: list[RunRecord] = []
        with deadline(cfg.test_deadline_s, clock, label) as due:
            self._check = due.check
            try:
                if self.start_temp_c is None and gpu is not None:
                    self.start_temp_c = gpu.temperature_c()
                prepare_context(backend, test, prompt)
                self._check()
                self._record_tokens(backend, test, prompt, label)
                per_window = 3.0 * (len(todo) + 1)  # a slow backend's windows last at least one iteration each
                grow = (lambda first_s: due.extend(per_window * first_s)) if cfg.test_timeout_s == 0 else None
                self.loop(backend, test, prompt, cfg.warmup_s, True, on_first=grow, context_ready=True)
                rng = random.Random(cfg.prompt_seed + test.n + test.depth)
                for i, rep in enumerate(todo):
                    self.on_progress(label, rep, cfg.reps)
                    if i and cfg.rep_gap_max_s > 0:
                        clock.sleep(rng.uniform(0.0, cfg.rep_gap_max_s))
                        self.loop(backend, test, prompt, PREROLL_S, True, context_ready=True)
                    record = self._window(backend, test, prompt, rep, limit)
                    self.on_record(record)
                    records.append(record)
            finally:
                self._check = _no_deadline
        self.on_progress(label, cfg.reps, cfg.reps)
        return records

    def loop(
        self,
        backend: Backend,
        test: TestSpec,
        prompt: Sequence[int],
        seconds: float,
        at_least_once: bool,
        on_first: Callable[[float], None] | None = None,
        context_ready: bool = False,
    ) -> None:
        """Run `test` for `seconds` (not measured): a warm-up, or settling at a new setting.

        `on_first` gets the duration of the first iteration (the automatic deadline grows for a slow backend). A depth
        test's context is prefilled first unless `context_ready`.
        """
        clock = self.ctx.clock
        if not context_ready:
            prepare_context(backend, test, prompt)
        t0 = clock.now_s()
        if at_least_once:
            run_once(backend, test, prompt)
            if on_first is not None:
                on_first(clock.now_s() - t0)
            self._check()
        while clock.now_s() - t0 < seconds:
            run_once(backend, test, prompt)
            self._check()

    def _record_tokens(self, backend: Backend, test: TestSpec, prompt: Sequence[int], label: str) -> None:
        if test.kind == "tg" and not backend.simulated:  # a simulation's pseudo tokens agree with nothing
            start_iteration(backend, test, prompt)
            self.first_tokens[label] = list(generate_tokens(backend, test, prompt, min(test.n, 32)).tokens)

    def _edge(self, start: bool) -> Edge:
        """The readings at a window's edge.

        The violation counters are read outside the energy's span: before the energy counter at the start, after it
        at the end (an NVML call inside the span would add its time and draw to no work).
        """
        rapl, gpu, sampler = self.ctx.rapl, self.ctx.gpu, self.sampler
        edge = Edge(
            violation_ns=self._violations() if start else None,
            t_s=sampler.now_s() if sampler is not None else None,
            energy_mj=gpu.total_energy_mj() if gpu is not None else None,
            cpu_uj=rapl.read_uj() if rapl is not None else None,
        )
        if not start:
            edge.violation_ns = self._violations()
        return edge

    def _violations(self) -> dict[str, int] | None:
        """NVML's violation counters at a window's edge, or None where the card fails to give them.

        They are telemetry beside the energy: a failure leaves the window's two shares empty and is said once (the
        energy counter, read just before, is what stops a run on a lost GPU).
        """
        gpu = self.ctx.gpu
        if gpu is None:
            return None
        try:
            return gpu.violation_ns()
        except Exception as exc:  # noqa: BLE001 - any failure of optional telemetry (GPUError, a binding's own)
            if not self.violations_failed:
                self.violations_failed = True
                self.on_status(
                    f"NVML's violation counters could not be read ({exc}): power_cap_pct and thermal_pct stay "
                    "empty in the windows where they fail"
                )
            return None

    def _window(
        self, backend: Backend, test: TestSpec, prompt: Sequence[int], rep: int, limit: Conditions
    ) -> RunRecord:
        clock, window_s = self.ctx.clock, self.ctx.cfg.window_s
        tokens = iters = 0
        compute_s = 0.0
        start = self._edge(start=True)
        w0 = clock.now_s()
        while True:
            n, dt = run_once(backend, test, prompt)
            self._check()
            tokens, iters, compute_s = tokens + n, iters + 1, compute_s + dt
            if clock.now_s() - w0 >= window_s:
                break
        elapsed_s = clock.now_s() - w0
        end = self._edge(start=False)
        cfg = self.model.config
        return RunRecord(
            test_time=rfc3339(clock.unix_s()),
            backend=backend.name,
            model=self.model.name,
            model_type=f"qwen35 {cfg.num_hidden_layers}L h{cfg.hidden_size}",
            model_n_params=cfg.num_params(),
            n_prompt=test.n if test.kind == "pp" else 0,
            n_gen=test.n if test.kind == "tg" else 0,
            n_depth=test.depth,
            test=test.name,
            rep=rep,
            power_limit_req_w=limit.requested_w,
            power_limit_w=limit.enforced_w,
            sm_clock_req_mhz=limit.sm_clock_req_mhz,
            sm_clock_mhz=limit.sm_clock_mhz,
            iterations=iters,
            n_tokens=tokens,
            window_s=elapsed_s,
            compute_s=compute_s,
            avg_ts=tokens / elapsed_s,
            timed_ts=tokens / compute_s if compute_s > 0 else None,
            idle_power_w=limit.idle_power_w,
            device=backend.device_kind,
            gpu_simulated=self.ctx.fake_gpu is not None,
            t_start_s=start.t_s,
            t_end_s=end.t_s,
            energy_note=self.ctx.energy_note,
            cpu_energy_j=self._cpu_j(start, end),
            **violation_pct(start, end, elapsed_s),
            **self._energy(start, end, tokens, elapsed_s, limit),
        )

    def _cpu_j(self, start: Edge, end: Edge) -> float | None:
        rapl = self.ctx.rapl
        if rapl is None or start.cpu_uj is None or end.cpu_uj is None:
            return None
        return rapl.delta_uj(start.cpu_uj, end.cpu_uj) / 1e6

    def _energy(self, start: Edge, end: Edge, tokens: int, window_s: float, limit: Conditions) -> dict[str, Any]:
        """Energy, power, sampler cross-check and the quality verdict of one window (quality.py, rule 13)."""
        flags = quality.window_flags(window_s)
        if start.energy_mj is None or end.energy_mj is None:
            return {"valid": False, "verdict": quality.verdict([*flags, quality.NO_ENERGY])}
        energy_j = (end.energy_mj - start.energy_mj) / 1000.0
        out: dict[str, Any] = {"energy_j": energy_j}
        if self.sampler is not None and start.t_s is not None and end.t_s is not None:
            out.update(self._sampled(start.t_s, end.t_s, energy_j, flags, limit))
        else:
            flags += quality.limit_flags(_expected_limit_w(limit), limit.enforced_w, {})
        bad = quality.energy_flag(energy_j)
        if bad is not None:
            out.update(valid=False, verdict=quality.verdict([*flags, bad]))
            return out
        out.update(
            tok_per_j=tokens / energy_j,
            j_per_tok=energy_j / tokens,
            mean_power_w=energy_j / window_s,
            valid=True,
            verdict=quality.verdict(flags),
        )
        if limit.idle_power_w is not None:
            net_j = energy_j - limit.idle_power_w * window_s
            out["net_tok_per_j"] = tokens / net_j if net_j > 0 else None
        return out

    def _sampled(
        self, t0_s: float, t1_s: float, energy_j: float, flags: list[str], limit: Conditions
    ) -> dict[str, Any]:
        assert self.sampler is not None
        s = self.sampler.summarize(t0_s, t1_s)
        if not s["n_samples"]:  # shorter than the period, between two polls: the one after it, then again
            self.sampler.wait_past(t1_s)
            s = self.sampler.summarize(t0_s, t1_s)
        # (the integral summarize averaged; no samples in or around the window: a value held from before a failure is
        # not a cross-check)
        mean_w = s["mean_power_w"]
        sampled_j = None if mean_w is None else mean_w * (t1_s - t0_s) if t1_s > t0_s else 0.0
        out: dict[str, Any] = {
            "mean_sm_mhz": s["mean_sm_mhz"],
            "mean_mem_mhz": s["mean_mem_mhz"],
            "temp_start_c": s["temp_start_c"],
            "temp_end_c": s["temp_end_c"],
            "throttled_share": s["throttled_share"],
            "clock_reasons": s["clock_reasons"],
            "n_samples": s["n_samples"],
            "max_sample_gap_s": s["max_gap_s"],
            "sampled_energy_j": sampled_j,
        }
        if energy_j > 0 and sampled_j and sampled_j > 0:
            out["counter_vs_sampled_pct"] = 100.0 * (sampled_j - energy_j) / energy_j
        disagree_pct, limit_set = out.get("counter_vs_sampled_pct"), limit.requested_w is not None
        window = {"window_s": t1_s - t0_s, "period_s": self.sampler.period_s}
        flags += quality.sampled_flags(s, disagree_pct, limit_set, _expected_limit_w(limit), limit.enforced_w, **window)
        return out

    def cooldown(self) -> None:
        """Wait until the GPU is within `target_delta_c` of the run's start temperature, at most `max_s`."""
        gpu, clock, cool = self.ctx.gpu, self.ctx.clock, self.ctx.cfg.cooldown
        if gpu is None or self.start_temp_c is None or cool.max_s <= 0:
            return
        t0 = clock.now_s()
        target_c = self.start_temp_c + cool.target_delta_c
        temp_c = gpu.temperature_c()
        if temp_c > target_c:
            self.on_status(f"cooling down: {temp_c:g} °C -> <= {target_c:g} °C (at most {cool.max_s:g} s)")
        while temp_c > target_c and clock.now_s() - t0 < cool.max_s:
            clock.sleep(min(0.5, cool.max_s))
            temp_c = gpu.temperature_c()

    def idle_power_w(self, duration_s: float) -> float | None:
        """Idle draw from the energy counter over `duration_s` with the models resident; None without NVML. Units: W.

        It follows the settling under load, so its first stretch (`IDLE_DRAIN_S`, at most a quarter of `duration_s`)
        is not measured: the GPU's draw falls for a while after the work stops, and a counter read at once still lacks
        up to one tick of the load's energy, which the window would then count as idle. Both edges are then taken
        where the counter ticks (`_counter_tick`), so neither is stale by part of a tick.
        """
        gpu, clock = self.ctx.gpu, self.ctx.clock
        if gpu is None or duration_s <= 0:
            return None
        start_s = clock.now_s()
        clock.sleep(min(IDLE_DRAIN_S, duration_s / 4))
        e0, t0 = _counter_tick(gpu, clock)
        clock.sleep(max(duration_s - (clock.now_s() - start_s), 0.0))
        e1, t1 = _counter_tick(gpu, clock)
        return (e1 - e0) / 1000.0 / (t1 - t0) if t1 > t0 and e1 > e0 else None


# Which of NVML's violation counters make each share of the window (measurement.md, rule 13). Software and hardware
# thermal slowdown may be counted over the same time, so thermal_pct is the longer of the two: exact where one holds
# the other, at least the true share otherwise.
VIOLATION_COLUMNS = {"power_cap_pct": ("power_cap",), "thermal_pct": ("sw_thermal", "hw_thermal")}


def violation_pct(start: Edge, end: Edge, window_s: float) -> dict[str, float]:
    """The window's share under each violation (power_cap_pct, thermal_pct), from the counters read at both edges.

    A column whose counters are not all readable at both edges is left out (None in the row). Units: %.
    """
    a, b = start.violation_ns or {}, end.violation_ns or {}
    out = {}
    for column, names in VIOLATION_COLUMNS.items():
        if window_s > 0 and all(n in a and n in b for n in names):
            held_ns = max(b[n] - a[n] for n in names)
            out[column] = min(max(100.0 * held_ns / 1e9 / window_s, 0.0), 100.0)
    return out


def _counter_tick(gpu: GPU, clock: Clock) -> tuple[int, float]:
    """The energy counter at its next tick, and when that tick came. Units: mJ, s.

    The tick is timed as the middle of the last poll that saw the old value and the first that saw the new one
    (`TICK_POLL_S` apart), so both edges of a window are off by at most half that, either way. A counter that does
    not move within `TICK_WAIT_S` is taken as it is, now.
    """
    e, t_before = gpu.total_energy_mj(), clock.now_s()
    t_end = t_before + TICK_WAIT_S
    while clock.now_s() < t_end:
        clock.sleep(TICK_POLL_S)
        now, t_now = gpu.total_energy_mj(), clock.now_s()
        if now != e:
            return now, (t_before + t_now) / 2
        t_before = t_now
    return e, clock.now_s()
