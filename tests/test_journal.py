"""Journal files and the per-GPU lock."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from luce_bench.gpu.fake import FakeGPU
from luce_bench.gpu.journal import (
    GpuLock,
    JournalError,
    journal_path,
    list_journals,
    new_entry,
    read_journal,
    write_journal,
)


def test_round_trip_and_no_temp_left(tmp_path):
    gpu = FakeGPU()
    gpu.set_power_limit_mw(350_000)
    path = write_journal(new_entry(gpu, "rtx3090"), tmp_path)
    entry = read_journal(path)
    assert entry.original_limit_mw == 350_000 and entry.fake == "rtx3090" and entry.pid == os.getpid()
    assert path == journal_path(gpu.uuid(), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert list_journals(tmp_path) == [path]


@pytest.mark.tries("bad input", "restore: corrupt or foreign journals")
def test_unreadable_journal_is_a_clear_error(tmp_path):
    bad = tmp_path / "power-limit-GPU-x.json"
    bad.write_text("{not json")
    with pytest.raises(JournalError, match="delete it by hand"):
        read_journal(bad)


def test_lock_names_the_holder_and_frees_on_death(tmp_path):
    code = (
        "import sys,time; from pathlib import Path; from luce_bench.gpu.journal import GpuLock; "
        "l=GpuLock('GPU-1', Path(sys.argv[1])); l.acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    with pytest.raises(JournalError, match=f"pid {proc.pid}"):
        GpuLock("GPU-1", tmp_path).acquire()
    proc.kill()
    proc.wait()
    with GpuLock("GPU-1", tmp_path) as lock:  # the kernel dropped the dead holder's lock
        assert lock.held
