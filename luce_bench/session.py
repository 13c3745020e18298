"""One measured run (`compare` / `bench`): open the GPU read-only, sample it, load each backend once, run the tests,
write the run directory and its report. Never sets a power limit: the GPU is opened in read-only mode.
"""

from __future__ import annotations

import contextlib
import platform
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from luce_bench import __version__
from luce_bench.backends import get as get_backend
from luce_bench.backends.base import Backend, ModelSpec
from luce_bench.config import BenchConfig
from luce_bench.errors import UserError
from luce_bench.results import RunWriter
from luce_bench.runner import Limit, Measure, Runner


def git_commit() -> str | None:
    """The luce-bench checkout's commit (with -dirty); `LUCE_BENCH_GIT_COMMIT` for copies without .git; else None."""
    import os

    if os.environ.get("LUCE_BENCH_GIT_COMMIT"):
        return os.environ["LUCE_BENCH_GIT_COMMIT"]
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=here,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def cuda_gpu_present() -> bool:
    """True if an NVIDIA GPU answers through NVML (cheap; no torch import)."""
    try:
        from luce_bench.gpu import open_gpu

        gpu = open_gpu(0, read_only=True)
        gpu.close()
        return True
    except Exception:
        return False


def resolve_model_name(cfg: BenchConfig, console: Any) -> str:
    """`auto` means synthetic-0.8b with a GPU and the tiny synthetic model on CPU-only machines."""
    if cfg.model != "auto":
        return cfg.model
    if not cfg.gpu.fake and cuda_gpu_present():
        return "synthetic-0.8b"
    console.print("[yellow]note:[/yellow] no CUDA GPU in use: running the CPU-capable backends on the tiny synthetic "
                  "model (same architecture, small shapes). Use --model synthetic-0.8b to force the full size.")
    return "tiny"


def gpu_meta(gpu: Any) -> dict[str, Any]:
    """Provenance of the GPU (measurement.md rule 14); fields that cannot be read are left out."""
    meta: dict[str, Any] = {}
    probes = {
        "name": gpu.name, "uuid": gpu.uuid, "driver": gpu.driver_version, "cuda_driver": gpu.cuda_driver_version,
        "compute_capability": gpu.compute_capability, "persistence_mode": gpu.persistence_mode,
        "temperature_c": gpu.temperature_c, "clocks_mhz": gpu.clocks_mhz,
    }
    for key, fn in probes.items():
        with contextlib.suppress(Exception):
            meta[key] = fn()
    with contextlib.suppress(Exception):
        lo, hi = gpu.power_limit_constraints_mw()
        meta.update(power_limit_min_w=lo / 1000, power_limit_max_w=hi / 1000)
    with contextlib.suppress(Exception):
        meta["power_limit_default_w"] = gpu.default_power_limit_mw() / 1000
    with contextlib.suppress(Exception):
        meta["power_limit_w"] = gpu.power_limit_mw() / 1000
    return meta


@contextlib.contextmanager
def open_measure(cfg: BenchConfig) -> Iterator[Measure]:
    """GPU (read-only) + sampler + RAPL for a run; energy stays empty, with the reason, when NVML is unavailable."""
    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.base import GPUError

    measure = Measure(simulated=cfg.gpu.fake)
    try:
        measure.gpu = open_gpu(cfg.gpu.index, fake=cfg.gpu.fake_preset if cfg.gpu.fake else False, read_only=True)
    except GPUError as exc:
        measure.energy_note = f"no NVML GPU energy ({exc})"
    with contextlib.suppress(Exception):
        from luce_bench.cpu_energy import Rapl

        if Rapl.available() is None:
            measure.rapl = Rapl()
    if measure.gpu is not None:
        from luce_bench.sampler import Sampler

        measure.sampler = Sampler(measure.gpu, period_s=cfg.sampler.period_s)
        measure.sampler.start()
    try:
        yield measure
    finally:
        if measure.sampler is not None:
            measure.sampler.stop()
        if measure.gpu is not None:
            measure.gpu.close()


