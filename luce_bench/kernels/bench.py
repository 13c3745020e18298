"""Kernel benchmark: decode speed of one or more megakernel builds on the local GPU (`luce-bench kernel bench`).

Method (as the kernel notes quote it): random weights with the exact 0.8B shapes from a seed, generated on the GPU;
every variant (a build-option set or a prebuilt library, each with the GPU's run-time tune or some of its fields
changed: kernels/tune.py) loads the same weights. Per round and variant: tg`steps` at
position 64 (after a 64-token prompt), `reps` timed launches of `steps` decode steps each after one warm-up launch,
CUDA events around the launch; then the same at a long position (2 launches). Variants alternate within each round, so
slow drift of clocks or temperature hits them all alike; medians over all rounds are reported. The share of the
bandwidth floor uses the bytes a decode step must stream (the layers' matrices and the tied LM head, from the
library's layout) and the device-to-device copy bandwidth of this GPU, measured once. Each variant is first checked
against the float32 reference (teacher-forced logits of 192 tokens). With `--prefill`, each round also times the
kernel prefill at every length (graph replay and kernel by kernel), so prefill medians span the rounds as decode's do;
its 200-token check against the token path runs once. Debug-flag breakdowns time invalid results.
These are kernel-speed numbers. With `energy_s`, each round also runs an energy window of that length per variant
(W and tok/J from the GPU's energy counter): a screen to compare variants; tok/J for the record comes from
`luce-bench bench megakernel` (>= 10 s windows).
With `instances` > 1 every variant is loaded that many times (each its own buffers: the same library and weights at
other addresses), and each round times every instance, instance-major (a #1, b #1, a #2, b #2, ...): on an H200 two
instances of one library differed by up to 2 %, each keeping its speed over the rounds (cuda/NOTES.md, session 45), so
one instance per variant cannot resolve a smaller difference. The medians span all instances; each instance's median
is reported too. The checks, the one-launch-per-token timing, the prefill and the breakdown use the first instance.
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.kernels.build import parse_options

PREFILL_CHECK_TOKENS = 200  # the quick prefill check's prompt (3 chunks of 64, then a partial one)
SHORT_POS = 64
MAX_INSTANCES = 8  # loads of one variant (each holds its own ~2 GB of weights and caches)
CHECK_TOKENS = 192
BREAKDOWN = (
    (1, "no matvec math"),
    (2, "no GDN/attention"),
    (4, "no grid barriers"),
    (8, "no MLP reductions"),
    (6, "no mixing, no barriers"),
    (7, "stream only"),
)


@dataclass
class Variant:
    """A kernel to measure: build options or a prebuilt library directory, and run-time tune fields to change."""

    name: str
    options: dict[str, int] = field(default_factory=dict)
    lib_dir: Path | None = None
    tune: dict[str, int] = field(default_factory=dict)  # fields replaced in the GPU's tune (kernels/tune.py)


@dataclass
class VariantResult:
    """Timings (seconds per launch of `steps` steps) and checks of one variant."""

    name: str
    build: dict[str, Any] = field(default_factory=dict)
    short_s: list[float] = field(default_factory=list)
    long_s: list[float] = field(default_factory=list)
    per_token_s: list[float] = field(default_factory=list)
    parity: dict[str, float] = field(default_factory=dict)
    breakdown_us: dict[str, float] = field(default_factory=dict)
    prefill_parity: dict[str, Any] | None = None  # kernel prefill vs token-by-token logits (prefill_parity)
    prefill_s: dict[int, list[float]] = field(default_factory=dict)  # replayed from a CUDA graph
    prefill_eager_s: dict[int, list[float]] = field(default_factory=dict)  # launched kernel by kernel
    energy: list[tuple[float, float, int]] = field(default_factory=list)  # (s, J, tokens) windows at the short position
    screen: dict[str, Any] | None = None  # screened LM head vs the full one (screen_check)
    instance_short_s: list[list[float]] = field(default_factory=list)  # short_s by instance (the one, or each)
    instance_long_s: list[list[float]] = field(default_factory=list)


def parse_variant(text: str) -> Variant:
    """A variant from its --variant text.

    "NAME:MK_A=1,MK_B=2" (options), "NAME" (the defaults) or "NAME=DIR" (a prebuilt library), each optionally followed
    by "@field=value,..." (run-time tune fields, e.g. "lm3@inflight_lm=3").
    """
    from luce_bench.kernels.tune import Tune, parse_fields

    where = f"--variant {text!r}"
    head, at, tune_text = text.partition("@")
    tune = parse_fields(tune_text, where) if at else {}
    if at and not tune:
        raise UserError(f"{where}: nothing after '@' (expected e.g. @inflight=2)")
    try:
        Tune().changed_by(tune)  # the ranges, before any GPU work
    except UserError as e:
        raise UserError(f"{where}: {e}") from None
    name, sep, rest = head.partition(":")
    if not sep and "=" in head:
        name, _, path = head.partition("=")
        return Variant(name.strip(), lib_dir=Path(path.strip()), tune=tune)
    options = parse_options(rest.split(","), where, "separate them by commas")
    if not name.strip():
        raise UserError(f"{where}: the name is empty")
    return Variant(name.strip(), options, tune=tune)


def random_state_dict(seed: int, device: str = "cuda") -> dict[str, Any]:
    """Synthetic-init 0.8B weights (as luce_bench.model.synthetic) generated on `device`, returned as CPU bf16."""
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
        elif kind in ("embed", "norm1p"):
            t = r * 0.1
        elif kind == "norm_plain":
            t = 1.0 + r * 0.1
        elif kind == "a_log":
            t = torch.log(torch.rand(shape, generator=g, device=device) * 15.0 + 1.0)
        else:  # dt_bias: inverse softplus of dt ~ log-uniform [1e-3, 0.1]
            u = torch.rand(shape, generator=g, device=device)
            dt = torch.exp(u * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3))
            t = dt + torch.log(-torch.expm1(-dt))
        sd[name] = t.to(torch.bfloat16).cpu()
    return sd


def measure_bandwidth_tbs(size_gib: float = 2.0, reps: int = 10) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second, median of `reps`) in TB/s."""
    import torch

    n = int(size_gib * 2**30) // 4
    src = torch.empty(n, dtype=torch.float32, device="cuda").fill_(1.0)
    dst = torch.empty_like(src)
    times = []
    for r in range(reps + 1):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        dst.copy_(src)
        b.record()
        torch.cuda.synchronize()
        if r:
            times.append(a.elapsed_time(b) / 1e3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n * 4 / statistics.median(times) / 1e12


def bytes_per_token(layout: Any) -> int:
    """Bytes one decode step streams: every layer matrix plus the tied LM head, bf16."""
    return 2 * (int(layout.wblob_elems) + int(layout.vocab) * int(layout.hidden))


def time_decode(
    be: Any, prompt: list[int], steps: int, reps: int, per_token: bool = False, debug_flags: int = 0
) -> list[float]:
    """Seconds per `steps` decode steps after `prompt` (CUDA events), `reps` times after one warm-up."""
    import torch

    times = []
    for r in range(reps + 1):
        be.reset()
        be.prefill(prompt)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        if per_token:
            for _ in range(steps):
                be.run_steps(1)
        else:
            be.run_steps(steps, debug_flags=debug_flags)
        b.record()
        torch.cuda.synchronize()
        if r:
            times.append(a.elapsed_time(b) / 1e3)
    return times


def energy_window(be: Any, prompt: list[int], steps: int, min_s: float, gpu: Any) -> tuple[float, float, int]:
    """(seconds, joules, tokens) of back-to-back launches of `steps` decode steps after `prompt` for >= `min_s`.

    Joules come from the GPU's energy counter (`gpu`: luce_bench.gpu). Every launch restarts from the prompt's saved
    context (a device copy of ~19 MB between launches), so all of them decode the same positions.
    """
    import torch

    be.reset()
    be.prefill(prompt)
    be.save_context()
    torch.cuda.synchronize()
    e0, t0, tokens = gpu.total_energy_mj(), time.perf_counter(), 0
    while True:
        be.restore_context()
        be.run_steps(steps)
        tokens += steps
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        if t >= min_s:
            return t, (gpu.total_energy_mj() - e0) / 1e3, tokens


def prefill_parity(be: Any, n: int, seed: int) -> dict[str, Any]:
    """The kernel prefill's last logits against the same prompt run token by token through the decode kernel.

    Returns rel L2 and whether the argmax agrees: a quick check of every variant (tests/gpu has the full one).
    """
    import numpy as np
    import torch

    prompt = torch.randint(0, 248320, (n,), generator=torch.Generator().manual_seed(seed + 7 * n)).tolist()
    mode = be.prefill_mode
    out = {}
    try:
        for path in ("tokens", "kernel"):
            be.prefill_mode = path
            be.reset()
            out[path] = be.prefill(prompt, logits=True).logits[0].astype(np.float64)
    finally:
        be.prefill_mode = mode
        be.reset()
    a, b = out["kernel"], out["tokens"]
    rel = float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))
    return {"n": n, "rel_l2": rel, "argmax_agree": bool(a.argmax() == b.argmax())}


