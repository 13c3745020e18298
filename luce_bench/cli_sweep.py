"""`luce-bench sweep` and `luce-bench restore`; cli.py registers them (standalone: `python -m luce_bench.cli_sweep`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from luce_bench.errors import UserError


def sweep(
    limits: Annotated[
        Optional[str],
        typer.Option(
            "--limits",
            "-l",
            help="Comma list of limits in W or % of the default limit, e.g. 420,300,220,150 or 100%,70%,50% "
            "(default: sweep.limits).",
        ),
    ] = None,
    backends: Annotated[
        Optional[str],
        typer.Option(
            "--backends", "-b", help="Comma list of backends (default: config `backends`; `sim` with --fake-gpu)."
        ),
    ] = None,
    clamp: Annotated[
        bool, typer.Option("--clamp", help="Clamp out-of-range limits to the card's range instead of refusing.")
    ] = False,
    shuffle: Annotated[
        bool, typer.Option("--shuffle", help="Shuffle the limit order (with --seed); default is descending.")
    ] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Seed for --shuffle.")] = None,
    order: Annotated[
        Optional[str], typer.Option("--order", help="descending, ascending or shuffle (default: sweep.order).")
    ] = None,
    settle_s: Annotated[
        Optional[float],
        typer.Option("--settle-s", help="Settle/warm-up under load after each limit change (s, >= 3 recommended)."),
    ] = None,
    idle_s: Annotated[Optional[float], typer.Option("--idle-s", help="Idle-baseline window per limit (s).")] = None,
    cooldown_max_s: Annotated[
        Optional[float], typer.Option("--cooldown-max-s", help="Longest cool-down wait (s).")
    ] = None,
    min_speed: Annotated[
        Optional[float],
        typer.Option("--sweet-spot-min-speed", help="Sweet spot keeps at least this share of stock tok/s (0.95)."),
    ] = None,
    read_only: Annotated[
        bool,
        typer.Option(
            "--read-only",
            help="Refuse every GPU setter (same as LUCE_BENCH_READONLY=1); a sweep then stops before changing "
            "anything.",
        ),
    ] = False,
    fake_gpu: Annotated[
        bool, typer.Option("--fake-gpu", help="Sweep a simulated GPU (no hardware is touched).")
    ] = False,
    fake_preset: Annotated[
        Optional[str],
        typer.Option("--fake-preset", help="Simulated card: rtx3090 (100-420 W, default) or h100-sxm (200-700 W)."),
    ] = None,
    no_persistence: Annotated[
        bool, typer.Option("--no-persistence", help="Do not turn on persistence mode while sweeping.")
    ] = False,
    config: Annotated[
        Optional[Path], typer.Option("--config", "-c", help="YAML config (default: configs/default.yaml).")
    ] = None,
    model: Annotated[
        Optional[str], typer.Option("--model", "-m", help="synthetic-0.8b, tiny, a local HF dir or a hub id.")
    ] = None,
    tests: Annotated[
        Optional[str], typer.Option("--tests", "-t", help="Comma list of tests, e.g. pp520,tg128.")
    ] = None,
    reps: Annotated[
        Optional[int], typer.Option("--reps", "-r", help="Repetitions (energy windows) per test and limit.")
    ] = None,
    window_s: Annotated[
        Optional[float], typer.Option("--window-s", help="Minimum energy window per repetition (s).")
    ] = None,
    warmup_s: Annotated[Optional[float], typer.Option("--warmup-s", help="Warm-up before each test (s).")] = None,
    rep_gap_max_s: Annotated[
        Optional[float], typer.Option("--rep-gap-max-s", help="Max random gap between repetitions (s).")
    ] = None,
    gpu: Annotated[Optional[int], typer.Option("--gpu", help="GPU index.")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Directory for run directories (default: results/runs).")
    ] = None,
) -> None:
    """Measure every backend at each GPU power limit and report the sweet spot; the original limit is always restored.

    Limits are validated against the card's range before anything changes. Changing limits needs root or
    CAP_SYS_ADMIN, except on the simulated GPU. After a crash or SIGKILL run `luce-bench restore`.
    """
    from rich.console import Console

    from luce_bench.cli import build_config
    from luce_bench.gpu import enable_read_only_mode
    from luce_bench.sweep import run_sweep

    if read_only:
        enable_read_only_mode()
    if shuffle and order not in (None, "shuffle"):
        raise UserError(f"--shuffle conflicts with --order {order}")
    if seed is not None and not shuffle and order != "shuffle":
        raise UserError("--seed only applies with --shuffle")
    names = backends or ("sim" if fake_gpu else None)
    cfg = build_config(
        config,
        model=model,
        tests=tests,
        reps=reps,
        window_s=window_s,
        warmup_s=warmup_s,
        rep_gap_max_s=rep_gap_max_s,
        gpu__fake=True if fake_gpu else None,
        gpu__index=gpu,
        device=device,
        output_dir=str(out) if out else None,
        backends=names,
        sweep__order="shuffle" if shuffle else order,
        sweep__shuffle_seed=seed,
        sweep__clamp=True if clamp else None,
        sweep__settle_s=settle_s,
        sweep__idle_s=idle_s,
        cooldown__max_s=cooldown_max_s,
        sweep__sweet_spot_min_speed=min_speed,
    )
    if "sim" in cfg.backends and not cfg.gpu.fake:
        raise UserError("the sim backend is a simulation: it runs only with --fake-gpu")
    preset = fake_preset or (cfg.gpu.fake_preset if config is not None else None)
    outcome = run_sweep(
        cfg, list(cfg.backends), limits=limits, fake_preset=preset, persistence=not no_persistence, console=Console()
    )
    if outcome.failed:
        typer.echo(f"error: failed or unavailable: {', '.join(outcome.failed)} (see {outcome.run_dir})", err=True)
        raise typer.Exit(1)


def restore(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; change nothing.")] = False,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="Refuse every GPU setter (same as LUCE_BENCH_READONLY=1).")
    ] = False,
) -> None:
    """Put back the original power limit and persistence mode recorded by an interrupted sweep (SIGKILL, crash)."""
    from luce_bench.gpu import enable_read_only_mode
    from luce_bench.gpu.journal import list_journals, state_dir
    from luce_bench.gpu.power_limit import restore_from_journals

    if read_only:
        enable_read_only_mode()
    if not list_journals():
        typer.echo(f"nothing to restore: no power-limit journal in {state_dir()}")
        return
    lines = restore_from_journals(dry_run=dry_run)
    for line in lines:
        typer.echo(line)
    if any(line.startswith("skipped") for line in lines):
        raise typer.Exit(1)


def _standalone() -> typer.Typer:
    from luce_bench.cli import handle_errors

    app = typer.Typer(add_completion=False, no_args_is_help=True, help="Power-limit sweep and restore.")
    app.command("sweep")(handle_errors(sweep))
    app.command("restore")(handle_errors(restore))
    return app


if __name__ == "__main__":
    _standalone()()