@dataclass
class Outcome:
    """What a run produced."""

    run_dir: Path
    failed: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def run(cfg: BenchConfig, backends: Sequence[str], name: str, optional: Sequence[str] = (), console: Any = None,
        backend_kwargs: dict[str, dict[str, Any]] | None = None) -> Outcome:
    """Measure `backends` on the configured model. Backends in `optional` are skipped quietly if unavailable."""
    from rich.console import Console

    from luce_bench.model.resolve import resolve_model

    console = console or Console()
    classes = {b: _backend_class(b) for b in backends}  # unknown names fail before anything starts
    model = resolve_model(resolve_model_name(cfg, console), seed=cfg.model_seed)
    check_tests_fit(cfg, model)
    with open_measure(cfg) as measure:
        for b, cls in classes.items():  # a backend asked for by name that cannot run here is bad input
            reason = cls if isinstance(cls, str) else cls.unavailable_reason()
            if reason and b not in optional:
                raise UserError(f"backend {b} cannot run here: {reason}")
        writer = _create_writer(cfg, name)
        outcome = Outcome(writer.dir)
        try:
            _measure_all(cfg, model, measure, writer, classes, console, outcome, optional, backend_kwargs)
        except UserError:
            writer.close()
            if not writer.runs:  # nothing measured: leave no run directory behind
                shutil.rmtree(writer.dir, ignore_errors=True)
            raise
        except KeyboardInterrupt:
            writer.close()
            if writer.runs:
                from luce_bench.report import build

                build(writer.dir)
                console.print(f"interrupted: {len(writer.runs)} finished repetitions kept in {writer.dir}")
            raise
        finally:
            writer.close()
    from luce_bench.report import build, print_table

    summary, meta, _ = build(writer.dir)
    print_table(summary, meta, console)
    console.print(f"results: {writer.dir}")
    return outcome


def _measure_all(cfg: BenchConfig, model: ModelSpec, measure: Measure, writer: RunWriter, classes: dict[str, Any],
                 console: Any, outcome: Outcome, optional: Sequence[str],
                 backend_kwargs: dict[str, dict[str, Any]] | None) -> None:
    writer.write_meta(base_meta(cfg, model, measure))
    runner = Runner(cfg, model, measure, writer, on_progress=None, on_status=console.print)
    limit = current_limit(measure)
    backend_meta: dict[str, Any] = {}
    for bname, cls in classes.items():
        backend_meta[bname] = _run_one(runner, bname, cls, model, cfg, console, outcome, optional,
                                       (backend_kwargs or default_backend_kwargs(cfg)).get(bname, {}), limit)
        writer.write_meta({"backends": backend_meta})
    runner.flush_samples()
    writer.write_meta({"token_agreement": token_agreement(runner.first_tokens), "first_tokens": runner.first_tokens,
                       "sampler": measure.sampler.jitter_ms() if measure.sampler is not None else None})


MAX_TEST_TOKENS = 131072


def check_tests_fit(cfg: BenchConfig, model: ModelSpec) -> None:
    """Refuse tests longer than the model's positions (or than MAX_TEST_TOKENS) before anything is loaded."""
    limit = min(model.config.max_position_embeddings, MAX_TEST_TOKENS)
    for t in cfg.test_specs:
        if t.n + 1 > limit:
            raise UserError(f"test {t.name} needs {t.n + 1} positions; {model.name} allows at most {limit}")


def current_limit(measure: Measure) -> Limit:
    """The enforced limit the run measures under (compare/bench never change it)."""
    if measure.gpu is None:
        return Limit()
    try:
        return Limit(enforced_w=measure.gpu.power_limit_mw() / 1000.0)
    except Exception:  # noqa: BLE001 - the limit is provenance, not a precondition
        return Limit()


def _create_writer(cfg: BenchConfig, name: str) -> RunWriter:
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a directory")
    try:
        return RunWriter.create(out, name)
    except OSError as exc:
        raise UserError(f"cannot create a run directory under {out}: {exc.strerror or exc}") from exc


