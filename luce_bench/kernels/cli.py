"""`luce-bench kernel ...`: build, inspect, benchmark and trace the bundled CUDA decode megakernel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from luce_bench.path_param import path_param

app = typer.Typer(help="Build, benchmark and trace the bundled CUDA decode megakernel.", no_args_is_help=True)

OptionList = Annotated[
    Optional[list[str]],
    typer.Option(
        "--option",
        "-D",
        help="Build option MK_NAME=VALUE (cuda/mk_config.cuh), repeatable; added to $LUCE_BENCH_KERNEL_OPTIONS.",
    ),
]


def _options(items: list[str] | None) -> dict[str, int] | None:
    """-D MK_A=1 -D MK_B=2 -> {"MK_A": 1, "MK_B": 2} with $LUCE_BENCH_KERNEL_OPTIONS' options beside them.

    None without any -D (then the build reads the environment itself). An option in both with two values is refused.
    """
    from luce_bench.errors import UserError
    from luce_bench.kernels.build import OPTIONS_ENV, options_from_env, parse_options

    if not items:
        return None
    flags, env = parse_options(items, "--option", "give each with its own --option"), options_from_env()
    for name in sorted(flags.keys() & env.keys()):
        if flags[name] != env[name]:
            raise UserError(f"--option {name}={flags[name]} and ${OPTIONS_ENV}'s {name}={env[name]}: give it once")
    return {**env, **flags}


def _out_file(path: Path | None, flag: str) -> None:
    """Refuse an output file that cannot be written before any GPU work (its results would be lost after it)."""
    from luce_bench.errors import UserError

    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file name")
    if not path.parent.is_dir():
        raise UserError(f"{flag} {path}: no directory {path.parent}")


@app.callback()
def _group() -> None:
    """Build, benchmark and trace the bundled CUDA decode megakernel."""


@app.command("info")
def info_cmd(arch: Optional[str] = typer.Option(None, help="Arch to describe (default: the GPU's).")) -> None:
    """Show nvcc, arch, cache path and (if built) registers/spills as JSON; never compiles."""
    from luce_bench.errors import UserError
    from luce_bench.kernels import build_info
    from luce_bench.kernels.build import env_arch

    _not_empty_arch(arch)
    if arch is not None and "," in arch:
        archs = [a.strip() for a in arch.split(",") if a.strip()]
        if len(archs) > 1:
            raise UserError(f"--arch {arch!r}: kernel info describes one arch's build; give one of {', '.join(archs)}")
        arch = archs[0]
    if arch is None:
        env_arch()  # a bad arch in the environment is bad input too, as a bad --arch is
    info = build_info(arch)
    if info.get("error"):  # a bad --arch, or none to be had (no GPU): kernel build refuses the same, exit 2
        raise UserError(info["error"])
    typer.echo(json.dumps(info, indent=2))


def _not_empty_arch(arch: str | None) -> None:
    """An empty --arch is bad input (not the GPU's arch, which leaving it out means)."""
    from luce_bench.errors import UserError

    if arch is not None and not arch.replace(",", "").strip():
        raise UserError("--arch is empty: name one, e.g. sm_90, or leave it out for the GPU's")


@app.command("build")
def build_cmd(
    arch: Annotated[
        Optional[str], typer.Option(help="Comma-separated archs, e.g. sm_90 or sm_80,sm_90 (default: the GPU's).")
    ] = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            parser=path_param,
            help="Output directory: new, empty or an earlier build's, replaced whole (default: the content-hash "
            "cache).",
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Rebuild even if a cached build exists.")] = False,
    option: OptionList = None,
) -> None:
    """Compile the megakernel with nvcc (cached by sources + flags + nvcc version) and print registers/spills."""
    from luce_bench.kernels.build import build

    _not_empty_arch(arch)
    res = build(arch, out, force=force, defines=_options(option))
    typer.echo(f"{'cached' if res.cached else 'built'}: {res.lib}")
    typer.echo(f"nvcc: {res.nvcc_version}")
    for r in res.reports:
        typer.echo(
            f"  {r.arch}: {r.registers} registers, {r.stack_bytes} B stack, "
            f"{r.spill_stores} B spill stores, {r.spill_loads} B spill loads  ({r.function})"
        )
    if any(r.spill_stores or r.spill_loads for r in res.reports):
        typer.echo("WARNING: register spills (see ptxas.txt next to the library)", err=True)


@app.command("bench")
def bench_cmd(
    variant: Annotated[
        Optional[list[str]],
        typer.Option(help="A variant to measure (forms above), repeatable: measured side by side."),
    ] = None,
    reps: Annotated[int, typer.Option(min=1, help="Timed launches per round at the short position.")] = 10,
    rounds: Annotated[int, typer.Option(min=1, help="Rounds; variants alternate within each.")] = 2,
    steps: Annotated[int, typer.Option(min=1, help="Decode steps per launch (tgN).")] = 128,
    long_pos: Annotated[int, typer.Option("--long", min=0, help="Long position (cached tokens); 0 skips it.")] = 4000,
    seed: Annotated[Optional[int], typer.Option(help="Weight/prompt seed (default: from the clock, printed).")] = None,
    check: Annotated[
        bool,
        typer.Option(
            help="Check each variant against the float32 reference first (and a screened LM head's greedy tokens "
            "against the full head's)."
        ),
    ] = True,
    per_token: Annotated[bool, typer.Option(help="Also time one launch per token (host-driven loop).")] = True,
    breakdown: Annotated[
        Optional[str], typer.Option(help="Variant that gets the debug-flag breakdown (timings of invalid results).")
    ] = None,
    bandwidth_tbs: Annotated[
        Optional[float], typer.Option(help="GPU copy bandwidth in TB/s for the share of the floor (default: measured).")
    ] = None,
    prefill: Annotated[
        Optional[str],
        typer.Option(
            help="Also time the kernel prefill at these prompt lengths, e.g. 1,64,520,2048,8192 (ms against N)."
        ),
    ] = None,
    energy_s: Annotated[
        float,
        typer.Option(
            min=0,
            help="Per round and variant, also an energy window of at least this many seconds at position 64 (W and "
            "tok/J from the GPU's energy counter; a screen: `luce-bench bench megakernel` measures tok/J for the "
            "record).",
        ),
    ] = 0.0,
    instances: Annotated[
        int,
        typer.Option(
            help="Load each variant this many times, 1 to 8 (the same library at other addresses), and time every "
            "instance in every round: instances of one library can differ by ~2 % (cuda/NOTES.md, session 45).",
        ),
    ] = 1,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", parser=path_param, help="Also write the summary as JSON here.")
    ] = None,
) -> None:
    """Decode speed of the megakernel (tg128 at position 64 and at --long), variants side by side, vs the floor.

    A --variant is NAME:MK_A=1,MK_B=2 (a set of build options, cuda/mk_config.cuh), NAME (the default build) or
    NAME=DIR (a library built earlier), each optionally followed by @field=value,... (the run-time tune, no rebuild:
    inflight, inflight_lm, pause_mask, spin_sleep_ns, lm_screen, grid, deep_phases, inflight_deep, pause_ready).
    For example: --variant base --variant ot:MK_O_TAGS=1 --variant g128@grid=128 --instances 2. Without a
    --variant: one, built with the options of $LUCE_BENCH_KERNEL_OPTIONS.
    """
    from luce_bench.kernels import bench

    _out_file(json_out, "--json")
    variants = [bench.parse_variant(v) for v in (variant or ["default"])]
    if len(variants) == 1 and not variants[0].options and variants[0].lib_dir is None:
        from luce_bench.kernels.build import options_from_env

        variants[0].options = options_from_env()
    plan = bench.BenchPlan(
        variants,
        reps=reps,
        rounds=rounds,
        steps=steps,
        long_pos=long_pos,
        seed=seed,
        check=check,
        per_token=per_token,
        breakdown=breakdown,
        bandwidth_tbs=bandwidth_tbs,
        prefill_lengths=_lengths(prefill),
        energy_s=energy_s,
        instances=instances,
    )
    summary = bench.run(plan, say=lambda line: typer.echo(line))
    _print_bench(summary)
    if json_out:
        from luce_bench.files import atomic_write, json_text

        atomic_write(json_out, json_text(summary))


