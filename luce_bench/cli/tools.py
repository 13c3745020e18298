"""`report`, `info`, `restore`, `publish` and `model prepare`: the commands around a run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from luce_bench.cli.options import ConfigOpt, FakeOpt, GpuOpt, PresetOpt, ReadOnlyOpt, console, load_config, path_param
from luce_bench.errors import UserError
from luce_bench.files import existing_dir, shell_arg


def _readme_opt(help_text: str) -> Any:
    return Annotated[Optional[Path], typer.Option("--readme", parser=path_param, help=help_text)]


_README = "The README with the results block (default: the one next to the results tree)"
ReadmeOpt = _readme_opt(f"{_README}; with --check only.")
PublishReadmeOpt = _readme_opt(f"{_README}, whose block publish regenerates.")


def _readme_given(readme: Path | None) -> None:
    """A --readme that was named must be an existing file (the default one may be absent: the block is skipped)."""
    if readme is not None and not readme.is_file():
        raise UserError(f"--readme {readme}: no such file (leave it out to use the README next to the results tree)")


def report(
    run_dir: Annotated[
        Path,
        typer.Argument(parser=path_param, help="A run directory (results/runs/...); with --check, a results tree."),
    ],
    llama_bench: Annotated[
        bool, typer.Option("--llama-bench", help="Also print the llama-bench style markdown table.")
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check a results tree instead: every run has meta.json, CSVs follow the schema, summaries, reports "
            "and the generated tables match the CSVs. One line per problem; exit 1 if any.",
        ),
    ] = False,
    readme: ReadmeOpt = None,
    independent: Annotated[
        Optional[Path],
        typer.Option(
            "--independent",
            parser=path_param,
            help="An energy log of scripts/nvml_energy_log.py taken beside the run: compare every window's energy "
            "with it (printed, and written to independent.md; the log is kept in the run directory and published "
            "with it).",
        ),
    ] = None,
) -> None:
    """Rebuild summary.csv, plots and report.md of a run from its CSVs alone (or --check a results tree)."""
    given = [flag for flag, on in (("--check", check), ("--independent", independent is not None)) if on]
    given += ["--llama-bench"] if llama_bench else []
    if len(given) > 1:  # each is its own task; the others would be ignored without a word
        raise UserError(f"{' and '.join(given)} do different things: give one of them")
    if readme is not None and not check:
        raise UserError("--readme applies to --check only (publish takes its own --readme)")
    if check:
        _check(run_dir, readme)
        return
    if independent is not None:
        _independent(run_dir, independent)
        return
    from luce_bench.report import llama_bench_table, print_report, render

    existing_dir(run_dir, "run directory")
    _not_a_tree(run_dir)
    rep = render(run_dir)
    print_report(rep, console())
    if llama_bench:
        typer.echo(llama_bench_table(rep.summary, rep.meta))
    typer.echo(f"wrote {run_dir / 'report.md'}")


def _not_a_tree(run_dir: Path) -> None:
    """A folder of runs (results/, results/runs/) given where one run is meant: one line naming a run in it."""
    from luce_bench.published import run_dirs

    if (run_dir / "runs.csv").is_file():
        return
    runs = sorted(run_dir.glob("*/runs.csv")) or sorted(run_dir.glob("*/*/runs.csv"))
    if not runs:
        return  # (render says what is missing)
    tree = " (a results tree: luce-bench report --check checks all of it)" if run_dirs(run_dir) else ""
    raise UserError(
        f"{run_dir} holds run directories, not a run: pass one of them, e.g. {shell_arg(runs[-1].parent)}{tree}"
    )


def _independent(run_dir: Path, log: Path) -> None:
    from luce_bench.independent import REPORT, keep

    for line in keep(run_dir, log):
        typer.echo(line)
    typer.echo(f"wrote {run_dir / REPORT} (the log is kept beside it)")


def _check(results: Path, readme: Path | None) -> None:
    from luce_bench.check import check
    from luce_bench.publish import readme_of

    _readme_given(readme)
    problems = check(results, readme or readme_of(results))
    for line in problems:
        typer.echo(line, err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{results}: every run, summary, report and generated table agrees with its CSVs")


def info(
    ctx: typer.Context,
    gpu: GpuOpt = None,
    fake_gpu: FakeOpt = False,
    fake_preset: PresetOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the GPU, driver, CUDA, power limits, clocks (supported ones too, read-only), and which backends can run."""
    from luce_bench.info import show

    cfg = load_config(ctx.params)
    show(console(), gpu_index=cfg.gpu.index, fake_preset=cfg.gpu.fake_preset if cfg.gpu.fake else None)


