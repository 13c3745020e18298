"""`luce-bench publish`: commit a run into the results tree, then regenerate the tables from the committed CSVs.

A run goes to `<results>/<gpu>/<date>-<name>/` (date: UTC day of its first window): runs.csv, meta.json,
samples.csv.gz, an independent reader's energy log where the run kept one (`report --independent`), and, rebuilt
from those by the report code, summary.csv, report.md, the plots and independent.md. Only what a reader
can trust is taken: a finished run on a real GPU with energy, at the limit in force (compare or bench; sweeps stay on
the user's card), with luce-bench's git commit recorded. A run that finished with a failed backend is taken only with
`--allow-failures`: its rows are real, and meta.json's `published_with_failures` lists what failed, which the
generated tables print beside the numbers. A run that recorded none (a copy of the tree without .git)
gets it at publish time from `LUCE_BENCH_GIT_COMMIT`, else from this checkout, and meta.json says which. The folder
is built aside and renamed into place: nothing is half written; an existing folder is never replaced, and a run that
the tree holds already (the same GPU and rows, under any name) is not taken again.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.files import atomic_write, existing_dir, host_tag, pid_alive, remove_stale
from luce_bench.independent import LOG as INDEPENDENT_LOG
from luce_bench.independent import REPORT as INDEPENDENT_REPORT
from luce_bench.independent import report_text
from luce_bench.records import RunRecord, read_csv
from luce_bench.results import META, RUNS, SAMPLES, ran_simulated, read_meta, repeated_row

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,79}$")


def slug(text: str) -> str:
    """Lower-case words joined by "-": "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def gpu_folder(meta: dict[str, Any]) -> str:
    """The folder of results/ that a run's GPU (meta.json) publishes into, e.g. "nvidia-h200"."""
    return slug(str((meta.get("gpu") or {}).get("name") or "no-gpu"))


def refusal(run_dir: Path, meta: dict[str, Any], runs: list[RunRecord], allow_failures: bool = False) -> str | None:
    """Why `run_dir` must not be committed, or None."""
    from luce_bench.status import FAILURES, FINISHED, describe, effective_state, read_status

    energy = meta.get("energy", {})
    if not runs:
        return "it has no measured rows"
    if repeated := repeated_row(runs):
        return f"its {RUNS} {repeated}"
    if not meta:
        return "it has no meta.json (GPU, driver, versions, commit)"
    if ran_simulated(meta, runs):
        return "it ran on the simulated GPU (--fake-gpu); committed runs are real measurements only"
    if not energy.get("available") or not meta.get("gpu", {}).get("name"):
        return "it has no GPU energy (no NVML GPU)"
    if meta.get("sweep"):
        return "it is a sweep; published tables hold runs at the limit in force (compare, bench)"
    status = read_status(run_dir)
    state = effective_state(status) if status is not None else FINISHED
    if state == FAILURES and allow_failures:
        return None
    if state != FINISHED:
        hint = " (--allow-failures publishes its rows and lists the failures)" if state == FAILURES else ""
        return f"it did not finish cleanly: {describe(status, run_dir)}{hint}"
    return None


def _failures(run_dir: Path) -> list[str]:
    """What failed in a run that finished with failures (status.json), for the tables to print; [] for any other."""
    from luce_bench.status import FAILURES, effective_state, read_status

    status = read_status(run_dir)
    if status is None or effective_state(status) != FAILURES:
        return []
    return [str(f) for f in status.get("failed", [])] or [str(status.get("reason", "a backend failed"))]


def _with_commit(meta: dict[str, Any]) -> dict[str, Any]:
    """meta.json with luce-bench's commit: the run's own, else LUCE_BENCH_GIT_COMMIT or this checkout's."""
    from luce_bench.provenance import COMMIT_ENV, commit_and_source

    if meta.get("git_commit"):
        return meta
    commit, source = commit_and_source()
    if not commit:
        raise UserError(
            f"the run recorded no git commit and none is known here: set {COMMIT_ENV} to the commit it ran "
            "(or publish from the git checkout it ran from)"
        )
    return {**meta, "git_commit": commit, "git_commit_source": f"luce-bench publish ({source}); the run recorded none"}


STAGE_PATTERN = r"\.publish-(?P<pid>\d+)-(?P<host>[0-9a-f]{4})-\w+"  # a publish's staging folder in results/<gpu>/


def publishing_now(stage: Path) -> bool:
    """Whether `stage` (a `.publish-*` folder) is the staging folder of a publish running on this machine now."""
    m = re.fullmatch(STAGE_PATTERN, stage.name)
    return bool(m) and m["host"] == host_tag() and pid_alive(int(m["pid"]))


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A folder named like `final` in a temporary sibling directory, renamed onto `final` on success."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(final.parent, STAGE_PATTERN)  # a killed publish's
    tmp = Path(tempfile.mkdtemp(prefix=f".publish-{os.getpid()}-{host_tag()}-", dir=final.parent))
    try:
        stage = tmp / final.name
        stage.mkdir()
        yield stage
        stage.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _row_keys(runs: list[RunRecord]) -> set[tuple[str, str, str, int]]:
    """What identifies a run's rows: when each window closed, and which backend, test and repetition it measured."""
    return {(r.test_time, r.backend, r.test, r.rep) for r in runs}