def time_prefill(be: Any, n: int, reps: int, seed: int, graph: bool = True) -> list[float]:
    """Seconds per kernel prefill of an n-token prompt (CUDA events), `reps` times after one warm-up.

    With `graph` the prefill replays a CUDA graph, else it is launched kernel by kernel.
    """
    import torch

    prompt = torch.randint(0, 248320, (n,), generator=torch.Generator().manual_seed(seed + n)).tolist()
    mode, be.prefill_mode = be.prefill_mode, "kernel"
    kp = be._kernel_prefill()
    if kp is None:
        raise UserError("this library has no kernel prefill (ABI < 6)")
    was_graph, kp.graph = kp.graph, graph
    times = []
    try:
        for r in range(reps + 1):
            be.reset()
            torch.cuda.synchronize()
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            be._prefill_prompt(prompt, False)  # (the kernel prefill at any length: prefill() runs one token as a step)
            b.record()
            torch.cuda.synchronize()
            if be.prefill_used != "kernel":
                raise UserError("this library has no kernel prefill (ABI < 6)")
            if r:
                times.append(a.elapsed_time(b) / 1e3)
    finally:
        be.prefill_mode = mode
        kp.graph = was_graph
    return times


def reference_logits(sd: dict[str, Any], tokens: list[int]) -> Any:
    """float32 reference logits [len(tokens), vocab] (token by token, luce_bench.kernels.reference)."""
    import numpy as np
    import torch

    from luce_bench.kernels.reference import Reference
    from luce_bench.model.spec import QWEN35_08B

    ref = Reference(sd, QWEN35_08B, "cuda")
    rows = np.stack([ref.step(t).float().cpu().numpy() for t in tokens])
    del ref
    torch.cuda.empty_cache()
    return rows


