"""The pieces behind the fault tests, one at a time: status.json, whole-row appends, the deadline, scripted faults."""

from __future__ import annotations

import errno
import json
import os
import signal
import time

import pytest
from faultkit import DiskFullAfter

from luce_bench import appender, status
from luce_bench.appender import CsvAppender, RunDirError
from luce_bench.clock import SimClock
from luce_bench.deadline import TrialTimeout, deadline
from luce_bench.gpu.base import GPUNotSupportedError, GPUUnavailable
from luce_bench.gpu.fake import FakeGPU
from luce_bench.gpu.fake_faults import Fault, FaultyGPU, with_faults
from luce_bench.records import RunRecord
from luce_bench.results import read_runs


def _row(rep: int) -> RunRecord:
    return RunRecord(
        test_time="2027-01-01T00:00:00Z", backend="sim", model="tiny", model_type="t", model_n_params=1, n_prompt=0,
        n_gen=8, test="tg8", rep=rep, iterations=1, n_tokens=8, window_s=1.0, compute_s=1.0, avg_ts=8.0,
        device="cuda", gpu_simulated=True, valid=False, verdict="short-window;no-energy",
    )  # fmt: skip


@pytest.mark.tries("fault", "full disk while appending a row")
def test_a_failed_append_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    rows = CsvAppender(tmp_path / "runs.csv", RunRecord)
    rows.add([_row(0), _row(1)])
    before = (tmp_path / "runs.csv").read_bytes()
    monkeypatch.setattr(appender, "os", DiskFullAfter(rows=2))
    with pytest.raises(RunDirError, match="No space left on device"):
        rows.add([_row(2)])
    rows.close()
    assert (tmp_path / "runs.csv").read_bytes() == before
    assert [r.rep for r in read_runs(tmp_path)] == [0, 1]


def test_reopening_cuts_a_partial_last_line_and_keeps_the_header(tmp_path):
    CsvAppender(tmp_path / "runs.csv", RunRecord).close()
    whole = (tmp_path / "runs.csv").read_bytes()
    (tmp_path / "runs.csv").write_bytes(whole + b"2027-01-01T00:00:00Z,sim,ti")  # a crash mid-row
    rows = CsvAppender(tmp_path / "runs.csv", RunRecord)
    rows.add([_row(0)])
    rows.close()
    assert [r.rep for r in read_runs(tmp_path)] == [0]
    (tmp_path / "runs.csv").write_bytes(b"test_time,back")  # even the header cut short: it is written again
    CsvAppender(tmp_path / "runs.csv", RunRecord).close()
    assert (tmp_path / "runs.csv").read_bytes() == whole


def test_status_file_round_trip_and_a_vanished_process_reads_as_killed(tmp_path):
    ident = {"command": "sweep", "config_sha256": "c", "plan_sha256": "p", "gpu_uuid": "g", "rows_planned": 4}
    st = status.RunStatus.start(tmp_path, ident, rows=0, previous=None)
    st.at(phase="measuring", setting="300W", backend="sim", test="tg8", rep=1)
    st.rows(3)
    doc = status.read_status(tmp_path)
    assert status.effective_state(doc) == "running"  # this process is alive
    said = "running: 3 of 4 repetitions; last step: phase measuring, setting 300W, backend sim, test tg8, rep 1"
    assert status.describe(doc) == said
    doc["pid"] = 2**22 + 12345  # above Linux's pid_max: no such process
    (tmp_path / "status.json").write_text(json.dumps(doc))
    assert status.effective_state(status.read_status(tmp_path)) == "killed"
    assert status.mark_killed(tmp_path, "restored by test")
    doc = status.read_status(tmp_path)
    assert (doc["state"], doc["exit_code"], doc["settings_restored"]) == ("killed", 137, True)
    again = status.RunStatus.start(tmp_path, ident, rows=3, previous=doc)
    assert again.doc["attempts"][0]["state"] == "killed" and again.doc["attempts"][0]["rows"] == 3


def test_on_a_full_disk_the_final_status_overwrites_the_old_one_in_place(tmp_path, monkeypatch):
    ident = {"command": "sweep", "rows_planned": 4}
    st = status.RunStatus.start(tmp_path, ident, rows=0, previous=None)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(status, "atomic_write", full)
    assert st.finish("stopped", 4, "disk full", rows=2)
    doc = status.read_status(tmp_path)
    assert (doc["state"], doc["exit_code"], doc["reason"], doc["rows"]) == ("stopped", 4, "disk full", 2)


