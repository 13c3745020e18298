"""The measurement loop shared by `compare`, `bench` and `sweep`.

Method (`measurement.md`): each test (llama-bench `pp<N>` / `tg<N>`) gets a time-based warm-up, then `reps`
repetitions. A repetition is one energy window of at least `window_s` that loops the test; before it opens and after
it closes the backend has synchronised its device, and the NVML total-energy counter is read at both edges. tok/s and
tok/J come from that same window (tokens / window seconds, tokens / counter joules). The sampler's instant power,
integrated over the window, cross-checks the counter. Random 0..`rep_gap_max_s` gaps between windows break phase
locking with the sensor's update period. A `tg<N>` iteration resets the sequence, feeds one seed token (not
counted) and times N greedy decode steps; a `pp<N>` iteration resets and times the prefill of N seeded token ids.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from luce_bench.backends.base import Backend, ModelSpec
from luce_bench.config import BenchConfig, TestSpec
from luce_bench.results import RunWriter, rfc3339

MIN_TRUSTED_WINDOW_S = 10.0
MAX_DISAGREE_PCT = 5.0
MAX_TEMP_DRIFT_C = 5.0


def make_prompt(n: int, vocab_size: int, seed: int) -> list[int]:
    """`n` seeded token ids in [0, vocab_size) (llama-bench uses random ids too)."""
    rng = random.Random(seed)
    return [rng.randrange(vocab_size) for _ in range(n)]


@dataclass
class Measure:
    """What measures energy in this run. `gpu`/`sampler` are None when NVML is unavailable (`energy_note` says why)."""

    gpu: Any = None
    sampler: Any = None
    rapl: Any = None
    energy_note: str = ""
    simulated: bool = False
    clock: Callable[[], float] = time.perf_counter
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Limit:
    """The power limit a block of tests runs under (requested and enforced, W), and its idle baseline."""

    requested_w: float | None = None
    enforced_w: float | None = None
    idle_power_w: float | None = None


def run_once(backend: Backend, test: TestSpec, prompt: Sequence[int]) -> tuple[int, float]:
    """One iteration of `test`: (tokens counted, timed seconds)."""
    backend.reset()
    if test.kind == "pp":
        return test.n, backend.prefill(prompt[: test.n]).elapsed_s
    backend.prefill(prompt[:1])
    return test.n, backend.decode(test.n).elapsed_s


@dataclass
class Runner:
    """Runs tests of loaded backends and records one row per repetition into `writer`."""

    cfg: BenchConfig
    model: ModelSpec
    measure: Measure
    writer: RunWriter
    on_progress: Callable[[str, int, int], None] | None = None  # (label, done, total)
    on_status: Callable[[str], None] | None = None  # one-line notes (cool-down waits)
    first_tokens: dict[str, list[int]] = field(default_factory=dict)
    _start_temp_c: float | None = None
    _drained: int = 0

    def run_backend(self, backend: Backend, limit: Limit | None = None) -> list[dict[str, Any]]:
        """All configured tests for one loaded backend; returns their rows."""
        rows: list[dict[str, Any]] = []
        for i, test in enumerate(self.cfg.test_specs):
            if i or self._start_temp_c is not None:
                self.cooldown()
            rows += self.run_test(backend, test, limit or Limit())
        return rows

    def run_test(self, backend: Backend, test: TestSpec, limit: Limit) -> list[dict[str, Any]]:
        """Warm up, then `reps` windows of `test`."""
        m = self.measure
        prompt = make_prompt(max(test.n, 1), self.model.config.vocab_size, self.cfg.prompt_seed)
        if self._start_temp_c is None and m.gpu is not None:
            self._start_temp_c = m.gpu.temperature_c()
        label = f"{backend.name} {test.name}"
        self._record_tokens(backend, test, prompt, label)
        self._warmup(backend, test, prompt)
        rows = []
        rng = random.Random(self.cfg.prompt_seed + test.n)
        for rep in range(self.cfg.reps):
            if self.on_progress:
                self.on_progress(label, rep, self.cfg.reps)
            if rep and self.cfg.rep_gap_max_s > 0:
                m.sleep(rng.uniform(0.0, self.cfg.rep_gap_max_s))
            row = self._window(backend, test, prompt, rep, limit)
            self.writer.add_run(row)
            self.flush_samples()
            rows.append(row)
        if self.on_progress:
            self.on_progress(label, self.cfg.reps, self.cfg.reps)
        return rows

    def flush_samples(self) -> None:
        sampler = self.measure.sampler
        if sampler is not None:
            new = list(sampler.samples[self._drained:])
            self._drained += len(new)
            self.writer.add_samples(new)

    def _record_tokens(self, backend: Backend, test: TestSpec, prompt: Sequence[int], label: str) -> None:
        # The greedy tokens of one tg run, kept in meta.json so backends can be checked against each other.
        if test.kind != "tg":
            return
        backend.reset()
        backend.prefill(prompt[:1])
        self.first_tokens[label] = list(backend.decode(min(test.n, 32)).tokens)

    def _warmup(self, backend: Backend, test: TestSpec, prompt: Sequence[int]) -> None:
        m = self.measure
        if m.gpu is not None:
            m.gpu.set_busy(True)
        t0 = m.clock()
        run_once(backend, test, prompt)
        while m.clock() - t0 < self.cfg.warmup_s:
            run_once(backend, test, prompt)
        if m.gpu is not None:
            m.gpu.set_busy(False)

    def _window(self, backend: Backend, test: TestSpec, prompt: Sequence[int], rep: int, limit: Limit) -> dict[str, Any]:
        m, gpu, sampler = self.measure, self.measure.gpu, self.measure.sampler
        tokens = iters = 0
        compute_s = 0.0
        if gpu is not None:
            gpu.set_busy(True)
        t_s0 = sampler.now_s() if sampler is not None else None
        e0 = gpu.total_energy_mj() if gpu is not None else None
        c0 = m.rapl.energy_uj() if m.rapl is not None else None
        w0 = m.clock()
        while True:
            n, dt = run_once(backend, test, prompt)
            tokens, iters, compute_s = tokens + n, iters + 1, compute_s + dt
            if m.clock() - w0 >= self.cfg.window_s:
                break
        window_s = m.clock() - w0
        e1 = gpu.total_energy_mj() if gpu is not None else None
        c1 = m.rapl.energy_uj() if m.rapl is not None else None
        t_s1 = sampler.now_s() if sampler is not None else None
        if gpu is not None:
            gpu.set_busy(False)
        row: dict[str, Any] = {
            "test_time": rfc3339(), "backend": backend.name, "model": self.model.name,
            "model_type": f"qwen35 {self.model.config.num_hidden_layers}L h{self.model.config.hidden_size}",
            "model_n_params": self.model.config.num_params(),
            "n_prompt": test.n if test.kind == "pp" else 0, "n_gen": test.n if test.kind == "tg" else 0,
            "test": test.name, "rep": rep, "power_limit_req_w": limit.requested_w, "power_limit_w": limit.enforced_w,
            "iterations": iters, "n_tokens": tokens, "window_s": window_s, "compute_s": compute_s,
            "avg_ts": tokens / window_s, "timed_ts": tokens / compute_s if compute_s > 0 else None,
            "idle_power_w": limit.idle_power_w, "device": backend.device_kind, "gpu_simulated": m.simulated,
            "t_start_s": t_s0, "t_end_s": t_s1, "energy_note": m.energy_note,
            "cpu_energy_j": _rapl_delta_j(m.rapl, c0, c1),
        }
        row.update(self._energy_fields(e0, e1, tokens, window_s, t_s0, t_s1, limit))
        return row

    def _energy_fields(self, e0: Any, e1: Any, tokens: int, window_s: float, t_s0: Any, t_s1: Any,
                       limit: Limit) -> dict[str, Any]:
        flags = [] if window_s >= MIN_TRUSTED_WINDOW_S else ["short-window"]
        if e0 is None or e1 is None:
            return {"valid": False, "verdict": ";".join(flags + ["no-energy"])}
        energy_j = (e1 - e0) / 1000.0
        out: dict[str, Any] = {"energy_j": energy_j}
        sampler = self.measure.sampler
        if sampler is not None:
            s = sampler.summarize(t_s0, t_s1)
            sampled_j = sampler.integrate_power_j(t_s0, t_s1)
            out.update(mean_sm_mhz=s.get("mean_sm_mhz"), mean_mem_mhz=s.get("mean_mem_mhz"),
                       temp_start_c=s.get("temp_start_c"), temp_end_c=s.get("temp_end_c"),
                       throttled_share=s.get("throttled_share"), n_samples=s.get("n_samples"),
                       sampled_energy_j=sampled_j)
            if energy_j > 0 and sampled_j and sampled_j > 0:
                out["counter_vs_sampled_pct"] = 100.0 * (sampled_j - energy_j) / energy_j
                if abs(out["counter_vs_sampled_pct"]) > MAX_DISAGREE_PCT:
                    flags.append("power-disagree")
            ts, te = s.get("temp_start_c"), s.get("temp_end_c")
            if ts is not None and te is not None and abs(te - ts) > MAX_TEMP_DRIFT_C:
                flags.append("temp-drift")
        if energy_j <= 0:
            out.update(valid=False, verdict=";".join(flags + ["energy-invalid"]))
            return out
        out.update(tok_per_j=tokens / energy_j, j_per_tok=energy_j / tokens, mean_power_w=energy_j / window_s,
                   valid=True, verdict=";".join(flags) or "ok")
        if limit.idle_power_w is not None:
            net_j = energy_j - limit.idle_power_w * window_s
            out["net_tok_per_j"] = tokens / net_j if net_j > 0 else None
        return out

    def cooldown(self) -> None:
        """Wait until the GPU is within `target_delta_c` of the run's start temperature, at most `max_s`."""
        gpu, m = self.measure.gpu, self.measure
        if gpu is None or self._start_temp_c is None or self.cfg.cooldown.max_s <= 0:
            return
        t0 = m.clock()
        target_c = self._start_temp_c + self.cfg.cooldown.target_delta_c
        temp_c = gpu.temperature_c()
        if temp_c > target_c and self.on_status:
            self.on_status(f"cooling down: {temp_c:g} °C -> <= {target_c:g} °C (at most {self.cfg.cooldown.max_s:g} s)")
        while temp_c > target_c:
            if m.clock() - t0 >= self.cfg.cooldown.max_s:
                break
            m.sleep(min(0.5, self.cfg.cooldown.max_s))
            temp_c = gpu.temperature_c()

    def measure_idle(self, duration_s: float) -> float | None:
        """Idle draw (W) from the energy counter over `duration_s` with the model resident; None without NVML."""
        gpu, m = self.measure.gpu, self.measure
        if gpu is None or duration_s <= 0:
            return None
        e0, t0 = gpu.total_energy_mj(), m.clock()
        m.sleep(duration_s)
        e1, t1 = gpu.total_energy_mj(), m.clock()
        return (e1 - e0) / 1000.0 / (t1 - t0) if t1 > t0 and e1 > e0 else None


def _rapl_delta_j(rapl: Any, c0: Any, c1: Any) -> float | None:
    """CPU package energy between two RAPL readings (µJ), handling one counter wrap."""
    if rapl is None or c0 is None or c1 is None:
        return None
    d = c1 - c0
    if d < 0:
        d += getattr(rapl, "max_energy_range_uj", 0) or 0
    return d / 1e6 if d >= 0 else None
