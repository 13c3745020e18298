"""Where does HF transformers' decode time go? Profiles greedy decode steps of the HF backend.

Prints ms per token (wall), GPU kernel time per token, CUDA kernel launches per token and the ops that cost the most
host time, so "HF is slow" can be attributed (launch-bound host work vs GPU work vs a slow fallback).

    python experiments/profile_hf.py --model synthetic-0.8b --steps 8
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    """Load the HF backend, time decode, then profile a few steps."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="synthetic-0.8b")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from luce_bench.backends.hf import HFBackend
    from luce_bench.model.resolve import resolve_model

    backend = HFBackend()
    backend.load(resolve_model(args.model, progress=False), args.device)
    backend.reset()
    backend.prefill([1, 2, 3, 4])
    backend.decode(8)  # warm-up
    wall = backend.decode(32).elapsed_s / 32
    print(f"decode wall: {wall * 1e3:.2f} ms/token ({1 / wall:.1f} tok/s)")

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        backend.decode(args.steps)
    events = prof.key_averages()
    kernels = [e for e in events if getattr(e, "device_type", None) is not None and "CUDA" in str(e.device_type)]
    n_kernels = sum(e.count for e in kernels)
    gpu_us = sum(getattr(e, "self_device_time_total", 0) for e in kernels)
    print(
        f"CUDA kernels per token: {n_kernels / args.steps:.0f}; "
        f"GPU kernel time per token: {gpu_us / args.steps / 1e3:.2f} ms"
    )
    launches = Counter()
    for e in events:
        if e.key in (
            "cudaLaunchKernel",
            "cuLaunchKernel",
            "cudaLaunchKernelExC",
            "cudaMemcpyAsync",
            "cudaStreamSynchronize",
        ):
            launches[e.key] += e.count
    print("runtime calls per token:", {k: round(v / args.steps, 1) for k, v in launches.items()})
    print(events.table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    print("GDN path:", backend.info()["gdn_path"], backend.info()["torch_fallbacks"])
    t0 = time.perf_counter()
    torch.cuda.synchronize() if args.device.startswith("cuda") else None
    print(f"(sync {time.perf_counter() - t0:.4f} s)")


if __name__ == "__main__":
    main()