def _lengths(text: str | None) -> tuple[int, ...]:
    from luce_bench.errors import UserError

    if not text:
        return ()
    try:
        out = tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--prefill {text!r}: expected prompt lengths, e.g. 64,520,2048") from None
    if any(n < 1 for n in out):
        raise UserError(f"--prefill {text!r}: lengths must be >= 1")
    return out


def _print_bench(s: dict) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=f"tg{s['steps']} on {escape(s['gpu'])} (seed {s['seed']}; floor {s['floor_tok_s']:.0f} tok/s at "
        f"{s['bandwidth_tbs']:.2f} TB/s)"
    )
    energy = any("energy_w" in r for r in s["variants"])  # the W and tok/J columns only where windows ran
    cols = ["variant", f"pos {s['short_pos']} tok/s", "us/token", "of floor", f"pos {s['long_pos']} tok/s"]
    spread = s.get("instances", 1) > 1  # each instance's median at the short position, lowest to highest
    cols += [*([f"pos {s['short_pos']} by instance"] if spread else []), "1 launch/token tok/s"]
    cols += [*(["W", "tok/J"] if energy else []), "rel L2 max", "n"]
    for col in cols:
        t.add_column(col, justify="left" if col == "variant" else "right")
    for r in s["variants"]:
        cells = [
            escape(r["variant"]),
            f"{r['short_tok_s']:,.1f}",
            f"{r['short_us_per_token']:.1f}",
            f"{100 * r['share_of_floor']:.1f} %",
            f"{r['long_tok_s']:,.1f}" if "long_tok_s" in r else "-",
        ]
        if spread:
            by = sorted(x["short_tok_s"] for x in r.get("instances", []))
            cells += [f"{by[0]:,.1f} - {by[-1]:,.1f}" if by else "-"]
        cells += [f"{r['per_token_tok_s']:,.1f}" if "per_token_tok_s" in r else "-"]
        if energy:
            cells += [f"{r['energy_w']:.0f}" if "energy_w" in r else "-"]
            cells += [f"{r['tok_per_j']:.2f}" if "tok_per_j" in r else "-"]
        cells += [f"{r['parity']['rel_l2_max']:.2e}" if r["parity"] else "-", str(r["n"])]
        t.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a log file or a pipe: whole numbers rather than an 80-column squeeze
        console = Console(width=160)
    console.print(t)
    if any(r.get("prefill") for r in s["variants"]):
        console.print(prefill_table(s))