def restore(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would be restored; change nothing.")] = False,
    read_only: ReadOnlyOpt = False,
) -> None:
    """Put back the original power limit, SM clock lock and persistence mode recorded by an interrupted sweep.

    A journal whose sweep is still running is left to it (said on stderr), and one that cannot be replayed is kept.
    Exit codes: 0 restored (or nothing to restore), 1 a journal left to its running sweep, 2 a journal that cannot be
    replayed (the error says why).
    """
    from luce_bench.files import state_dir
    from luce_bench.gpu import enable_read_only_mode
    from luce_bench.gpu.journal import list_journals
    from luce_bench.gpu.restore import restore_from_journals

    if read_only:
        enable_read_only_mode()
    if not list_journals():
        typer.echo(f"nothing to restore: no power-limit journal in {state_dir()}")
        return
    lines = restore_from_journals(dry_run=dry_run)
    for line in lines:
        typer.echo(line, err=line.startswith("skipped"))
    if any(line.startswith("skipped") for line in lines):
        raise typer.Exit(1)


def publish(
    run_dir: Annotated[
        Optional[Path],
        typer.Argument(parser=path_param, help="A run directory to publish (omit to only regenerate the tables)."),
    ] = None,
    name: Annotated[
        Optional[str], typer.Option("--name", help="Folder name after the date (default: the run's, e.g. compare).")
    ] = None,
    results: Annotated[Path, typer.Option("--results", parser=path_param, help="The results tree.")] = Path("results"),
    readme: PublishReadmeOpt = None,
    allow_failures: Annotated[
        bool,
        typer.Option(
            "--allow-failures",
            help="Publish a run in which a backend failed: its measured rows, with the failures listed beside them.",
        ),
    ] = False,
) -> None:
    """Commit a real run into results/<gpu>/<date>-<name>/ and regenerate the tables from the committed CSVs."""
    from luce_bench.publish import publish as publish_run
    from luce_bench.publish import readme_of, write_tables
    from luce_bench.published_tables import check_block

    new_tree = run_dir is not None and not results.exists()
    if not new_tree:  # (publishing a run may start a new tree; regenerating needs one)
        existing_dir(results, "results tree (--results)")
    elif not results.parent.is_dir():  # a mistyped path would make folders from wherever it starts
        raise UserError(
            f"--results {results}: no such folder, and its parent {results.parent} does not exist either "
            "(a new results tree is started only inside an existing folder)"
        )
    _readme_given(readme)
    if run_dir is None:
        from luce_bench.published import run_dirs

        if not run_dirs(results):  # e.g. a folder's results/ of ad-hoc runs: no tables to make, no README to write
            raise UserError(
                f"{results} is not a results tree: no <gpu>/<run>/ folder in it holds a published run, so there are "
                "no tables to regenerate (publish a run with `luce-bench publish RUN_DIR`)"
            )
    target = readme or readme_of(results)
    check_block(target)  # a README without its block is refused before a run is committed
    if run_dir is not None:
        typer.echo(f"published to {publish_run(run_dir, results, name, allow_failures)}")
        if new_tree:
            typer.echo(f"started a new results tree at {results}")
    for path, changed in write_tables(results, target).items():
        typer.echo(f"wrote {path}" if changed else f"{path} is up to date")
    if not target.is_file():
        typer.echo(f"no {target}: the README's results block was not written (--readme names another)")


def model_prepare(
    size: Annotated[
        str, typer.Option("--size", "--model", help="synthetic-0.8b or tiny (--model as the other commands name it).")
    ] = "synthetic-0.8b",
    seed: Annotated[int, typer.Option("--seed", help="Generator seed.")] = 0,
) -> None:
    """Write a synthetic checkpoint (fixed seed) into the user cache, once.

    synthetic-0.8b has Qwen3.5-0.8B's exact shapes; tiny is a small model of the same architecture (4 layers). The
    cache is $LUCE_BENCH_CACHE, else the user cache directory (~/.cache/luce-bench on Linux).

    Exit codes: 0 written (or already there), 2 bad input, 4 the cache could not be written, 130 interrupted.
    """
    from luce_bench.model.resolve import resolve_model
    from luce_bench.model.spec import SIZES

    if size == "auto":
        raise UserError(
            "model prepare writes one synthetic checkpoint: give synthetic-0.8b or tiny ('auto' is a run's choice "
            "between them: synthetic-0.8b with a CUDA GPU, tiny otherwise)"
        )
    if size not in SIZES:
        raise UserError(
            f"unknown synthetic size {size!r}; known: {', '.join(SIZES)} (a real checkpoint, a hub id or a folder, "
            "needs no preparing: give it to --model of compare, bench or sweep)"
        )
    if not -(2**63) <= seed < 2**64:
        raise UserError(f"--seed {seed} is out of range [-2**63, 2**64 - 1]")
    spec = resolve_model(size, seed=seed)
    typer.echo(f"{size}: {spec.config.num_params():,} params at {spec.path}")
