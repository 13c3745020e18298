#!/usr/bin/env python3
"""Sampler overhead: throughput of a fixed workload with and without the 100 ms sampler thread (target: < 1 %).

Trials alternate off/on (ABBA order, so slow drift cancels); each trial runs the workload for `--seconds` and counts
units of work (tokens for a backend, iterations for a CPU workload). The overhead is 1 - mean(on) / mean(off), with a
95 % t-interval over the paired trials. Workloads:
* `numpy`: 256x256 float32 matmuls (releases the GIL, like CUDA launches waiting on the device);
* `python`: a pure-Python loop that holds the GIL (the worst case for a sampler thread);
* `backend`: a luce-bench backend running `--test` (e.g. `--backend hf --test tg128`; on the GPU host).
The sampler reads the real GPU read-only (NVML) unless `--fake-gpu`; without a GPU it falls back to the FakeGPU.

    python experiments/bench_sampler_overhead.py --workload numpy --workload python        # CPU, here
    LUCE_BENCH_READONLY=1 python experiments/bench_sampler_overhead.py --workload backend --backend hf \
        --model synthetic-0.8b --test tg128 --seconds 10 --trials 6                      # GPU host
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread: less noise, and the sampler competes for the same core

from luce_bench.sampler import Sampler  # noqa: E402
from luce_bench.stats import describe  # noqa: E402


def numpy_workload() -> Callable[[], int]:
    """One unit = one 256x256 matmul."""
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.random((256, 256), dtype=np.float32), rng.random((256, 256), dtype=np.float32)

    def step() -> int:
        (a @ b).sum()
        return 1

    return step


def python_workload() -> Callable[[], int]:
    """One unit = a 20k-iteration pure-Python loop (holds the GIL)."""

    def step() -> int:
        acc = 0
        for i in range(20_000):
            acc += i * i % 7
        return 1

    return step


def backend_workload(name: str, model: str, test: str, device: str) -> Callable[[], int]:
    """One unit = one token of `test` on backend `name` (loaded once)."""
    from luce_bench.backends import get
    from luce_bench.config import TestSpec
    from luce_bench.measure import make_prompt, run_once
    from luce_bench.model.resolve import resolve_model

    spec = resolve_model(model)
    backend = get(name)()
    backend.load(spec, device)
    t = TestSpec.parse(test)
    prompt = make_prompt(max(t.n, 1), spec.config.vocab_size, 1234)
    return lambda: run_once(backend, t, prompt)[0]


def trial(step: Callable[[], int], seconds: float, sampler: Sampler | None) -> float:
    """Units per second over one trial (sampler running when given)."""
    if sampler is not None:
        sampler.start()
    try:
        units, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds:
            units += step()
    finally:
        if sampler is not None:
            sampler.stop()
    return units / elapsed


def poll_cost_us(gpu: object, n: int = 2000) -> float:
    """CPU time of one sampler poll (all reads it makes), in microseconds: the sampler's duty is cost / period."""
    sampler = Sampler(gpu, period_s=0.1)
    t0 = time.thread_time()
    for _ in range(n):
        sampler.poll_once()
    return (time.thread_time() - t0) / n * 1e6


def measure(step: Callable[[], int], gpu: object, seconds: float, trials: int, period_s: float) -> dict[str, object]:
    """Alternating off/on trials; returns per-condition rates, the paired overhead and the sampler's jitter."""
    step()  # warm-up
    off: list[float] = []
    on: list[float] = []
    jitter: dict[str, float] = {}
    for i in range(trials):
        order = (False, True) if i % 2 == 0 else (True, False)  # ABBA
        for with_sampler in order:
            sampler = Sampler(gpu, period_s=period_s) if with_sampler else None
            (on if with_sampler else off).append(trial(step, seconds, sampler))
            if sampler is not None:
                jitter = sampler.jitter_ms()
    paired = [100.0 * (1.0 - b / a) for a, b in zip(off, on, strict=False)]
    d = describe(paired)
    return {
        "rate_off": statistics.fmean(off),
        "rate_on": statistics.fmean(on),
        "overhead_pct": 100.0 * (1.0 - statistics.fmean(on) / statistics.fmean(off)),
        "overhead_ci95_pct": [d.ci95_lo, d.ci95_hi],
        "paired_overhead_pct": paired,
        "sampler_jitter_ms": jitter,
    }