def screen_check(be: Any, prompt: list[int], steps: int) -> dict[str, Any] | None:
    """Greedy tokens after `prompt` with the screened LM head against the full bf16 one (the same launch otherwise).

    {"steps", "equal" (leading steps whose tokens agree), "rescored_per_step" (rows recomputed from the bf16 head,
    all blocks)}; None when the variant's LM head is not screened.
    """
    import dataclasses

    if be.info().get("lm_screen") != "yes":
        return None
    tune = be.tune
    runs = []
    try:
        for t in (tune, dataclasses.replace(tune, lm_screen=0)):
            be.tune = t
            be.reset()
            be.prefill(prompt)
            be.lm_rescored()
            out, _ = be.run_steps(steps)
            runs.append((out.tolist(), be.lm_rescored()))
    finally:
        be.tune = tune
    (a, rescored), (b, _) = runs
    equal = next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), steps)
    return {"steps": steps, "equal": equal, "rescored_per_step": rescored / steps}


def parity(be: Any, tokens: list[int], ref: Any) -> dict[str, float]:
    """Teacher-forced kernel logits vs the reference: rel L2 max / median, argmax agreement, NaN count."""
    import numpy as np

    be.reset()
    got = be.decode(len(tokens), logits=True, inputs=tokens).logits
    e = np.linalg.norm(got - ref, axis=-1) / np.linalg.norm(ref, axis=-1)
    return {
        "rel_l2_max": float(np.nanmax(e)),
        "rel_l2_median": float(np.nanmedian(e)),
        "argmax_agree": float(np.mean(got.argmax(-1) == ref.argmax(-1))),
        "nan": int(np.isnan(got).sum()),
    }


def prebuild(variants: list[Variant], out_dir: Path) -> dict[str, Path]:
    """Build every distinct option set once (in parallel threads: nvcc runs out of process) into out_dir/NAME.

    Returns the library directory of every variant that has no prebuilt one (variants that differ only in their
    run-time tune share a build).
    """
    from concurrent.futures import ThreadPoolExecutor

    from luce_bench.kernels.build import build

    own = {v.name: tuple(sorted(v.options.items())) for v in variants if v.lib_dir is None}  # name -> option set
    first: dict[tuple, Variant] = {}  # option set -> the first variant with it (its name names the build directory)
    for v in variants:
        if v.name in own:
            first.setdefault(own[v.name], v)
    with ThreadPoolExecutor(max_workers=max(1, len(first))) as ex:
        done = ex.map(lambda v: build(out_dir=out_dir / v.name, defines=v.options, force=True), first.values())
        built = {opts: r.lib.parent for opts, r in zip(first, done, strict=True)}
    return {name: built[opts] for name, opts in own.items()}


