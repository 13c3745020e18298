"""Where a decode step's time goes: per-block phase timestamps from the kernel's trace (`luce-bench kernel trace`).

One launch of `steps` decode steps after a `pos`-token prompt with the trace on: thread 0 of every block stamps
%globaltimer at each phase boundary (cuda/mk_trace.cuh names the points; they are read from that header). Per phase,
the median over blocks, averaged over the steps after the first 4 and summed over the 18 GDN and the 6 attention
layers; the skew at the grid barriers (slowest block's arrival minus the median block's) and the blocks that arrive
last most often; and where the skews of the GDN mixer barrier and of the MLP (P4) barrier grow: at each point of a
layer up to the barrier, the slowest block's lag behind the median, and how late the block that arrives last at the
barrier already was there. The trace adds a block barrier per point; the untraced launch time is printed beside it.
`save_raw` keeps the per-block timestamps themselves (`kernel trace --raw`) for questions the summary does not answer.
On a grid below 128 blocks (the tune's `grid`) a block runs several work items and keeps the stamps of its last one
(cuda/mk_trace.cuh), so the item segments then count the earlier items' work in the time before them.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError

NL = 24
WARM_STEPS = 4


def segments(tp: dict[str, int]) -> tuple[list[tuple[str, int | None, int]], list[tuple[str, int | None, int]]]:
    """(GDN, attention) segments as (name, start point or None = previous layer's end, end point)."""
    o_done, o_sync = tp["TR_ITEM_IN"], tp["TR_ITEM_SS"]  # attention layers reuse points 4 and 5 (mk_trace.cuh)
    mlp = [
        ("P4 prologue", None, tp["TR_MLP_X_READY"]),
        ("P4 gate/up", tp["TR_MLP_X_READY"], tp["TR_GATE_UP_DONE"]),
        ("P4 down + adds", tp["TR_GATE_UP_DONE"], tp["TR_DOWN_DONE"]),
        ("P4 barrier", tp["TR_DOWN_DONE"], tp["TR_MLP_SYNC"]),
    ]
    p1 = [
        ("P1 prologue (release -> x ready)", None, tp["TR_X_READY"]),
        ("P1 in_proj / qkv", tp["TR_X_READY"], tp["TR_PROJ_DONE"]),
    ]
    gdn = p1 + [
        ("item: polls + conv", tp["TR_PROJ_DONE"], tp["TR_ITEM_IN"]),
        ("item: recurrence + sibling wait", tp["TR_ITEM_IN"], tp["TR_ITEM_SS"]),
        ("item: out_proj + adds", tp["TR_ITEM_SS"], tp["TR_MIX_DONE"]),
        ("mixer barrier", tp["TR_MIX_DONE"], tp["TR_MIX_SYNC"]),
    ]
    gdn += [(n, tp["TR_MIX_SYNC"] if a is None else a, b) for n, a, b in mlp]
    fa = p1 + [
        ("mixer items", tp["TR_PROJ_DONE"], tp["TR_MIX_DONE"]),
        # no barrier: o_proj's prologue waits for the tagged head outputs (cuda/NOTES.md v25)
        ("P3 o_proj prologue", tp["TR_MIX_DONE"], tp["TR_O_READY"]),
        ("P3 o_proj", tp["TR_O_READY"], o_done),
        ("P3 barrier", o_done, o_sync),
    ]
    fa += [(n, o_sync if a is None else a, b) for n, a, b in mlp]
    return gdn, fa


def capture(be: Any, prompt: list[int], steps: int, flags: int = 0) -> tuple[float, float, Any]:
    """(untraced us/token, traced us/token, trace [steps, points, grid] in us) of launches after `prompt`."""
    import numpy as np
    import torch

    def launch(trace: Any) -> float:
        be.reset()
        be.prefill(prompt)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        be.run_steps(steps, debug_flags=flags if trace is not None else 0, trace=trace)
        b.record()
        torch.cuda.synchronize()
        return a.elapsed_time(b) * 1e3 / steps

    plain = sorted(launch(None) for _ in range(5))[2]
    npts, grid = be.trace_points, be.grid
    buf = torch.zeros(steps * npts * grid, dtype=torch.int64, device=be.device)
    traced = sorted(launch(buf) for _ in range(3))[1]
    t_us = buf.view(steps, npts, grid).cpu().numpy().astype(np.float64) / 1e3
    t_us[t_us == 0] = np.nan  # points a block never reaches (item points on blocks without an item)
    return plain, traced, t_us


def _path_means(path: dict[str, list[tuple[float, float]]]) -> dict[str, dict[str, float]]:
    import numpy as np

    return {
        k: {
            "slowest_minus_median": float(np.mean([a for a, _ in v])),
            "last_block_late_by": float(np.mean([b for _, b in v])),
        }
        for k, v in path.items()
    }


def save_raw(path: Path, t_us: Any, tp: dict[str, int], meta: dict[str, Any]) -> None:
    """The per-block timestamps as a NumPy archive, written whole or not at all.

    `t_us` [steps, points, grid] in us (NaN: a point the block never reached); point k of layer l is TR_L * l + k, the
    step's own points follow the 24 layers (cuda/mk_trace.cuh). `point_names` / `point_values` hold the header's enum,
    `meta_json` the run's facts (seed, GPU, position, tune).
    """
    import json

    import numpy as np

    from luce_bench.files import atomic_path

    names = sorted(tp, key=lambda n: (tp[n], n))
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            t_us=np.asarray(t_us, dtype=np.float64),
            point_names=np.array(names),
            point_values=np.array([tp[n] for n in names], dtype=np.int64),
            meta_json=np.array(json.dumps(meta, sort_keys=True)),
        )