def test_on_a_full_disk_a_long_ending_still_fits_and_an_overlong_reason_is_cut(tmp_path, monkeypatch):
    # the helper's case: the disk filled mid-run, the status was rewritten in place (compactly) at every step after
    # that, and the ending's reason (the disk-full message, ~450 characters) is longer than anything before it
    ident = {"command": "sweep", "rows_planned": 18, "config_sha256": "c" * 64, "plan_sha256": "p" * 64}
    st = status.RunStatus.start(tmp_path, ident, rows=0, previous=None)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(status, "atomic_write", full)
    for rep in range(3):
        st.at(phase="measuring", setting="210W", backend="sim", test="pp128", rep=rep)
    reason = "run directory not writable: " + "x" * 420
    assert st.finish("stopped", 4, reason, rows=15)
    doc = status.read_status(tmp_path)
    assert (doc["state"], doc["exit_code"], doc["reason"], doc["rows"]) == ("stopped", 4, reason, 15)
    path_like = "cannot write /data/r\udcffx/runs.csv: é" * 40  # escaped in JSON: longer than it looks
    assert st.finish("stopped", 4, path_like)
    doc = status.read_status(tmp_path)
    assert doc["state"] == "stopped" and doc["reason"].endswith(" [cut]") and doc["reason"].startswith("cannot")
    assert st.finish("stopped", 4, "y" * 5000)  # far longer than the reserve: cut short, still the ending
    doc = status.read_status(tmp_path)
    assert doc["state"] == "stopped" and doc["exit_code"] == 4
    assert doc["reason"].startswith("yyyy") and doc["reason"].endswith(" [cut]") and len(doc["reason"]) < 5000
    # a run with rows: its ending waits for the report under render_pending, and its reason is cut there too
    assert st.finish("stopped", 4, "z" * 5000, render=True, rows=15)
    doc = status.read_status(tmp_path)
    pending = doc[status.RENDER_PENDING]
    assert (pending["state"], pending["exit_code"]) == ("stopped", 4) and pending["reason"].endswith(" [cut]")


def test_the_deadline_counts_run_clock_time_between_iterations():
    clock = SimClock()
    with deadline(10.0, clock, "sim tg8") as due:
        clock.sleep(9.0)
        due.check()  # within the deadline
        clock.sleep(2.0)
        with pytest.raises(TrialTimeout, match="sim tg8 timed out after 10 s"):
            due.check()
        due.extend(5.0)  # a slow backend gets more time
        due.check()
        clock.sleep(5.0)
        with pytest.raises(TrialTimeout, match="after 15 s"):
            due.check()


def test_the_wall_clock_deadline_interrupts_a_call_and_restores_sigalrm():
    before = signal.getsignal(signal.SIGALRM)
    t0 = time.monotonic()
    with pytest.raises(TrialTimeout), deadline(0.2, SimClock(), "hang"):
        time.sleep(30)
    assert time.monotonic() - t0 < 5 and signal.getsignal(signal.SIGALRM) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_scripted_faults_fire_on_the_cards_clock():
    clock = SimClock()
    gpu = FaultyGPU(FakeGPU(clock=clock), [Fault("not-supported", 5.0, 7.0), Fault("lost", 10.0)])
    gpu.total_energy_mj()  # t = 0: fine
    clock.sleep(5.0)
    with pytest.raises(GPUNotSupportedError, match="total_energy_mj on GPU 0 .* not supported"):
        gpu.total_energy_mj()
    assert gpu.power_limit_mw() == 420_000  # other calls unaffected
    clock.sleep(2.0)
    gpu.total_energy_mj()  # the fault ended at 7 s
    clock.sleep(3.0)
    for call in (gpu.power_usage_mw, gpu.power_limit_mw, lambda: gpu.set_power_limit_mw(300_000)):
        with pytest.raises(GPUUnavailable, match="GPU is lost"):
            call()
    assert gpu.fired == [
        "not-supported total_energy_mj",
        "lost power_usage_mw",
        "lost power_limit_mw",
        "lost set_power_limit_mw",
    ]


