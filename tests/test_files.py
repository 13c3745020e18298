"""Cache/state directories and the atomic write."""

from __future__ import annotations

import pytest

from luce_bench import files


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