def analyse(t_us: Any, tp: dict[str, int]) -> dict[str, Any]:
    """Per-segment totals (18 GDN layers, 6 attention layers), attention item details, barrier skews, late blocks."""
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore", "All-NaN slice", RuntimeWarning)
    steps_n, npts, _ = t_us.shape
    tr_l = tp["TR_L"]
    step0 = NL * tr_l
    if npts not in (step0 + 4, step0 + 5):  # (+ 4: a library from before the LM head's streamed point)
        raise UserError(f"trace has {npts} points per step, mk_trace.cuh says {step0 + 5}")
    lm_segments = (
        (("LM prologue", None, 1), ("LM head stream", 1, 4), ("LM rescore + argmax", 4, 2), ("LM barrier", 2, 3))
        if npts == step0 + 5
        else (("LM prologue", None, 1), ("LM head + argmax", 1, 2), ("LM barrier", 2, 3))
    )
    if steps_n <= WARM_STEPS:
        raise UserError(f"trace needs more than {WARM_STEPS} steps (got {steps_n})")
    seg_gdn, seg_fa = segments(tp)
    tot: dict[str, list[float]] = collections.defaultdict(lambda: [0.0, 0.0])
    skew: dict[str, list[float]] = collections.defaultdict(list)
    detail: dict[str, list[float]] = collections.defaultdict(list)
    last: collections.Counter = collections.Counter()
    path_pts = [
        ("x ready", tp["TR_X_READY"]),
        ("in_proj done", tp["TR_PROJ_DONE"]),
        ("item inputs", tp["TR_ITEM_IN"]),
        ("item sums of squares", tp["TR_ITEM_SS"]),
        ("mixer done", tp["TR_MIX_DONE"]),
    ]
    p4_pts = [  # the MLP's points, from the barrier before it (None: the layer's, set per layer)
        ("barrier before the MLP passed", None),
        ("MLP x ready", tp["TR_MLP_X_READY"]),
        ("gate/up done", tp["TR_GATE_UP_DONE"]),
        ("down done (arrival)", tp["TR_DOWN_DONE"]),
    ]
    path: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    p4_path: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
    last_mixer: collections.Counter = collections.Counter()
    steps = range(WARM_STEPS, steps_n)
    for s in steps:
        t = t_us[s] - np.nanmin(t_us[s, step0])
        med = np.nanmedian(t, axis=1)
        prev = med[step0]
        for layer in range(NL):
            fa = layer % 4 == 3
            base = tr_l * layer
            for name, a, b in seg_fa if fa else seg_gdn:
                start = prev if a is None else med[base + a]
                tot[name][1 if fa else 0] += (med[base + b] - start) / len(steps)
            if fa:
                for name, a, b in (
                    ("attention item: wait + norms", tp["TR_PROJ_DONE"], tp["TR_ATT_IN"]),
                    ("attention item: work", tp["TR_ATT_IN"], tp["TR_MIX_DONE"]),
                ):
                    d = t[base + b] - t[base + a]
                    if np.isfinite(d).any():
                        detail[name + " (median)"].append(float(np.nanmedian(d)))
                        detail[name + " (slowest)"].append(float(np.nanmax(d)))
            if not fa:  # the GDN mixer barrier's skew, point by point (nan: blocks without an item)
                done = t[base + tp["TR_MIX_DONE"]]
                lb = int(np.nanargmax(done))
                last_mixer[lb] += 1
                for name, k in path_pts:
                    arr = t[base + k]
                    m = np.nanmedian(arr)
                    path[name].append((float(np.nanmax(arr) - m), float(arr[lb] - m)))
            lb4 = int(np.nanargmax(t[base + tp["TR_DOWN_DONE"]]))  # the MLP barrier's skew, point by point
            last[lb4] += 1
            before = tp["TR_ITEM_SS"] if fa else tp["TR_MIX_SYNC"]  # (o_proj's barrier in attention layers)
            for name, k in p4_pts:
                arr = t[base + (before if k is None else k)]
                m = np.nanmedian(arr)
                p4_path[name].append((float(np.nanmax(arr) - m), float(arr[lb4] - m)))
            barriers = [("P3", tp["TR_ITEM_IN"])] if fa else [("mixer", tp["TR_MIX_DONE"])]  # (GDN mixers only)
            for name, k in barriers + [("P4", tp["TR_DOWN_DONE"])]:
                arr = t[base + k]
                skew[name].append(float(np.nanmax(arr) - np.nanmedian(arr)))
            prev = med[base + tp["TR_MLP_SYNC"]]
        for name, a, b in lm_segments:
            start = prev if a is None else med[step0 + a]
            tot[name][0] += (med[step0 + b] - start) / len(steps)
    step_us = float(np.mean([np.nanmedian(t_us[s, step0 + 3]) - np.nanmin(t_us[s, step0]) for s in steps]))
    return {
        "segments": {k: {"gdn_us": v[0], "attn_us": v[1]} for k, v in tot.items()},
        "attention_items": {k: float(np.mean(v)) for k, v in detail.items()},
        "skew_us": {k: {"mean": float(np.mean(v)), "max": float(np.max(v))} for k, v in skew.items()},
        "last_blocks": last.most_common(8),
        "gdn_skew_path_us": _path_means(path),
        "p4_skew_path_us": _path_means(p4_path),
        "last_blocks_mixer": last_mixer.most_common(8),
        "step_us": step_us,
    }