def prefill_table(s: dict) -> Any:
    """The kernel prefill's cost against the prompt length: ms (CUDA graph) and tok/s per variant, one row per N."""
    from rich.markup import escape
    from rich.table import Table

    rows = [r for r in s["variants"] if r.get("prefill")]
    t = Table(title="kernel prefill: ms against prompt length N (replayed from a CUDA graph)")
    t.add_column("N", justify="right")
    for r in rows:
        t.add_column(f"{escape(r['variant'])} ms", justify="right")
        t.add_column(f"{escape(r['variant'])} tok/s", justify="right")
    by_n = {r["variant"]: {p["n"]: p for p in r["prefill"]} for r in rows}
    for n in sorted({p["n"] for r in rows for p in r["prefill"]}):
        cells = [str(n)]
        for r in rows:
            p = by_n[r["variant"]].get(n)
            cells += [f"{p['ms']:.3f}", f"{p['tok_s']:,.0f}"] if p else ["-", "-"]
        t.add_row(*cells)
    checks = []
    for r in rows:
        if pp := r.get("prefill_parity"):
            agree = "agrees" if pp["argmax_agree"] else "differs"
            checks.append(
                f"{escape(r['variant'])}: {pp['n']}-token prefill vs token by token, logits rel L2 {pp['rel_l2']:.1e}, "
                f"argmax {agree}"
            )
    if checks:
        t.caption = "; ".join(checks)
    return t