def test_a_bad_fault_script_is_one_clear_error():
    from luce_bench.gpu.base import GPUError

    with pytest.raises(GPUError, match="^bad LUCE_BENCH_FAKE_GPU_FAULTS: each fault needs a kind in lost"):
        with_faults(FakeGPU(), '[{"kind": "meteor"}]')  # (the variable named once)
    for cap in ("", ', "limit_w": -5', ', "limit_w": true', ', "limit_w": "250"'):
        with pytest.raises(GPUError, match="^bad LUCE_BENCH_FAKE_GPU_FAULTS: a capped fault needs a positive limit_w"):
            with_faults(FakeGPU(), f'[{{"kind": "capped"{cap}}}]')
    assert isinstance(with_faults(FakeGPU(), ""), FakeGPU)


def test_the_report_says_how_a_run_that_did_not_finish_ended(tmp_path):
    from luce_bench.report import run_state

    ident = {"command": "sweep", "rows_planned": 4}
    st = status.RunStatus.start(tmp_path, ident, rows=0, previous=None)
    st.at(phase="measuring", setting="300W", backend="sim", test="tg8", rep=0)
    st.rows(1)
    step = "last step: phase measuring, setting 300W, backend sim, test tg8, rep 0"
    assert run_state(tmp_path) == [f"this run is running: 1 of 4 repetitions; {step}"]
    st.doc["pid"] = 2**22 + 12345  # the process is gone: SIGKILL
    st.write()
    (line,) = run_state(tmp_path)
    assert line.startswith("run killed: 1 of 4 repetitions;") and line.endswith("(SIGKILL, OOM or power loss)")
    (tmp_path / "meta.json").write_text("{}")  # (without it, killed before its first row: nothing to resume)
    (line,) = run_state(tmp_path)  # a killed sweep: what to run next, with this run's own directory
    assert line.endswith(f"`luce-bench restore`, then `luce-bench sweep --resume {tmp_path}` continues it")
    st.doc[status.RENDER_PENDING] = {"state": "interrupted", "exit_code": 130, "reason": "interrupted by SIGINT"}
    st.write()  # interrupted, then killed while writing its report: its settings are back already
    line = status.describe(status.read_status(tmp_path), tmp_path)  # (the report reads it as the run's ending)
    assert line.endswith(
        "while writing the report of a run interrupted: `luce-bench sweep --resume "
        f"{tmp_path}` continues it and writes it"
    )
    del st.doc[status.RENDER_PENDING]
    st.finish("finished", 0, rows=4)
    assert run_state(tmp_path) == []
    (tmp_path / "status.json").write_text("[]")
    assert run_state(tmp_path) == [f"{tmp_path / 'status.json'} is not a luce-bench status file (format 1)"]


@pytest.mark.skipif(not hasattr(signal, "pthread_sigmask"), reason="POSIX signal masks")
def test_a_signal_waits_for_the_end_of_a_deferred_block():
    """A row and its count go together: SIGTERM sent inside the block is handled only after it."""
    got = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with appender.signals_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            inside = list(got)
        time.sleep(0.05)
    finally:
        signal.signal(signal.SIGTERM, old)
    assert inside == [] and got == [signal.SIGTERM]


def test_the_token_agreement_note_reads_as_a_note():
    from luce_bench.report import AGREEMENT_CAVEAT, notes
    from luce_bench.summary import token_agreement

    agreement = token_agreement({"sim tg8": [1, 2, 3, 4], "hf tg8": [1, 2, 9, 4]})
    meta = {"energy": {"available": True}, "token_agreement": agreement, "model": {"synthetic": True}}
    # printed as "note: greedy tokens, ..." on the console and as "> greedy tokens, ..." in report.md
    said = "greedy tokens, first tg run: tg8 hf vs sim: 2/4 leading tokens equal (the first 4 of 8 compared)"
    assert notes(meta) == [f"{said} ({AGREEMENT_CAVEAT})"]
    meta["model"]["synthetic"] = False  # real weights: no word about random ones
    assert notes(meta) == [said]


def test_a_simulated_runs_notes_say_what_was_simulated_beyond_the_gpu():
    from luce_bench.report import notes

    meta = {"energy": {"available": True, "simulated": True}, "backends": {"sim": {}, "hf": {"device": "cpu"}}}
    said = notes(meta)
    assert "sim: a SIMULATED backend: no model runs; its tok/s come from the simulated card's model" in said
    assert "hf ran on the CPU: its W and tok/J are the simulated card's, not its own" in said
    meta["energy"]["simulated"] = False  # a real card: neither note
    assert not [n for n in notes(meta) if "simulated card" in n]
