"""luce-bench command line: flags become a validated config; the work lives in other modules.

A user error prints one line and exits with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from luce_bench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Energy-efficiency benchmarks and power-limit sweeps for local LLM inference on NVIDIA GPUs.")
model_app = typer.Typer(no_args_is_help=True, help="Prepare model checkpoints.")
app.add_typer(model_app, name="model")

_state = {"debug": False}


def _default_config() -> Optional[Path]:
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "configs" / "default.yaml", here / "_configs" / "default.yaml"):
        if candidate.is_file():
            return candidate
    return None


def _console() -> Any:
    from rich.console import Console

    return Console()


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn UserError (and a few expected failures) into one red line and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (UserError, _gpu_errors()) as exc:
            if _state["debug"]:
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
    return wrapper


def _gpu_errors() -> type[Exception]:
    try:
        from luce_bench.gpu.base import GPUError

        return GPUError
    except ImportError:
        return UserError


@app.callback()
def main_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every GPU setter (also LUCE_BENCH_READONLY=1).")] = False,
) -> None:
    """luce-bench: tok/s and tok/J of a CUDA megakernel vs llama.cpp vs HF transformers (Qwen3.5-0.8B)."""
    _state["debug"] = debug
    if read_only:
        from luce_bench.gpu import enable_read_only_mode

        enable_read_only_mode()


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: configs/default.yaml).")]
ModelOpt = Annotated[Optional[str], typer.Option("--model", "-m", help="synthetic-0.8b, tiny, a local HF dir or a hub id (default: auto).")]
TestsOpt = Annotated[Optional[str], typer.Option("--tests", "-t", help="Comma list of llama-bench tests, e.g. pp520,tg128.")]
RepsOpt = Annotated[Optional[int], typer.Option("--reps", "-r", help="Repetitions (energy windows) per test.")]
WindowOpt = Annotated[Optional[float], typer.Option("--window-s", help="Minimum energy window per repetition (s).")]
WarmupOpt = Annotated[Optional[float], typer.Option("--warmup-s", help="Warm-up before each test (s).")]
GapOpt = Annotated[Optional[float], typer.Option("--rep-gap-max-s", help="Max random gap between repetitions (s).")]
FakeOpt = Annotated[bool, typer.Option("--fake-gpu", help="Use a simulated GPU (power, energy, clocks): runs anywhere.")]
GpuOpt = Annotated[Optional[int], typer.Option("--gpu", help="GPU index.")]
DeviceOpt = Annotated[Optional[str], typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", "-o", help="Directory for run directories (default: results/runs).")]
CooldownOpt = Annotated[Optional[float], typer.Option("--cooldown-max-s", help="Longest cool-down wait between tests (s).")]


def build_config(config: Optional[Path], **flags: Any) -> Any:
    """Load YAML then apply CLI overrides (flags named as dotted config keys)."""
    from luce_bench import config as cfgmod

    path = config if config is not None else _default_config()
    return cfgmod.load(path, {k.replace("__", "."): v for k, v in flags.items()})


def _common(config: Optional[Path], model: Optional[str], tests: Optional[str], reps: Optional[int],
            window_s: Optional[float], warmup_s: Optional[float], gap: Optional[float], fake_gpu: bool,
            gpu: Optional[int], device: Optional[str], out: Optional[Path], backends: Optional[str] = None,
            cooldown_max_s: Optional[float] = None) -> Any:
    return build_config(config, model=model, tests=tests, reps=reps, window_s=window_s, warmup_s=warmup_s,
                        rep_gap_max_s=gap, gpu__fake=True if fake_gpu else None, gpu__index=gpu, device=device,
                        output_dir=str(out) if out else None, backends=backends, cooldown__max_s=cooldown_max_s)


@app.command()
@handle_errors
def compare(
    baselines: Annotated[str, typer.Option("--baselines", "-b", help="Comma list of baselines: llamacpp, hf.")] = "llamacpp,hf",
    no_megakernel: Annotated[bool, typer.Option("--no-megakernel", help="Measure only the baselines.")] = False,
    config: ConfigOpt = None, model: ModelOpt = None, tests: TestsOpt = None, reps: RepsOpt = None,
    window_s: WindowOpt = None, warmup_s: WarmupOpt = None, rep_gap_max_s: GapOpt = None, fake_gpu: FakeOpt = False,
    gpu: GpuOpt = None, device: DeviceOpt = None, out: OutOpt = None, cooldown_max_s: CooldownOpt = None,
) -> None:
    """Measure the megakernel against the baselines: tok/s and tok/J per test, one run directory with CSVs and plots."""
    from luce_bench import session

    names = [b.strip() for b in baselines.split(",") if b.strip()]
    if not names and no_megakernel:
        raise UserError("nothing to measure: --baselines is empty and --no-megakernel is set")
    backends = ([] if no_megakernel else ["megakernel"]) + [b for b in names if b != "megakernel"]
    cfg = _common(config, model, tests, reps, window_s, warmup_s, rep_gap_max_s, fake_gpu, gpu, device, out,
                  ",".join(backends), cooldown_max_s)
    outcome = session.run(cfg, backends, "compare", optional=["megakernel"], console=_console())
    _finish(outcome)


@app.command()
@handle_errors
def bench(
    backend: Annotated[str, typer.Argument(help="Backend: megakernel, llamacpp, hf (sim needs --fake-gpu).")],
    config: ConfigOpt = None, model: ModelOpt = None, tests: TestsOpt = None, reps: RepsOpt = None,
    window_s: WindowOpt = None, warmup_s: WarmupOpt = None, rep_gap_max_s: GapOpt = None, fake_gpu: FakeOpt = False,
    gpu: GpuOpt = None, device: DeviceOpt = None, out: OutOpt = None, cooldown_max_s: CooldownOpt = None,
) -> None:
    """Measure one backend at the current power limit."""
    from luce_bench import session

    cfg = _common(config, model, tests, reps, window_s, warmup_s, rep_gap_max_s, fake_gpu, gpu, device, out, backend,
                  cooldown_max_s)
    _finish(session.run(cfg, [backend], f"bench-{backend}", console=_console()))


def _finish(outcome: Any) -> None:
    if outcome.failed:
        typer.echo(f"error: backends failed or unavailable: {', '.join(outcome.failed)} (see {outcome.run_dir})", err=True)
        raise typer.Exit(1)


@app.command()
@handle_errors
def report(
    run_dir: Annotated[Path, typer.Argument(help="A run directory (results/runs/...).")],
    llama_bench: Annotated[bool, typer.Option("--llama-bench", help="Also print the llama-bench style markdown table.")] = False,
) -> None:
    """Rebuild summary.csv, plots and report.md of a run from its CSVs alone."""
    from luce_bench import report as rep

    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    summary, meta, _ = rep.build(run_dir)
    rep.print_table(summary, meta, _console())
    if llama_bench:
        typer.echo(rep.llama_bench_table(summary, meta))
    typer.echo(f"wrote {run_dir / 'report.md'}")


@app.command()
@handle_errors
def info(gpu: GpuOpt = None, fake_gpu: FakeOpt = False, config: ConfigOpt = None) -> None:
    """Show the GPU, driver, CUDA, power limits, clocks, and which backends can run here (and why not)."""
    from luce_bench.info import show

    cfg = build_config(config)
    show(_console(), gpu_index=gpu if gpu is not None else cfg.gpu.index, fake=cfg.gpu.fake_preset if fake_gpu else False)


@model_app.command("prepare")
@handle_errors
def model_prepare(
    size: Annotated[str, typer.Option("--size", help="synthetic-0.8b or tiny.")] = "synthetic-0.8b",
    seed: Annotated[int, typer.Option("--seed", help="Generator seed.")] = 0,
) -> None:
    """Write a synthetic checkpoint (exact Qwen3.5 shapes, fixed seed) into the user cache, once."""
    from luce_bench.model.resolve import resolve_model
    from luce_bench.model.spec import SIZES

    if size not in SIZES:
        raise UserError(f"unknown synthetic size {size!r}; known: {', '.join(SIZES)}")
    spec = resolve_model(size, seed=seed)
    typer.echo(f"{size}: {spec.config.num_params():,} params at {spec.path}")


def _mount_optional() -> None:
    # Commands that live in their own modules; a missing module must not break --help of the rest.
    try:
        from luce_bench import cli_sweep

        app.command("sweep")(handle_errors(cli_sweep.sweep))
        app.command("restore")(handle_errors(cli_sweep.restore))
    except ImportError:
        pass
    try:
        from luce_bench.kernels.cli import app as kernel_app

        for command in kernel_app.registered_commands:  # same one-line errors as every other command
            command.callback = handle_errors(command.callback)
        app.add_typer(kernel_app, name="kernel", help="Build the CUDA megakernel.")
    except ImportError:
        pass


_mount_optional()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except UserError as exc:  # raised outside a command (e.g. while mounting)
        if _state["debug"]:
            raise
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