def default_backend_kwargs(cfg: BenchConfig) -> dict[str, dict[str, Any]]:
    """Per-backend options derived from the tests: llama.cpp's context and batch sizes."""
    longest = max(t.n for t in cfg.test_specs) + 1
    n_ctx = max(512, -(-(longest + 64) // 256) * 256)
    n_ubatch = min(2048, max([t.n for t in cfg.test_specs if t.kind == "pp"] or [512]))  # one ubatch per pp test
    return {"llamacpp": {"n_ctx": n_ctx, "n_batch": max(2048, n_ubatch), "n_ubatch": n_ubatch}}


def _backend_class(name: str) -> type[Backend] | str:
    """The backend class, or the reason it cannot even be imported."""
    try:
        return get_backend(name)
    except ImportError as exc:
        return f"cannot import the {name} backend ({exc})"


def _run_one(runner: Runner, bname: str, cls: type[Backend] | str, model: ModelSpec, cfg: BenchConfig, console: Any,
             outcome: Outcome, optional: Sequence[str], kwargs: dict[str, Any], limit: Limit) -> dict[str, Any]:
    reason = cls if isinstance(cls, str) else cls.unavailable_reason()
    if reason:
        outcome.skipped[bname] = reason
        if bname not in optional:
            outcome.failed.append(bname)
        console.print(f"[yellow]skipping {bname}:[/yellow] {reason}")
        return {"skipped": reason}
    from luce_bench.backends import create

    backend = create(bname, **kwargs)
    try:
        with console.status(f"loading {bname} with {model.name}…"):
            backend.load(model, cfg.device)
        with _progress(console) as on_progress:
            runner.on_progress = on_progress
            runner.run_backend(backend, limit)
        info = backend.info()
    except UserError:
        raise
    except Exception as exc:  # one backend failing must not lose the others' results
        outcome.failed.append(bname)
        console.print(f"[red]{bname} failed:[/red] {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}
    finally:
        backend.close()
    return info


@contextlib.contextmanager
def _progress(console: Any) -> Iterator[Any]:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, Any] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        def on_progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(f"{label} repetitions", total=total)
            bar.update(tasks[label], completed=done)

        yield on_progress


def token_agreement(first_tokens: dict[str, list[int]]) -> dict[str, str]:
    """For each tg test, how many leading greedy tokens each backend shares with the first backend measured."""
    out: dict[str, str] = {}
    by_test: dict[str, list[tuple[str, list[int]]]] = {}
    for label, toks in first_tokens.items():
        backend, test = label.split(" ", 1)
        by_test.setdefault(test, []).append((backend, toks))
    for test, entries in by_test.items():
        ref_name, ref = entries[0]
        for name, toks in entries[1:]:
            same = next((i for i, (a, b) in enumerate(zip(ref, toks)) if a != b), min(len(ref), len(toks)))
            out[f"{test} {name} vs {ref_name}"] = f"{same}/{min(len(ref), len(toks))} leading tokens equal"
    return out


def base_meta(cfg: BenchConfig, model: ModelSpec, measure: Measure) -> dict[str, Any]:
    versions: dict[str, Any] = {"luce_bench": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "llama_cpp_python", "nvidia-ml-py", "gguf"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            versions[pkg] = version(pkg.replace("_", "-"))
    bytes_bf16 = model.config.num_params() * 2
    return {
        "luce_bench_version": __version__, "git_commit": git_commit(), "host": platform.node(),
        "platform": platform.platform(), "versions": versions, "config": cfg.to_dict(),
        "model": {"name": model.name, "path": str(model.path), "synthetic": model.synthetic, "seed": model.seed,
                  "n_params": model.config.num_params(), "bytes": bytes_bf16, "type": "qwen35 bf16"},
        "gpu": gpu_meta(measure.gpu) if measure.gpu is not None else {},
        "energy": {"available": measure.gpu is not None, "simulated": measure.simulated,
                   "reason": measure.energy_note or ("simulated GPU" if measure.simulated else "NVML energy counter"),
                   "cpu_rapl": measure.rapl is not None},
        "method": {"window_s": cfg.window_s, "reps": cfg.reps, "warmup_s": cfg.warmup_s,
                   "sampler_period_s": cfg.sampler.period_s, "energy_source": "nvmlDeviceGetTotalEnergyConsumption delta",
                   "power_samples": "field 186 (instant)"},
    }