def _check_inputs(options: dict[str, int] | None, lib_dir: Any) -> None:
    """Bad build options, a missing --prebuilt folder or a bad tune: one line, before the GPU check."""
    import os

    from luce_bench.kernels.build import check_lib_dir, define_flags, options_from_env
    from luce_bench.kernels.tune import TUNE_ENV, Tune

    define_flags(options if options is not None else options_from_env())
    check_lib_dir(lib_dir, f"--prebuilt {lib_dir}")
    Tune().changed(os.environ.get(TUNE_ENV), TUNE_ENV)


def run(
    steps: int = 24,
    pos: int = 64,
    seed: int | None = None,
    flags: int = 0,
    options: dict[str, int] | None = None,
    lib_dir: Any = None,
    raw_path: Path | None = None,
) -> dict[str, Any]:
    """Trace one build on random weights and return the analysis.

    `options`: build options (default: $LUCE_BENCH_KERNEL_OPTIONS); `lib_dir`: a prebuilt library instead. The
    run-time tune is the GPU's (kernels/tune.py; $LUCE_BENCH_KERNEL_TUNE changes fields). `raw_path`: also keep the
    per-block timestamps there (save_raw).
    """
    import torch

    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels.abi import trace_points
    from luce_bench.kernels.bench import random_state_dict

    _check_inputs(options, lib_dir)
    if not torch.cuda.is_available():
        raise UserError("luce-bench kernel trace needs a CUDA GPU (torch sees none)")
    seed = seed if seed is not None else int(time.time()) % 100000
    be = MegakernelBackend.from_state_dict(
        random_state_dict(seed), max_seq=pos + steps + 8, options=options, lib_dir=lib_dir
    )
    prompt = torch.randint(0, 248320, (pos,), generator=torch.Generator().manual_seed(seed + 2)).tolist()
    plain, traced, t_us = capture(be, prompt, steps, flags)
    tp = trace_points()
    out = analyse(t_us, tp)
    out.update(
        seed=seed,
        gpu=torch.cuda.get_device_name(),
        grid=be.grid,
        untraced_us=plain,
        traced_us=traced,
        steps=steps,
        pos=pos,
        flags=flags,
        tune=be.tune.as_dict() if be.tune is not None else None,  # None: a library from before the run-time tune
    )
    if raw_path is not None:
        meta = {k: out[k] for k in ("seed", "gpu", "grid", "untraced_us", "traced_us", "steps", "pos", "flags", "tune")}
        save_raw(raw_path, t_us, tp, meta)
    return out
