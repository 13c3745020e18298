"""Where a decode step's time goes: per-block phase timestamps from the megakernel's trace (luce_mk.h, `trace`).

    python scripts/trace_megakernel.py [--steps 24] [--pos 64] [--seed N]

Runs one launch of `--steps` decode steps after a `--pos`-token prompt with the trace on (thread 0 of every block
stamps %globaltimer at each phase boundary, after a block barrier) and prints, per phase, the median over blocks
(averaged over the steps after the first 4), summed over the 18 GDN and the 6 attention layers, plus the skew at the
grid barriers (slowest block's arrival minus the median block's) and which blocks arrive last most often. The trace
adds a block barrier per point; the untraced launch time is printed for comparison.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_megakernel import make_backend, random_state_dict  # noqa: E402

NL = 24
SEG_GDN = [("P1 prologue (release -> x ready)", None, 0), ("P1 in_proj", 0, 1), ("item: wait for head rows + conv", 1, 4),
           ("item: recurrence + sibling wait", 4, 5), ("item: out_proj + adds", 5, 2),
           ("mixer barrier", 2, 3), ("P4 prologue", 3, 6), ("P4 gate/up", 6, 7), ("P4 down + adds", 7, 8),
           ("P4 barrier", 8, 9)]
SEG_FA = [("P1 prologue (release -> x ready)", None, 0), ("P1 qkv", 0, 1), ("mixer items", 1, 2),
          ("mixer barrier", 2, 3), ("P3 merge prologue", 3, 11), ("P3 o_proj", 11, 4), ("P3 barrier", 4, 5),
          ("P4 prologue", 5, 6),
          ("P4 gate/up", 6, 7), ("P4 down + adds", 7, 8), ("P4 barrier", 8, 9)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=24)
    ap.add_argument("--pos", type=int, default=64)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lib-dir", default=None)
    ap.add_argument("--flags", type=int, default=0, help="debug_flags for the traced launches (timing experiments)")
    args = ap.parse_args()
    import warnings

    import numpy as np
    import torch

    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)  # points a block never stamps

    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    sd = random_state_dict(seed)
    be = make_backend(sd, max_seq=args.pos + args.steps + 8, lib_dir=args.lib_dir)
    npts, grid = be._lib.luce_mk_trace_points(), be._launch.grid
    TR_L = (npts - 4) // NL
    prompt = torch.randint(0, 248320, (args.pos,), generator=torch.Generator().manual_seed(seed + 2)).tolist()

    def launch(trace):
        be.reset()
        be.prefill(prompt)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        be._run(args.steps, None, None, debug_flags=args.flags if trace is not None else 0, trace=trace)
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) * 1e3 / args.steps

    plain = sorted(launch(None) for _ in range(5))[2]
    buf = torch.zeros(args.steps * npts * grid, dtype=torch.int64, device="cuda")
    traced = sorted(launch(buf) for _ in range(3))[1]
    T = buf.view(args.steps, npts, grid).cpu().numpy().astype(np.float64) / 1e3  # us
    T[T == 0] = np.nan  # points a block never reaches (GDN item points on blocks without an item)
    print(f"seed {seed}; {torch.cuda.get_device_name()}; grid {grid}; untraced {plain:.1f} us/token, traced "
          f"{traced:.1f} us/token (last of 3 traced launches analysed, steps 4..{args.steps - 1})")
    step0 = NL * TR_L
    tot: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    skew: dict[str, list[float]] = collections.defaultdict(list)
    # attention items run on a few blocks only: per-block durations, median and slowest over the blocks with an item
    detail: dict[str, list[float]] = collections.defaultdict(list)
    last = collections.Counter()
    steps = range(4, args.steps)
    for s in steps:
        t = T[s] - np.nanmin(T[s, step0])
        med = np.nanmedian(t, axis=1)
        prev = med[step0]
        for l in range(NL):
            fa = l % 4 == 3
            for name, a, b in (SEG_FA if fa else SEG_GDN):
                start = prev if a is None else med[TR_L * l + a]
                tot[name][1 if fa else 0] += (med[TR_L * l + b] - start) / len(steps)
            if fa:
                for name, a, b in (("attention item: wait for group rows", 1, 10), ("attention item: work", 10, 2)):
                    d = t[TR_L * l + b] - t[TR_L * l + a]
                    if np.isfinite(d).any():
                        detail[name + " (median)"].append(float(np.nanmedian(d)))
                        detail[name + " (slowest)"].append(float(np.nanmax(d)))
            for name, k in (("mixer", 2), ("P3", 4), ("P4", 8)):
                if name == "P3" and not fa:
                    continue
                arr = t[TR_L * l + k]
                skew[name].append(np.nanmax(arr) - np.nanmedian(arr))
                if name == "P4":
                    last[int(np.nanargmax(arr))] += 1
            prev = med[TR_L * l + 9]
        for name, a, b in (("LM prologue", None, 1), ("LM head + argmax", 1, 2), ("LM barrier", 2, 3)):
            start = prev if a is None else med[step0 + a]
            tot[name][0] += (med[step0 + b] - start) / len(steps)
    step_us = float(np.mean([np.nanmedian(T[s, step0 + 3]) - np.nanmin(T[s, step0]) for s in steps]))
    print(f"\n{'segment':36s} {'18 GDN (us)':>12s} {'6 attn (us)':>12s} {'per GDN layer':>14s}")
    for name, (g, f) in tot.items():
        print(f"{name:36s} {g:12.1f} {f:12.1f} {g / 18:14.2f}")
    print(f"{'sum':36s} {sum(v[0] + v[1] for v in tot.values()):12.1f}   (step: {step_us:.1f} us)")
    for name, v in detail.items():
        print(f"{name:44s} {np.mean(v):8.2f} us per attention layer")
    print("\nbarrier arrival skew (slowest block - median block), us: " + ", ".join(
        f"{k} mean {np.mean(v):.2f} max {np.max(v):.2f}" for k, v in skew.items()))
    print("blocks arriving last at the P4 barrier most often: " + ", ".join(f"{b} ({n}x)" for b, n in last.most_common(8)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
