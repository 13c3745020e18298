"""Benchmark (and optionally check) the decode megakernel on the local GPU.

    python scripts/bench_megakernel.py [--check] [--reps 10] [--steps 128] [--long 2000]

Weights are random with the exact 0.8B shapes (seeded, generated on the GPU). tg128: warm up, then `reps` timed
runs of `steps` decode steps in one launch each (CUDA events; median and min), at a short position (after a 64-token
prompt) and at a long one; also a host-driven loop (one launch per token). --check first compares teacher-forced
logits with the fp32 reference (luce_bench.kernels.reference) and with HF transformers (bf16). Prints a table last.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FLOOR_BYTES = 1.505e9
BW_MEASURED = 3.0e12


def random_state_dict(seed: int, device: str = "cuda") -> dict:
    """Synthetic-init weights (as luce_bench.model.synthetic) generated on the GPU, returned as CPU bf16 tensors."""
    import math

    import torch

    from luce_bench.model.spec import QWEN35_08B
    from luce_bench.model.synthetic import tensor_plan

    g = torch.Generator(device=device).manual_seed(seed)
    sd = {}
    for name, shape, kind in tensor_plan(QWEN35_08B):
        r = torch.randn(shape, generator=g, device=device)
        if kind in ("linear", "conv"):
            t = r / math.sqrt(shape[-1])
        elif kind == "embed":
            t = r * 0.1
        elif kind == "norm1p":
            t = r * 0.1
        elif kind == "norm_plain":
            t = 1.0 + r * 0.1
        elif kind == "a_log":
            t = torch.log(torch.rand(shape, generator=g, device=device) * 15.0 + 1.0)
        else:  # dt_bias
            dt = torch.exp(torch.rand(shape, generator=g, device=device) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t = dt + torch.log(-torch.expm1(-dt))
        sd[name] = t.to(torch.bfloat16).cpu()
    return sd


def make_backend(sd: dict, max_seq: int, lib_dir: str | None = None):
    import torch

    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels import lib as klib
    from luce_bench.kernels.build import build

    be = MegakernelBackend(max_seq=max_seq)
    be._device = torch.device("cuda")
    be._device_kind = "cuda"
    be._build = build(out_dir=Path(lib_dir)) if lib_dir else build()  # a prebuilt dir (libluce_mk.so + ptxas.txt)
    be._lib = klib.load_library(be._build.lib)
    be._layout = klib.layout(be._lib)
    be._launch = klib.LuceMkLaunchInfo()
    klib.check(be._lib, be._lib.luce_mk_launch_info(be._launch), "launch info")
    be.load_state_dict(sd)
    return be


def rel_l2(a, b) -> float:
    import numpy as np

    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def probe(be, sd: dict, seed: int, n: int = 192, chunk: int = 16) -> None:
    """Teacher-forced steps in short launches (progress printed, so a hang shows its position), vs the reference."""
    import numpy as np
    import torch

    from luce_bench.kernels.reference import Reference
    from luce_bench.model.spec import QWEN35_08B

    gen = torch.Generator().manual_seed(seed + 1)
    toks = torch.randint(0, QWEN35_08B.vocab_size, (n,), generator=gen).tolist()
    be.reset()
    rows = []
    for s in range(0, n, chunk):
        t0 = time.time()
        rows.append(be.decode(chunk, logits=True, inputs=toks[s:s + chunk]).logits)
        print(f"probe: positions {s}..{s + chunk - 1} ok ({time.time() - t0:.3f}s)", flush=True)
    mk = np.concatenate(rows)
    print(f"probe: NaN {int(np.isnan(mk).sum())}", flush=True)
    ref = Reference(sd, QWEN35_08B, "cuda")
    rl = np.stack([ref.step(t).float().cpu().numpy() for t in toks])
    e = np.linalg.norm(mk - rl, axis=-1) / np.linalg.norm(rl, axis=-1)
    print(f"probe vs fp32 reference: rel L2 max {e.max():.3e} median {np.median(e):.3e} "
          f"(first 4: {np.round(e[:4], 5).tolist()}), argmax agree {float(np.mean(mk.argmax(-1) == rl.argmax(-1))):.3f}",
          flush=True)


def check(be, sd: dict, seed: int, n_prompt: int = 64, n_dec: int = 128, hf: bool = True) -> list[str]:
    """Teacher-forced logits vs the fp32 reference and HF; greedy agreement vs HF. Returns table rows."""
    import numpy as np
    import torch

    from luce_bench.kernels.reference import Reference
    from luce_bench.model.spec import QWEN35_08B

    rows = []
    gen = torch.Generator().manual_seed(seed + 1)
    toks = torch.randint(0, QWEN35_08B.vocab_size, (n_prompt + n_dec,), generator=gen).tolist()
    be.reset()
    mk = be.decode(len(toks), logits=True, inputs=toks).logits
    assert not np.isnan(mk).any(), "NaN in kernel logits"
    ref = Reference(sd, QWEN35_08B, "cuda")
    rl = np.stack([ref.step(t).float().cpu().numpy() for t in toks])
    del ref
    e_ref = [rel_l2(mk[i], rl[i]) for i in range(len(toks))]
    agree_ref = float(np.mean(mk.argmax(-1) == rl.argmax(-1)))
    rows.append(f"vs fp32 reference: rel L2 max {max(e_ref):.3e} median {statistics.median(e_ref):.3e}, "
                f"argmax agree {agree_ref:.3f}")
    try:
        if not hf:
            return rows
        hl = hf_logits(sd, toks)
        e_hf = [rel_l2(mk[i], hl[i]) for i in range(len(toks))]
        e_hf_ref = [rel_l2(hl[i], rl[i]) for i in range(len(toks))]
        rows.append(f"vs HF bf16: rel L2 max {max(e_hf):.3e} median {statistics.median(e_hf):.3e}; "
                    f"HF vs fp32 ref max {max(e_hf_ref):.3e}; argmax agree {float(np.mean(mk.argmax(-1) == hl.argmax(-1))):.3f}")
    except Exception as exc:  # noqa: BLE001 - report and go on to the benchmark
        rows.append(f"HF comparison failed: {type(exc).__name__}: {str(exc)[:200]}")
    return rows


def hf_logits(sd: dict, toks: list[int]):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM
    from safetensors.torch import save_file

    from luce_bench.model.spec import QWEN35_08B
    import json

    d = Path(tempfile.mkdtemp())
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"), metadata={"format": "pt"})
    (d / "config.json").write_text(json.dumps(QWEN35_08B.to_hf_dict()))
    m = AutoModelForCausalLM.from_pretrained(str(d), dtype=torch.bfloat16).cuda().eval()
    out, cache = [], None
    with torch.inference_mode():
        for t in toks:
            o = m(input_ids=torch.tensor([[t]], device="cuda"), past_key_values=cache, use_cache=True)
            cache = o.past_key_values
            out.append(o.logits[0, -1].float().cpu().numpy())
    del m
    torch.cuda.empty_cache()
    return np.stack(out)


def time_decode(be, pos_tokens: list[int], steps: int, reps: int, per_token: bool = False,
                debug_flags: int = 0) -> list[float]:
    """Seconds per run of `steps` decode steps after feeding `pos_tokens` (CUDA events)."""
    import torch

    times = []
    for r in range(reps + 1):  # first run is the warm-up
        be.reset()
        be.prefill(pos_tokens)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        if per_token:
            for _ in range(steps):
                be._run(1, None, None)
        else:
            be._run(steps, None, None, debug_flags)
        b.record()
        torch.cuda.synchronize()
        if r:
            times.append(a.elapsed_time(b) / 1e3)
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--steps", type=int, default=128)
    ap.add_argument("--long", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--probe", action="store_true", help="teacher-forced 192 steps in 16-step launches vs the fp32 reference, then exit")
    ap.add_argument("--no-hf", action="store_true")
    ap.add_argument("--no-breakdown", action="store_true")
    ap.add_argument("--lib-dir", default=None, help="use the library prebuilt in this directory (e.g. a variant)")
    args = ap.parse_args()
    import torch

    seed = args.seed if args.seed is not None else int(time.time()) % 100000
    print(f"seed {seed}; device {torch.cuda.get_device_name()}", flush=True)
    t0 = time.time()
    sd = random_state_dict(seed)
    be = make_backend(sd, max_seq=max(4096, args.long + args.steps + 8), lib_dir=args.lib_dir)
    print(f"loaded in {time.time() - t0:.1f}s; {be.info()}", flush=True)
    class Echo(list):
        def append(self, row):
            print(row, flush=True)
            super().append(row)

        def __iadd__(self, rows):
            for r in rows:
                self.append(r)
            return self

    table = Echo()
    be.reset()
    t1 = time.time()
    r = be.decode(4, inputs=[1, 2, 3, 4])
    print(f"smoke: 4 steps -> tokens {r.tokens} in {time.time() - t1:.3f}s", flush=True)
    if args.probe:
        probe(be, sd, seed)
        return 0
    if args.check:
        table += check(be, sd, seed, hf=not args.no_hf)
    gen = torch.Generator().manual_seed(seed + 2)
    cases = [("short (pos 64)", 64)] + ([(f"long (pos {args.long})", args.long)] if args.long else [])
    for label, n_pos in cases:
        prompt = torch.randint(0, 248320, (n_pos,), generator=gen).tolist()
        for mode in ("1 launch", "per-token launch"):
            if mode != "1 launch" and n_pos != 64:
                continue
            reps = args.reps if n_pos <= 256 else min(3, args.reps)
            ts = time_decode(be, prompt, args.steps, reps, per_token=(mode != "1 launch"))
            med, mn = statistics.median(ts), min(ts)
            tps = args.steps / med
            floor = tps * FLOOR_BYTES / BW_MEASURED
            table.append(f"tg{args.steps} {label:16s} {mode:17s} median {tps:7.1f} tok/s  best {args.steps / mn:7.1f} "
                         f"tok/s  ({1e6 * med / args.steps:6.1f} us/tok, {100 * floor:5.1f}% of the 3.0 TB/s floor)")
    prompt = torch.randint(0, 248320, (64,), generator=gen).tolist()
    for flags, what in () if args.no_breakdown else ((1, "no matvec math"), (2, "no GDN/attention"), (4, "no grid barriers"),
                        (8, "no down_proj L2 reduction"),
                        (6, "no mixing, no barriers"), (7, "stream only")):
        ts = time_decode(be, prompt, args.steps, max(3, args.reps // 2), debug_flags=flags)
        table.append(f"  breakdown (invalid results) {what:24s}: {1e6 * statistics.median(ts) / args.steps:7.1f} us/tok")
    print("---- summary ----")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