def published_as(meta: dict[str, Any], runs: list[RunRecord], results: Path) -> Path | None:
    """The folder under `results` that holds this run already (the same GPU and any row of it), or None.

    A copy of a run, or the run itself published under another name, would list the same measurements twice in the
    tables; a new run on the same GPU never shares a window's closing time with an older one.
    """
    uuid, keys = meta.get("gpu", {}).get("uuid"), _row_keys(runs)
    for folder in sorted(p.parent for p in results.glob(f"*/*/{RUNS}")):
        same_gpu = read_meta(folder).get("gpu", {}).get("uuid") == uuid
        if same_gpu and keys & _row_keys(read_csv(folder / RUNS, RunRecord)):
            return folder
    return None


def destination(run_dir: Path, results: Path, name: str | None) -> Path:
    """`results/<gpu>/<date>-<name>` for the run in `run_dir` (UserError for a bad name or a taken folder)."""
    meta = read_meta(run_dir)
    runs = read_csv(run_dir / RUNS, RunRecord)
    if earlier := published_as(meta, runs, results):  # first: no other name would do
        raise UserError(f"{run_dir} is published already, as {earlier.relative_to(results).as_posix()}")
    rule = "use at most 80 lower-case letters, digits, '.', '_' and '-', the first a letter or digit (e.g. compare-v11)"
    from_folder = name is None
    if from_folder:
        name = run_dir.resolve().name.split("-", 1)[-1].lower()  # (resolved: `publish .` names the folder)
    if not _NAME.fullmatch(name):
        if from_folder:
            raise UserError(f"the name taken from the run's folder, {name!r}, cannot be used: give --name ({rule})")
        raise UserError(f"--name {name!r}: {rule}")
    date = min(r.test_time for r in runs)[:10].replace("-", "") if runs else "nodate"
    dest = results / gpu_folder(meta) / f"{date}-{name}"
    if dest.exists():
        raise UserError(f"{dest} exists already: published runs are never replaced; pick another --name")
    return dest


def publish(run_dir: Path, results: Path, name: str | None = None, allow_failures: bool = False) -> Path:
    """Commit `run_dir` under `results` (see the module docstring) and return its new folder."""
    from luce_bench.report import render

    existing_dir(run_dir, "run directory")
    if not (run_dir / RUNS).is_file():
        raise UserError(f"{run_dir} is not a luce-bench run directory (no runs.csv)")
    meta, runs = read_meta(run_dir), read_csv(run_dir / RUNS, RunRecord)
    why = refusal(run_dir, meta, runs, allow_failures)
    if why:
        raise UserError(f"cannot publish {run_dir}: {why}")
    meta = _with_commit(meta)
    failures = _failures(run_dir)  # allowed only by --allow-failures (refusal)
    if failures:
        meta = {**meta, "published_with_failures": failures}
    dest = destination(run_dir, results, name)
    with _staged(dest) as stage:
        shutil.copy2(run_dir / RUNS, stage / RUNS)
        (stage / META).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        samples = run_dir / SAMPLES
        if samples.is_file():
            with samples.open("rb") as src, gzip.GzipFile(stage / f"{SAMPLES}.gz", "wb", mtime=0) as out:
                shutil.copyfileobj(src, out)
        elif (run_dir / f"{SAMPLES}.gz").is_file():
            shutil.copy2(run_dir / f"{SAMPLES}.gz", stage / f"{SAMPLES}.gz")
        if (run_dir / INDEPENDENT_LOG).is_file():
            shutil.copy2(run_dir / INDEPENDENT_LOG, stage / INDEPENDENT_LOG)
            (stage / INDEPENDENT_REPORT).write_text(report_text(stage)[0])
        render(stage)  # summary.csv, plots and report.md from the files above, as `report --check` rebuilds them
    return dest


def readme_of(results: Path) -> Path:
    """The project README the results block lives in: next to the results folder."""
    return results.resolve().parent / "README.md"


def write_tables(results: Path, readme: Path | None) -> dict[Path, bool]:
    """Regenerate results/README.md (and the README block, where that README exists) from the committed CSVs.

    Returns each generated file and whether it changed (an unchanged file is not rewritten).
    """
    from luce_bench.published_tables import expected

    docs = expected(results, readme)  # everything is generated before anything is written
    changed = {path: not path.is_file() or path.read_text() != text for path, text in docs.items()}
    for path, text in docs.items():
        if changed[path]:
            atomic_write(path, text)
    return changed
