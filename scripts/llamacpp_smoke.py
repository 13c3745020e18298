"""Smoke test of the llamacpp backend on a GPU: pp/tg throughput, NVML energy, parity with HF, NVML coexistence.

usage: python3 scripts/llamacpp_smoke.py [--nvml] [--model synthetic-0.8b] [--seconds 5] [--parity] [--out result.json]

With --nvml, pynvml is initialised *before* llama_cpp is imported and read while llama.cpp runs (the mix once seen to
segfault on the H100). Energy comes from the NVML total-energy counter over loops of about --seconds each; it is a
smoke number, not the measured baseline (the runner does that).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _loop(fn, seconds: float):  # run fn until `seconds` pass; returns (calls, tokens, elapsed_s)
    calls = toks = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or calls < 2:
        toks += fn()
        calls += 1
    return calls, toks, time.perf_counter() - t0


def main() -> None:
    """Run the smoke test and print (and optionally write) a JSON summary."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--nvml", action="store_true")
    ap.add_argument("--model", default="synthetic-0.8b")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--parity", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    import faulthandler

    faulthandler.enable()  # a segfault prints the Python stack
    res: dict = {"nvml_in_process": a.nvml}
    nv = h = None
    if a.nvml:
        import pynvml as nv

        nv.nvmlInit()
        h = nv.nvmlDeviceGetHandleByIndex(0)
        res["gpu"] = nv.nvmlDeviceGetName(h)
    from luce_bench.backends.llamacpp import LlamaCppBackend
    from luce_bench.gguf_export import ensure_gguf
    from luce_bench.model.resolve import resolve_model

    print("stage: resolve", flush=True)
    t = time.perf_counter()
    m = resolve_model(a.model, progress=False)
    res["resolve_s"] = round(time.perf_counter() - t, 1)
    print("stage: export", flush=True)
    t = time.perf_counter()
    ensure_gguf(m.path, m.config, "bf16", progress=False)
    res["gguf_export_s"] = round(time.perf_counter() - t, 1)
    b = LlamaCppBackend(n_ctx=1024)
    print("stage: load", flush=True)
    t = time.perf_counter()
    b.load(m, "auto")
    res["load_s"] = round(time.perf_counter() - t, 1)
    res["info"] = b.info()
    prompt = [(i * 7919 + 13) % m.config.vocab_size for i in range(520)]

    def pp() -> int:
        b.reset()
        b.prefill(prompt)
        return 520

    def tg() -> int:
        b.reset()
        b.prefill(prompt[:1])
        return len(b.decode(128).tokens)

    print("stage: run", flush=True)
    b.reset()
    r = b.prefill(prompt)
    d = b.decode(128)
    res["perf_counters"] = b.perf()
    res["first_tokens"] = [r.tokens[0], *d.tokens[:8]]
    for name, fn in (("pp520", pp), ("tg128", tg)):
        fn()  # warm-up
        e0 = nv.nvmlDeviceGetTotalEnergyConsumption(h) if nv else None
        calls, toks, el = _loop(fn, a.seconds)
        row = {"calls": calls, "tok_s": round(toks / el, 1)}
        if nv:
            joules = (nv.nvmlDeviceGetTotalEnergyConsumption(h) - e0) / 1000.0
            row.update(mean_w=round(joules / el, 1), tok_j=round(toks / joules, 3),
                       power_now_w=nv.nvmlDeviceGetPowerUsage(h) / 1000)
        res[name] = row
        print(name, row, flush=True)
    if a.parity:
        res["parity"] = parity(b, m)
    b.close()
    print(json.dumps(res, indent=1, default=str))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1, default=str))


def parity(b, m) -> dict:
    """Teacher-forced logits of llama.cpp vs HF (fp32 weights from the same checkpoint), 32-token prompt + 16 steps."""
    import numpy as np
    import torch

    from luce_bench.backends.hf import HFBackend

    hf = HFBackend("float32")
    hf.load(m, "cuda" if torch.cuda.is_available() else "cpu")
    prompt = [(i * 104729 + 7) % m.config.vocab_size for i in range(32)]
    hf.reset()
    R = hf.prefill(prompt, logits=True)
    D = hf.decode(16, logits=True)
    forced = [R.tokens[0], *D.tokens[:-1]]
    b.reset()
    r = b.prefill(prompt, logits=True)
    d = b.decode(16, logits=True, inputs=forced)
    ref, got = np.concatenate([R.logits, D.logits]), np.concatenate([r.logits, d.logits])
    rows = [float(np.linalg.norm(got[i] - ref[i]) / np.linalg.norm(ref[i])) for i in range(len(ref))]
    hf.close()
    return {"rel_l2_all": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)), "rel_l2_max_row": max(rows),
            "argmax_agree": int((got.argmax(1) == ref.argmax(1)).sum()), "rows": len(rows)}


if __name__ == "__main__":
    main()
