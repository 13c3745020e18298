"""Build kernel variants (MK_* build options) and compare them in one process on the local GPU.

    python scripts/bench_variants.py --variant base: --variant lead128:MK_L2LEAD=131072 [--reps 10] [--breakdown base]

Each variant: teacher-forced logits of a 192-token sequence vs the fp32 reference (computed once for all variants),
then tg128 at position 64 (`--reps` timed launches, CUDA events) and at `--long` (3 launches). Variants alternate
in rounds (`--rounds`), so slow drift of clocks or temperature hits them all alike; medians over all rounds are
printed last. Results are invalid as energy numbers; this is a kernel-speed tool.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_megakernel import FLOOR_BYTES, BW_MEASURED, make_backend, random_state_dict, time_decode  # noqa: E402


def parse_variant(text: str) -> tuple[str, dict[str, int]]:
    name, _, rest = text.partition(":")
    defines = {}
    for d in filter(None, rest.split(",")):
        k, _, v = d.partition("=")
        defines[k] = int(v or "1", 0)
    return name, defines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True, help="NAME:MK_A=1,MK_B=2 (NAME: alone = defaults)")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--long", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--breakdown", default=None, help="variant to run the debug-flag breakdown on")
    ap.add_argument("--out", default="/tmp/mk-variants")
    ap.add_argument("--prebuilt", action="append", default=[], metavar="NAME=DIR",
                    help="also run a library built elsewhere (DIR holds libluce_mk.so + ptxas.txt; same ABI)")
    args = ap.parse_args()
    import numpy as np
    import torch

    from luce_bench.kernels.build import build
    from luce_bench.kernels.reference import Reference
    from luce_bench.model.spec import QWEN35_08B

    variants = [parse_variant(v) for v in args.variant]
    t0 = time.time()
    with ThreadPoolExecutor(max_workers=8) as ex:
        builds = list(ex.map(lambda v: build(out_dir=Path(args.out) / v[0], defines=v[1], force=True), variants))
    lib_dirs = {name: str(Path(args.out) / name) for name, _ in variants}
    for item in args.prebuilt:
        name, _, d = item.partition("=")
        lib_dirs[name] = d
        variants.append((name, {"prebuilt": d}))
    for (name, d), b in zip(variants, builds):
        r = [x for x in b.reports if "decode_kernel" in x.function][0]
        print(f"built {name} {d}: {r.registers} regs, {r.spill_stores} B spill stores, {r.stack_bytes} B stack", flush=True)
    print(f"builds took {time.time() - t0:.1f}s", flush=True)

    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    print(f"seed {seed}; device {torch.cuda.get_device_name()}", flush=True)
    sd = random_state_dict(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    toks = torch.randint(0, QWEN35_08B.vocab_size, (192,), generator=gen).tolist()
    ref = Reference(sd, QWEN35_08B, "cuda")
    rl = np.stack([ref.step(t).float().cpu().numpy() for t in toks])
    del ref
    torch.cuda.empty_cache()
    gen = torch.Generator().manual_seed(seed + 2)
    short = torch.randint(0, 248320, (64,), generator=gen).tolist()
    long_ = torch.randint(0, 248320, (args.long,), generator=gen).tolist() if args.long else None
    res: dict[str, dict[str, list[float]]] = {v[0]: {"short": [], "long": []} for v in variants}
    summary = []
    backends = {}
    for rnd in range(args.rounds):
        for name, _ in variants:
            if rnd == 0:
                t1 = time.time()
                be = backends[name] = make_backend(sd, max_seq=max(4096, args.long + args.steps + 8),
                                                   lib_dir=lib_dirs[name])
                print(f"{name}: loaded in {time.time() - t1:.1f}s", flush=True)
            be = backends[name]
            if rnd == 0:
                be.reset()
                mk = be.decode(len(toks), logits=True, inputs=toks).logits
                e = np.linalg.norm(mk - rl, axis=-1) / np.linalg.norm(rl, axis=-1)
                line = (f"{name}: vs fp32 reference rel L2 max {np.nanmax(e):.3e} median {np.nanmedian(e):.3e}, "
                        f"NaN {int(np.isnan(mk).sum())}, argmax agree {float(np.mean(mk.argmax(-1) == rl.argmax(-1))):.3f}")
                print(line, flush=True)
                summary.append(line)
            ts = time_decode(be, short, args.steps, args.reps)
            res[name]["short"] += ts
            msg = f"round {rnd} {name}: pos 64 median {args.steps / statistics.median(ts):.1f} tok/s"
            if long_:
                tl = time_decode(be, long_, args.steps, 2)
                res[name]["long"] += tl
                msg += f", pos {args.long} {args.steps / statistics.median(tl):.1f} tok/s"
            print(msg, flush=True)
            if rnd == 0 and name == args.breakdown:
                for flags, what in ((1, "no matvec math"), (2, "no GDN/attention"), (4, "no grid barriers"),
                                    (6, "no mixing, no barriers"), (7, "stream only")):
                    tb = time_decode(be, short, args.steps, 3, debug_flags=flags)
                    line = f"  {name} breakdown (invalid results) {what:24s}: {1e6 * statistics.median(tb) / args.steps:7.1f} us/tok"
                    print(line, flush=True)
                    summary.append(line)
    print("---- summary ----")
    print("\n".join(summary))
    for name, d in variants:
        s = statistics.median(res[name]["short"])
        tps = args.steps / s
        line = (f"{name:12s} {str(d):40s} pos 64: {tps:7.1f} tok/s ({1e6 * s / args.steps:6.1f} us/tok, "
                f"{100 * tps * FLOOR_BYTES / BW_MEASURED:5.1f}% of floor, n={len(res[name]['short'])})")
        if res[name]["long"]:
            line += f"; pos {args.long}: {args.steps / statistics.median(res[name]['long']):7.1f} tok/s"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