def main() -> int:
    """Run the benchmark; exit 1 if any workload's overhead is 1 % or more."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--workload",
        action="append",
        choices=["numpy", "python", "backend"],
        help="repeatable; default: numpy and python",
    )
    p.add_argument("--backend", default="hf")
    p.add_argument("--model", default="tiny")
    p.add_argument("--test", default="tg128")
    p.add_argument("--device", default="auto")
    p.add_argument("--seconds", type=float, default=3.0, help="length of one trial")
    p.add_argument("--trials", type=int, default=6, help="trials per condition")
    p.add_argument("--period-s", type=float, default=0.1)
    p.add_argument("--fake-gpu", action="store_true", help="sample the simulated GPU")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args()

    from luce_bench.gpu import GPUError, open_gpu

    try:
        gpu = open_gpu(0, fake_preset="rtx3090" if args.fake_gpu else None, read_only=True)
        source = "FakeGPU" if args.fake_gpu else f"NVML: {gpu.name()}"
    except GPUError as exc:
        gpu, source = open_gpu(0, fake_preset="rtx3090", read_only=True), f"FakeGPU (no NVML: {exc})"
    makers = {
        "numpy": numpy_workload,
        "python": python_workload,
        "backend": lambda: backend_workload(args.backend, args.model, args.test, args.device),
    }
    results: dict[str, object] = {}
    cost_us = poll_cost_us(gpu)
    duty_pct = 100.0 * cost_us * 1e-6 / args.period_s
    print(f"sampler period {args.period_s} s on {source}; {args.trials} trials x {args.seconds} s per condition")
    print(
        f"one poll costs {cost_us:.0f} us of CPU: the sampler thread's duty is {duty_pct:.3f} % of one core "
        "(mostly inside NVML with the GIL released; the verdict is the measured A/B slowdown)"
    )
    for name in args.workload or ["numpy", "python"]:
        r = measure(makers[name](), gpu, args.seconds, args.trials, args.period_s)
        results[name] = r
        lo, hi = r["overhead_ci95_pct"]
        ci = f"[{lo:+.2f}, {hi:+.2f}] %" if math.isfinite(lo) else "n/a"
        verdict = "PASS" if _passes(r, duty_pct) else "FAIL"
        print(
            f"{name:8s} off {r['rate_off']:10.2f}/s  on {r['rate_on']:10.2f}/s  overhead {r['overhead_pct']:+.2f} % "
            f"(95 % CI {ci})  jitter max {r['sampler_jitter_ms'].get('max_abs_jitter_ms', math.nan):.1f} ms  {verdict}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "source": source,
                    "period_s": args.period_s,
                    "poll_cost_us": cost_us,
                    "duty_pct": duty_pct,
                    "results": results,
                },
                indent=2,
            )
        )
    return 0 if all(_passes(r, duty_pct) for r in results.values()) else 1


def _passes(r: dict, duty_pct: float) -> bool:
    """Under 1 %: the upper end of the 95 % CI of the measured A/B slowdown is below 1 %.

    The poll's CPU duty is reported but not judged: on the H100 VM one poll took 4 ms of thread CPU time, nearly all of
    it inside NVML's ioctls with the GIL released (ctypes), so it is no measure of what the workload loses.
    """
    hi = r["overhead_ci95_pct"][1]
    return (hi if math.isfinite(hi) else r["overhead_pct"]) < 1.0


if __name__ == "__main__":
    sys.exit(main())