@dataclass
class BenchPlan:
    """What `run` measures."""

    variants: list[Variant]
    reps: int = 10
    rounds: int = 2
    steps: int = 128
    long_pos: int = 4000
    seed: int | None = None
    check: bool = True
    per_token: bool = True
    breakdown: str | None = None  # the variant that gets the debug-flag breakdown
    bandwidth_tbs: float | None = None  # None: measure
    prefill_lengths: tuple[int, ...] = ()  # prompt lengths to time the kernel prefill at (ms against N)
    energy_s: float = 0.0  # per round and variant, an energy window of at least this long (0: none)
    instances: int = 1  # loads of each variant, each timed every round

    def validate(self) -> None:
        """One line for a plan that cannot run, before any GPU work.

        Checks the names, each variant's build options (names the kernel reads) or prebuilt library directory, the
        breakdown's variant, the bandwidth, positions past the model's context, and $LUCE_BENCH_KERNEL_TUNE's fields.
        """
        import math
        import os

        from luce_bench.kernels.build import check_lib_dir, define_flags
        from luce_bench.kernels.tune import TUNE_ENV, Tune
        from luce_bench.model.spec import QWEN35_08B

        if not 1 <= self.instances <= MAX_INSTANCES:
            raise UserError(f"--instances {self.instances}: expected 1 to {MAX_INSTANCES} loads of each variant")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise UserError(f"variant names must differ: {names}")
        for v in self.variants:
            check_lib_dir(v.lib_dir, f"--variant {v.name}={v.lib_dir}")
            try:
                define_flags(v.options)
            except UserError as exc:
                raise UserError(f"--variant {v.name}: {exc}") from None
        if self.breakdown is not None and self.breakdown not in names:
            raise UserError(f"--breakdown {self.breakdown!r}: no such variant (the variants: {', '.join(names)})")
        if self.bandwidth_tbs is not None and not (math.isfinite(self.bandwidth_tbs) and 0 < self.bandwidth_tbs < 100):
            raise UserError(f"--bandwidth-tbs {self.bandwidth_tbs}: expected a copy bandwidth in TB/s, above 0")
        top = QWEN35_08B.max_position_embeddings
        if self.long_pos + self.steps > top:
            raise UserError(f"--long {self.long_pos} + {self.steps} steps: past the model's {top:,} positions")
        if any(n > top for n in self.prefill_lengths):
            raise UserError(f"--prefill {max(self.prefill_lengths)}: past the model's {top:,} positions")
        Tune().changed(os.environ.get(TUNE_ENV), TUNE_ENV)  # its fields and ranges (each GPU's tune takes them)


