"""Cache/state directories, the atomic write, and `luce-bench publish` of a run into a results tree."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench import files
from luce_bench.cli import app

GOLDEN = Path(__file__).resolve().parent / "golden" / "compare"


def test_directories_follow_the_env_override_then_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("LUCE_BENCH_CACHE", str(tmp_path / "c"))
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "s"))
    assert (files.cache_dir(), files.state_dir()) == (tmp_path / "c", tmp_path / "s")
    monkeypatch.delenv("LUCE_BENCH_CACHE")
    monkeypatch.delenv("LUCE_BENCH_STATE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xc"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xs"))
    assert (files.cache_dir(), files.state_dir()) == (tmp_path / "xc" / "luce-bench", tmp_path / "xs" / "luce-bench")


def test_atomic_write_replaces_whole_and_a_failure_leaves_the_old_file(tmp_path):
    path = tmp_path / "d" / "meta.json"
    files.atomic_write(path, "one")
    files.atomic_write(path, b"two", durable=True)
    assert path.read_text() == "two"
    with pytest.raises(RuntimeError), files.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["meta.json"]


def test_publish_copies_the_run_and_indexes_it(tmp_path):
    run = tmp_path / "20270101T000000Z-compare"
    run.mkdir()
    for name in ("runs.csv", "summary.csv", "samples.csv"):
        shutil.copy(GOLDEN / name, run / name)
    (run / "meta.json").write_text('{"gpu": {"name": "NVIDIA H200"}, "model": {"name": "tiny"}, "git_commit": "abc"}')
    results = tmp_path / "results"
    (results / "runs" / "adhoc").mkdir(parents=True)  # ad-hoc runs are not indexed
    shutil.copy(GOLDEN / "summary.csv", results / "runs" / "adhoc" / "summary.csv")
    out = CliRunner().invoke(app, ["publish", str(run), "--name", "h200-stock", "--results", str(results)])
    assert out.exit_code == 0, out.output
    dest = results / "nvidia-h200" / "20270101-h200-stock"
    assert sorted(p.name for p in dest.iterdir()) == ["meta.json", "runs.csv", "samples.csv.gz", "summary.csv"]
    assert gzip.decompress((dest / "samples.csv.gz").read_bytes()) == (GOLDEN / "samples.csv").read_bytes()
    index = (results / "README.md").read_text()
    assert "## nvidia-h200 / 20270101-h200-stock" in index and "commit abc" in index and "adhoc" not in index
    assert "| sim | pp512 | current | 9000.00 ± 0.00 | 9000.0–9000.0 | 322.5 | 27.916 ± 0.690 |" in index


def test_publish_refuses_a_directory_that_is_not_a_run(tmp_path):
    out = CliRunner().invoke(app, ["publish", str(tmp_path), "--results", str(tmp_path / "r")])
    assert out.exit_code == 2 and "not a luce-bench run directory" in out.output
