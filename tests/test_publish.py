"""`luce-bench publish`: a real run (a committed H100 run as input) goes into the results tree with its commit.

The input run is rebuilt from `results/nvidia-h100-80gb-hbm3/20261124-compare-v10-tagraw` (runs.csv, meta.json,
samples): real measurements, so publishing it again must give the very summary committed there.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import simulated_compare
from typer.testing import CliRunner

from luce_bench.cli import app

ROOT = Path(__file__).resolve().parent.parent
H100_RUN = ROOT / "results" / "nvidia-h100-80gb-hbm3" / "20261124-compare-v10-tagraw"
runner = CliRunner()


def _run_dir(tmp_path: Path, **meta_changes) -> Path:
    """The committed H100 run as luce-bench wrote it on the GPU machine (samples.csv not yet gzipped)."""
    run = tmp_path / "20261124T152746Z-compare"
    run.mkdir()
    shutil.copy(H100_RUN / "runs.csv", run / "runs.csv")
    (run / "samples.csv").write_bytes(gzip.decompress((H100_RUN / "samples.csv.gz").read_bytes()))
    meta = json.loads((H100_RUN / "meta.json").read_text())
    for key, value in meta_changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    (run / "meta.json").write_text(json.dumps(meta))
    return run


def _publish(run: Path, results: Path, *extra: str):
    return runner.invoke(app, ["publish", str(run), "--results", str(results), *extra])


def test_a_run_without_a_commit_gets_the_one_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_GIT_COMMIT", "1b915c3aa0d2")
    run, results = _run_dir(tmp_path, git_commit=None), tmp_path / "results"
    out = _publish(run, results, "--name", "h100-stock")
    assert out.exit_code == 0, out.output
    dest = results / "nvidia-h100-80gb-hbm3" / "20261124-h100-stock"
    assert sorted(p.name for p in dest.iterdir()) == [
        "meta.json",
        "report.md",
        "runs.csv",
        "samples.csv.gz",
        "summary.csv",
        "timeline.png",
        "tok_j.png",
        "tok_s.png",
    ]
    meta = json.loads((dest / "meta.json").read_text())
    assert meta["git_commit"] == "1b915c3aa0d2"
    assert meta["git_commit_source"] == "luce-bench publish (LUCE_BENCH_GIT_COMMIT); the run recorded none"
    assert (dest / "summary.csv").read_bytes() == (H100_RUN / "summary.csv").read_bytes()
    assert gzip.decompress((dest / "samples.csv.gz").read_bytes()) == (run / "samples.csv").read_bytes()
    assert "# luce-bench report: 20261124-h100-stock" in (dest / "report.md").read_text()
    index = (results / "README.md").read_text()
    assert (
        "- luce-bench commit: 1b915c3aa0d2 (from luce-bench publish (LUCE_BENCH_GIT_COMMIT); the run recorded none)"
        in index
    )
    assert "| megakernel | tg128 | 1,456.8 | 503 | 2.898 | 3.20× | 2.17× | 66.91× | 18.05× |" in index
    assert runner.invoke(app, ["report", "--check", str(results)]).exit_code == 0
    again = runner.invoke(app, ["publish", "--results", str(results)])  # nothing new: nothing rewritten
    assert again.exit_code == 0 and again.output.startswith(f"{results / 'README.md'} is up to date\n"), again.output


def test_a_run_keeps_its_own_commit_and_is_named_after_its_command(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_GIT_COMMIT", "not-this-one")
    monkeypatch.chdir(_run_dir(tmp_path))
    out = _publish(Path("."), tmp_path / "results")  # `publish .` from inside the run: named after its folder
    assert out.exit_code == 0, out.output
    meta = json.loads((tmp_path / "results" / "nvidia-h100-80gb-hbm3" / "20261124-compare" / "meta.json").read_text())
    assert meta["git_commit"] == "70a0e474e9d11eb5420b91e22db113db4934c9c9" and "git_commit_source" not in meta


def _simulated_run(tmp_path: Path) -> Path:
    config = "gpu:\n  fake_clock: virtual\ntests: [tg8]\nreps: 1\nwarmup_s: 0.1\nwindow_s: 0.5\n"
    return simulated_compare(tmp_path, config)


def _edit_meta(run: Path, **changes) -> None:
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, **changes}))


@pytest.mark.tries(
    "bad input",
    "publish: runs it must refuse (simulated, sweep, no meta, no commit, taken, bad name, published already)",
)
@pytest.mark.parametrize(
    "case",
    [
        "simulated",
        "sweep",
        "no-meta",
        "no-energy",
        "no-commit",
        "taken",
        "bad-name",
        "long-name",
        "newline-name",
        "bad-folder-name",
        "again",
        "copy-again",
        "not-a-run",
        "no-such-run",
        "unfinished",
        "results-typo",
        "readme-without-block",
    ],
)
def test_publish_refuses_in_one_line_and_writes_nothing(case, tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LUCE_BENCH_GIT_COMMIT", raising=False)
    results = tmp_path / "results"
    extra: list[str] = []
    run = _run_dir(tmp_path)
    if case == "simulated":
        run, message = _simulated_run(tmp_path), "ran on the simulated GPU"
    elif case == "sweep":
        _edit_meta(run, sweep={"limits_requested_w": [300]})
        message = "it is a sweep"
    elif case == "no-meta":
        (run / "meta.json").unlink()
        message = "it has no meta.json"
    elif case == "no-energy":
        _edit_meta(run, energy={"available": False, "reason": "no NVML"})
        message = "it has no GPU energy"
    elif case == "no-commit":
        _edit_meta(run, git_commit=None)
        monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))  # no git: the checkout's commit is unknown
        message = "recorded no git commit and none is known here: set LUCE_BENCH_GIT_COMMIT"
    elif case == "taken":
        (results / "nvidia-h100-80gb-hbm3" / "20261124-compare").mkdir(parents=True)
        message = "exists already: published runs are never replaced"
    elif case == "bad-name":
        extra, message = ["--name", "H200 stock"], "--name 'H200 stock': use at most 80 lower-case letters"
    elif case == "long-name":
        extra, message = ["--name", "a" * 81], f"--name '{'a' * 81}': use at most 80 lower-case letters"
    elif case == "newline-name":  # ($ of the pattern matched before a trailing line break)
        extra, message = ["--name", "abc\n"], "--name 'abc\\n': use at most 80 lower-case letters"
    elif case == "bad-folder-name":
        run = run.rename(tmp_path / "My Run")
        message = (
            "the name taken from the run's folder, 'my run', cannot be used: give --name (use at most 80 lower-case"
        )
    elif case in ("again", "copy-again"):  # published once; again under another name, or a copy of it
        monkeypatch.setenv("LUCE_BENCH_GIT_COMMIT", "1b915c3aa0d2")
        assert _publish(run, results, "--name", "first").exit_code == 0
        if case == "copy-again":
            run = Path(shutil.copytree(run, tmp_path / "copy" / "20261125T101010Z-compare"))
        extra, message = ["--name", "second"], "is published already, as nvidia-h100-80gb-hbm3/20261124-first"
    elif case == "not-a-run":
        run, message = tmp_path, "is not a luce-bench run directory"
    elif case == "no-such-run":  # as `report` says it
        run, message = tmp_path / "nope", f"run directory not found: {tmp_path / 'nope'}"
    elif case == "readme-without-block":  # checked before the run is committed, not after
        (tmp_path / "README.md").write_text("# hi\n")
        extra, message = ["--name", "first"], "README.md has no <!-- results:begin --> ... <!-- results:end --> block"
    elif case == "results-typo":  # a new tree starts only inside an existing folder
        results = tmp_path / "reslts" / "results"
        extra, message = ["--name", "first"], f"its parent {results.parent} does not exist either"
    else:
        status = {"format": 1, "state": "stopped", "rows": 20, "rows_planned": 30, "reason": "GPU lost"}
        (run / "status.json").write_text(json.dumps(status))
        message = "it did not finish cleanly: stopped: 20 of 30 repetitions; GPU lost"
    before = sorted(p.relative_to(tmp_path) for p in results.rglob("*")) if results.exists() else []
    out = _publish(run, results, *extra)
    assert out.exit_code == 2, out.output
    assert message in out.output and len(out.output.strip().splitlines()) == 1, out.output
    assert (sorted(p.relative_to(tmp_path) for p in results.rglob("*")) if results.exists() else []) == before
    assert not (tmp_path / "reslts").exists()


def test_a_run_with_a_failed_backend_needs_allow_failures_and_its_failure_is_printed(tmp_path, monkeypatch):
    # as the first H200 run: every row measured except hf-compiled's depth test, which failed on its cache size
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    run, results = _run_dir(tmp_path), tmp_path / "results"
    failure = "hf-compiled failed: RuntimeError: the static cache holds 2049 positions; this sequence needs 4096"
    status = {"format": 1, "state": "finished-with-failures", "rows": 75, "rows_planned": 80, "failed": [failure]}
    (run / "status.json").write_text(json.dumps(status))
    refused = _publish(run, results)
    assert refused.exit_code == 2 and "(--allow-failures publishes its rows and lists the failures)" in refused.output
    assert not results.exists()
    out = _publish(run, results, "--allow-failures")
    assert out.exit_code == 0, out.output
    assert f"started a new results tree at {results}" in out.output
    assert f"no {tmp_path / 'README.md'}: the README's results block was not written" in out.output
    dest = results / "nvidia-h100-80gb-hbm3" / "20261124-compare"
    assert json.loads((dest / "meta.json").read_text())["published_with_failures"] == [failure]
    assert f"- failed in this run (no rows): {failure}" in (results / "README.md").read_text()
    said = f"> published with a failure (no rows): {failure}"  # beside every table of the run, not only the newest
    assert said in (dest / "report.md").read_text() and said in (results / "README.md").read_text()
    assert runner.invoke(app, ["report", "--check", str(results)]).exit_code == 0


def test_publish_stages_in_a_folder_it_can_tell_and_removes_a_killed_ones(tmp_path):
    import os
    import re
    import subprocess
    import sys

    from luce_bench import publish
    from luce_bench.files import host_tag

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    gpu = tmp_path / "nvidia-h200"
    killed = gpu / f".publish-{proc.pid}-{host_tag()}-k1ll3d" / "20261206-x"  # a publish killed mid-copy
    killed.mkdir(parents=True)
    for p in (killed, killed.parent):
        os.utime(p, (1e9, 1e9))
    with publish._staged(gpu / "20261207-y") as stage:
        assert re.fullmatch(publish.STAGE_PATTERN, stage.parent.name) and publish.publishing_now(stage.parent)
        (stage / "runs.csv").write_text("x\n")
    assert sorted(p.name for p in gpu.iterdir()) == ["20261207-y"]