@app.command("trace")
def trace_cmd(
    steps: Annotated[int, typer.Option(min=5, help="Decode steps in the traced launch.")] = 24,
    pos: Annotated[int, typer.Option(min=1, help="Cached tokens before the traced steps.")] = 64,
    seed: Annotated[Optional[int], typer.Option(help="Weight/prompt seed (default: from the clock).")] = None,
    flags: Annotated[int, typer.Option(help="Debug flags for the traced launches (luce_mk.h; results invalid).")] = 0,
    option: OptionList = None,
    prebuilt: Annotated[
        Optional[Path], typer.Option(parser=path_param, help="Trace the library built earlier in this directory.")
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", parser=path_param, help="Also write the analysis as JSON here.")
    ] = None,
    raw: Annotated[
        Optional[Path],
        typer.Option(
            parser=path_param,
            help="Also keep the per-block timestamps here (a NumPy .npz: t_us of shape (steps, points, blocks), "
            "the point names, the run's facts).",
        ),
    ] = None,
) -> None:
    """Where a decode step's time goes: per-phase medians over blocks, barrier skews, late blocks."""
    from luce_bench.kernels import trace

    _out_file(json_out, "--json")
    _out_file(raw, "--raw")
    r = trace.run(
        steps=steps, pos=pos, seed=seed, flags=flags, options=_options(option), lib_dir=prebuilt, raw_path=raw
    )
    typer.echo(
        f"seed {r['seed']}; {r['gpu']}; tune {r['tune']}; grid {r['grid']}; untraced {r['untraced_us']:.1f} "
        f"us/token, traced {r['traced_us']:.1f} us/token (steps {trace.WARM_STEPS}..{steps - 1} analysed)"
    )
    typer.echo(f"\n{'segment':36s} {'18 GDN (us)':>12s} {'6 attn (us)':>12s} {'per GDN layer':>14s}")
    total = 0.0
    for name, v in r["segments"].items():
        total += v["gdn_us"] + v["attn_us"]
        typer.echo(f"{name:36s} {v['gdn_us']:12.1f} {v['attn_us']:12.1f} {v['gdn_us'] / 18:14.2f}")
    typer.echo(f"{'sum':36s} {total:12.1f}   (step: {r['step_us']:.1f} us)")
    for name, us in r["attention_items"].items():
        typer.echo(f"{name:44s} {us:8.2f} us per attention layer")
    typer.echo(
        "\nbarrier arrival skew (slowest block - median block), us: "
        + ", ".join(f"{k} mean {v['mean']:.2f} max {v['max']:.2f}" for k, v in r["skew_us"].items())
    )
    typer.echo(
        "blocks arriving last at the P4 barrier most often: " + ", ".join(f"{b} ({n}x)" for b, n in r["last_blocks"])
    )
    typer.echo(
        "blocks arriving last at the GDN mixer barrier most often: "
        + ", ".join(f"{b} ({n}x)" for b, n in r["last_blocks_mixer"])
    )
    for title, key in (("GDN mixer", "gdn_skew_path_us"), ("MLP (P4)", "p4_skew_path_us")):
        typer.echo(f"{title} skew by point, us (slowest block - median | how late the barrier's last block was there):")
        for name, v in r[key].items():
            typer.echo(f"  {name:30s} {v['slowest_minus_median']:6.2f} | {v['last_block_late_by']:6.2f}")
    if json_out:
        from luce_bench.files import atomic_write, json_text

        atomic_write(json_out, json_text(r))
