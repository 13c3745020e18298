"""Cache/state directories and the atomic write."""

from __future__ import annotations

import os
from pathlib import Path

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


def test_a_write_that_fails_without_a_file_name_names_the_file_being_written(tmp_path):
    import errno

    path = tmp_path / "summary.csv"
    with pytest.raises(OSError) as err, files.atomic_path(path):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # (as a full disk under tmp.write_text says it)
    assert err.value.filename == str(path) and err.value.errno == errno.ENOSPC
    with pytest.raises(OSError) as err, files.atomic_path(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), "/elsewhere")
    assert err.value.filename == "/elsewhere"  # one that names its file keeps it
    with pytest.raises(OSError, match="^disk full$"), files.atomic_path(path):
        raise OSError("disk full")  # no errno: its text stays as it is
    with pytest.raises(BrokenPipeError) as pipe, files.atomic_path(path):
        raise BrokenPipeError(errno.EPIPE, "standard output closed")  # a console inside the block: not this file's
    assert pipe.value.filename is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [None, True, False])
def test_a_directory_in_the_way_fails_the_rename_or_is_kept_or_replaced_as_the_caller_decides(tmp_path, keep):
    final = tmp_path / "lib"
    final.mkdir()
    (final / "v").write_text("old")
    decide = None if keep is None else (lambda d: (d / "v").read_text() == "old" and keep)

    def write_new() -> None:
        with files.atomic_path(final, existing=decide) as tmp:
            tmp.mkdir()
            (tmp / "v").write_text("new")

    if keep is None:
        with pytest.raises(OSError):
            write_new()
    else:
        write_new()
    assert (final / "v").read_text() == ("new" if keep is False else "old")
    assert [p.name for p in tmp_path.iterdir()] == ["lib"]  # no temp or aside directory left


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_writers_temporaries_are_removed_by_the_next_write_once_stale(tmp_path):
    import os

    final, here = tmp_path / "model", files.host_tag()
    dead, alive = _dead_pid(), os.getppid()
    old_dead = tmp_path / f".model.{dead}.{here}0123.tmp"  # what SIGKILL left mid-export: a folder of files
    (old_dead / "sub").mkdir(parents=True)
    (old_dead / "sub" / "part").write_bytes(b"x" * 1000)
    fresh_dead = tmp_path / f".model.{dead}.{here}89ab.tmp"  # untouched for less than an hour
    fresh_dead.write_text("x")
    deep = tmp_path / f".model.{dead}.{here}4567.tmp"  # its top is old, a file deep inside was written just now
    (deep / "a" / "b").mkdir(parents=True)
    (deep / "a" / "b" / "now").write_text("x")
    old_alive = tmp_path / f".model.{alive}.{here}0000.tmp"  # a running process's
    old_alive.write_text("x")
    elsewhere = tmp_path / f".model.{dead}.{'0000' if here != '0000' else '1111'}cdef.tmp"  # another machine's
    elsewhere.write_text("x")
    other = tmp_path / f".other.{dead}.{here}0123.tmp"  # another final's
    other.write_text("x")
    for p in (old_dead / "sub" / "part", old_dead / "sub", old_dead, deep / "a", deep, old_alive, elsewhere, other):
        os.utime(p, (1e9, 1e9))  # 2001: stale by any measure of this machine's; another's waits a week from then
    files.atomic_write(final, "done")
    assert final.read_text() == "done"
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model", fresh_dead.name, deep.name, old_alive.name, other.name])  # 2001 > a week ago


def test_a_writer_killed_between_its_renames_gets_its_only_copy_put_back(tmp_path):
    import os

    final = tmp_path / "lib"
    aside = tmp_path / f".lib.{_dead_pid()}.{files.host_tag()}0123.old"  # final renamed aside, the new one never came
    aside.mkdir()
    (aside / "libluce_mk.so").write_bytes(b"built")
    os.utime(aside / "libluce_mk.so", (1e9, 1e9))
    os.utime(aside, (1e9, 1e9))
    assert files.remove_stale_siblings(final) == []
    assert (final / "libluce_mk.so").read_bytes() == b"built" and not aside.exists()


@pytest.fixture(scope="module")
def _state_dir_of_a_module_fixture():
    from luce_bench.files import state_dir

    return state_dir()


def test_fixtures_wider_than_a_test_keep_locks_out_of_the_users_state_folder(
    _state_dir_of_a_module_fixture, tmp_path_factory
):
    # a module's compare run (tests/test_cli.py) ran in ~/.local/state/luce-bench: it left its files there and refused
    # to measure while the user's own sweep of the simulated card held that card's lock
    import platformdirs

    from luce_bench.files import APP

    got = _state_dir_of_a_module_fixture
    assert got != Path(platformdirs.user_state_dir(APP, appauthor=False))
    assert tmp_path_factory.getbasetemp() in got.parents


def test_a_process_that_ended_but_is_not_reaped_is_not_alive():
    # `kill -9` on a run, then `luce-bench restore` before the shell reaped it: the run must read as killed
    import signal
    import subprocess
    import time

    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert files.pid_alive(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while files.pid_alive(proc.pid) and time.monotonic() < deadline:  # (the kill lands asynchronously)
            time.sleep(0.01)
        assert not files.pid_alive(proc.pid)
        assert Path(f"/proc/{proc.pid}").exists()  # not reaped yet: os.kill alone still finds it
    finally:
        proc.wait()
    assert not files.pid_alive(proc.pid)