def run(plan: BenchPlan, say: Callable[[str], None] = print, build_dir: Path | None = None) -> dict[str, Any]:
    """Measure every variant (see the module docstring); `say` gets a line as each result is produced."""
    import tempfile

    import torch

    from luce_bench.backends.megakernel import MegakernelBackend
    from luce_bench.kernels.tune import for_device

    plan.validate()
    if not torch.cuda.is_available():
        raise UserError("luce-bench kernel bench needs a CUDA GPU (torch sees none)")
    gpu = torch.cuda.get_device_name()
    # every variant's tune now: a bad $LUCE_BENCH_KERNEL_TUNE or field fails here, not after the builds
    tunes = {v.name: for_device(gpu).changed_by(v.tune) for v in plan.variants}
    t0 = time.time()
    dirs = prebuild(plan.variants, build_dir or Path(tempfile.mkdtemp(prefix="luce-mk-variants-")))
    say(f"builds: {time.time() - t0:.1f} s")
    seed = plan.seed if plan.seed is not None else int(time.time()) % 100000
    bw = plan.bandwidth_tbs or measure_bandwidth_tbs()
    say(
        f"seed {seed}; {torch.cuda.get_device_name()}; copy bandwidth {bw:.2f} TB/s"
        + (" (given)" if plan.bandwidth_tbs else " (measured: device-to-device, read + write)")
    )
    sd = random_state_dict(seed)
    gpu_energy = None
    if plan.energy_s > 0:
        from luce_bench.gpu import open_gpu
        from luce_bench.gpu.base import GPUError

        try:  # by UUID: torch's device numbers and NVML's indices need not agree (CUDA_VISIBLE_DEVICES)
            uuid = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "uuid", None)
            if uuid is not None:
                gpu_energy = open_gpu(uuid=f"GPU-{uuid}", read_only=True)
            else:
                gpu_energy = open_gpu(index=torch.cuda.current_device(), read_only=True)
            gpu_energy.total_energy_mj()
        except GPUError as e:  # no NVML, or a GPU without the counter: say so, time without it
            say(f"energy windows skipped: the GPU's energy counter cannot be read ({e})")
            gpu_energy = None
    gen = torch.Generator().manual_seed(seed + 1)
    check_toks = torch.randint(0, 248320, (CHECK_TOKENS,), generator=gen).tolist()
    short = torch.randint(0, 248320, (SHORT_POS,), generator=gen).tolist()
    long_ = torch.randint(0, 248320, (plan.long_pos,), generator=gen).tolist() if plan.long_pos else None
    ref = reference_logits(sd, check_toks) if plan.check else None
    max_seq = max(4096, plan.long_pos + plan.steps + 8, *(n + 8 for n in plan.prefill_lengths))
    results = {v.name: VariantResult(v.name) for v in plan.variants}
    for res in results.values():
        res.instance_short_s = [[] for _ in range(plan.instances)]
        res.instance_long_s = [[] for _ in range(plan.instances)]
    backends: dict[tuple[str, int], Any] = {}
    layout = None
    for rnd, i, v in itertools.product(range(plan.rounds), range(plan.instances), plan.variants):
        res = results[v.name]
        label = f"{v.name} #{i + 1}" if plan.instances > 1 else v.name
        if rnd == 0:
            backends[v.name, i] = MegakernelBackend.from_state_dict(
                sd, max_seq=max_seq, lib_dir=v.lib_dir or dirs[v.name], tune=tunes[v.name]
            )
        be = backends[v.name, i]
        layout = be.layout
        first = i == 0  # the checks, the per-token timing, the prefill and the breakdown: once per variant
        if rnd == 0 and first:
            res.build = be.info()
            if ref is not None:
                res.parity = parity(be, check_toks, ref)
                say(
                    f"{v.name}: vs fp32 reference rel L2 max {res.parity['rel_l2_max']:.3e} median "
                    f"{res.parity['rel_l2_median']:.3e}, argmax agree {res.parity['argmax_agree']:.3f}, "
                    f"NaN {res.parity['nan']}"
                )
            res.screen = screen_check(be, short, plan.steps)
            if res.screen:
                verdict = "" if res.screen["equal"] == plan.steps else " -- MISMATCH: the screen is wrong"
                say(
                    f"{v.name}: screened LM head: greedy tokens equal to the full head's for "
                    f"{res.screen['equal']}/{plan.steps} steps, {res.screen['rescored_per_step']:.1f} rows "
                    f"recomputed per step{verdict}"
                )
        ts = time_decode(be, short, plan.steps, plan.reps)
        res.short_s += ts
        res.instance_short_s[i] += ts
        mine = res.instance_short_s[i]  # (with one instance: all of short_s)
        line = f"round {rnd} {label}: pos {SHORT_POS} {plan.steps / statistics.median(mine):.1f} tok/s"
        if long_:
            tl = time_decode(be, long_, plan.steps, 2)
            res.long_s += tl
            res.instance_long_s[i] += tl
            line += f", pos {plan.long_pos} {plan.steps / statistics.median(res.instance_long_s[i]):.1f} tok/s"
        if gpu_energy is not None:
            es, ej, et = energy_window(be, short, plan.steps, plan.energy_s, gpu_energy)
            if ej > 0:  # (a window shorter than the counter's update period reads 0 J)
                res.energy.append((es, ej, et))
                line += f", {ej / es:.0f} W, {et / ej:.2f} tok/J"
            else:
                line += ", energy window too short for the counter (no W)"
        if plan.per_token and rnd == 0 and first:
            res.per_token_s = time_decode(be, short, plan.steps, max(3, plan.reps // 2), per_token=True)
            line += f", one launch per token {plan.steps / statistics.median(res.per_token_s):.1f} tok/s"
        say(line)
        if not first:
            continue
        if rnd == 0 and plan.prefill_lengths:
            res.prefill_parity = prefill_parity(be, PREFILL_CHECK_TOKENS, seed)
            say(
                f"  {v.name} prefill of {PREFILL_CHECK_TOKENS} tokens vs the same prompt token by token: logits "
                f"rel L2 {res.prefill_parity['rel_l2']:.2e}, argmax agree {res.prefill_parity['argmax_agree']}"
            )
        for n in plan.prefill_lengths:  # every round, so that a slow moment of one round is outvoted
            tp = time_prefill(be, n, max(3, plan.reps // 2), seed)
            te = time_prefill(be, n, max(3, plan.reps // 2), seed, graph=False)
            res.prefill_s.setdefault(n, []).extend(tp)
            res.prefill_eager_s.setdefault(n, []).extend(te)
            say(
                f"  round {rnd} {v.name} prefill N={n}: {1e3 * statistics.median(tp):8.3f} ms, "
                f"{n / statistics.median(tp):10.0f} tok/s (CUDA graph); "
                f"{1e3 * statistics.median(te):8.3f} ms launched kernel by kernel"
            )
        if rnd == 0 and v.name == plan.breakdown:
            for flags, what in BREAKDOWN:
                tb = time_decode(be, short, plan.steps, 3, debug_flags=flags)
                res.breakdown_us[what] = 1e6 * statistics.median(tb) / plan.steps
                say(f"  {v.name} breakdown (invalid results) {what:24s}: {res.breakdown_us[what]:7.1f} us/token")
    floor_tok_s = bw * 1e12 / bytes_per_token(layout)
    return summarize(plan, results, bw, floor_tok_s, seed, torch.cuda.get_device_name())


def summarize(
    plan: BenchPlan, results: dict[str, VariantResult], bw_tbs: float, floor_tok_s: float, seed: int, gpu: str
) -> dict[str, Any]:
    """Medians, tok/s and share of the floor per variant (a JSON-ready dict)."""
    rows = []
    for r in results.values():
        row: dict[str, Any] = {
            "variant": r.name,
            "n": len(r.short_s),
            "parity": r.parity,
            "breakdown_us": r.breakdown_us,
            "options": r.build.get("options"),
            "tune": r.build.get("tune"),
            "prebuilt": r.build.get("prebuilt"),
            "ptxas": r.build.get("ptxas"),
        }
        med = statistics.median(r.short_s)
        row.update(
            short_tok_s=plan.steps / med,
            short_us_per_token=1e6 * med / plan.steps,
            short_best_tok_s=plan.steps / min(r.short_s),
            share_of_floor=plan.steps / med / floor_tok_s,
        )
        if r.long_s:
            row["long_tok_s"] = plan.steps / statistics.median(r.long_s)
        if plan.instances > 1:  # each instance's medians, in load order
            row["instances"] = [
                {
                    "short_tok_s": plan.steps / statistics.median(ts),
                    **({"long_tok_s": plan.steps / statistics.median(tl)} if tl else {}),
                }
                for ts, tl in zip(r.instance_short_s, r.instance_long_s, strict=True)
                if ts
            ]
        if r.energy:
            w = [j / t for t, j, _ in r.energy]
            tpj = [n / j for _, j, n in r.energy]
            row.update(energy_w=statistics.median(w), tok_per_j=statistics.median(tpj), energy_windows=len(r.energy))
        if r.screen:
            row["lm_screen"] = r.screen
        if r.per_token_s:
            row["per_token_tok_s"] = plan.steps / statistics.median(r.per_token_s)
        if r.prefill_parity:
            row["prefill_parity"] = r.prefill_parity
        if r.prefill_s:
            row["prefill"] = [
                {
                    "n": n,
                    "ms": 1e3 * statistics.median(t),
                    "tok_s": n / statistics.median(t),
                    "eager_ms": 1e3 * statistics.median(r.prefill_eager_s[n]) if n in r.prefill_eager_s else None,
                }
                for n, t in sorted(r.prefill_s.items())
            ]
        rows.append(row)
    return {
        "gpu": gpu,
        "seed": seed,
        "steps": plan.steps,
        "short_pos": SHORT_POS,
        "long_pos": plan.long_pos,
        "reps": plan.reps,
        "rounds": plan.rounds,
        "instances": plan.instances,
        "bandwidth_tbs": bw_tbs,
        "floor_tok_s": floor_tok_s,
        "variants": rows,
    }
