"""Power-limit parsing/validation, journal-before-change, restore on exit and exception, stale journal, lock."""

from __future__ import annotations

import json

import pytest

from luce_bench.errors import UserError
from luce_bench.gpu import GPUNotSupportedError, GPUPermissionError, GPUReadOnlyError
from luce_bench.gpu.fake import PRESETS, FakeGPU
from luce_bench.gpu.journal import JournalError, journal_path, list_journals
from luce_bench.gpu.power_limit import PowerLimitController, applied_power_limit
from luce_bench.gpu.restore import restore_from_journals
from luce_bench.plan import parse_limits

H100 = (200_000, 700_000)


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    d = tmp_path / "state"
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(d))
    return d


def test_parse_watts_and_percent():
    got = parse_limits("420, 300W,70%", default_mw=420_000, constraints_mw=(100_000, 420_000))
    assert [t.requested_mw for t in got] == [420_000, 300_000, 294_000]
    assert [t.requested_mw for t in parse_limits([700, "50%"], 700_000, H100)] == [700_000, 350_000]


def test_percent_travels_across_gpus():
    assert [t.requested_mw for t in parse_limits("100%,50%", 700_000, H100)] == [700_000, 350_000]


def test_out_of_range_names_the_card_range():
    with pytest.raises(UserError, match=r"power limit 150 W outside the range of H100: 200-700 W .*--clamp"):
        parse_limits("420,300,220,150", 700_000, H100, gpu_name="H100")
    with pytest.raises(UserError, match=r"power limit 10% \(70 W\), 150.5 W outside"):  # a share, in W
        parse_limits("10%,150.5W", 700_000, H100)
    with pytest.raises(UserError, match=r"^no power limits given in sweep.limits in config c.yaml \(e.g."):
        parse_limits(" , ", 700_000, H100, where="sweep.limits in config c.yaml")


def test_auto_is_four_shares_clamped_to_any_cards_range():
    h200 = parse_limits("auto", 700_000, (200_000, 700_000))
    assert [(t.text, t.requested_mw, t.clamped) for t in h200] == [
        ("100%", 700_000, False), ("75%", 525_000, False), ("55%", 385_000, False), ("40%", 280_000, False)
    ]  # fmt: skip
    narrow = parse_limits(["auto"], 250_000, (150_000, 250_000))  # an A100 PCIe's 150-250 W: 55 % and 40 % meet at 150
    assert [(t.requested_mw, t.clamped) for t in narrow] == [(250_000, False), (187_500, False), (150_000, True)]
    with pytest.raises(UserError, match="'auto' stands alone"):
        parse_limits("auto,300", 700_000, H100)


def test_clamp_moves_into_range_and_dedupes():
    got = parse_limits("800,150,200", 700_000, H100, clamp=True)
    assert [(t.requested_mw, t.clamped) for t in got] == [(700_000, True), (200_000, True)]


def test_a_limit_written_twice_is_refused_not_merged():
    with pytest.raises(UserError, match=r"power limit 300 W is given twice \(300 and 300W\): give each once"):
        parse_limits("420,300,300W", 700_000, H100)
    with pytest.raises(UserError, match=r"700 W is given twice \(100% and 700\)"):
        parse_limits("100%,700", 700_000, H100)
    with pytest.raises(UserError, match=r"700 W is given twice \(700 and 700\)"):  # after a clamped 800, too
        parse_limits("800,700,700", 700_000, H100, clamp=True)
    with pytest.raises(UserError, match="outside the range"):  # the range is told first, then the repeat
        parse_limits("900,300,300", 700_000, H100)


@pytest.mark.tries("bad input", "clock and limit values: malformed or impossible")
@pytest.mark.parametrize("bad", ["abc", "-5", "0", "", "nan", "inf", "1e400", "-10%", "70%%", ","])
def test_malformed_limits(bad):
    with pytest.raises(UserError):
        parse_limits(bad, 700_000, H100)


def test_journal_written_before_first_change_and_restored(state_dir):
    gpu = FakeGPU()
    seen = {}
    original_set = gpu.set_power_limit_mw

    def spy(mw):
        seen["journal"] = json.loads(journal_path(gpu.uuid()).read_text())
        original_set(mw)

    gpu.set_power_limit_mw = spy
    with PowerLimitController(gpu, log=lambda m: None) as ctl:
        assert ctl.set_limit_mw(220_000) == 220_000
        assert gpu.power_limit_mw() == 220_000
        assert gpu.persistence_mode() is True  # turned on while sweeping
    assert seen["journal"]["original_limit_mw"] == 420_000
    assert seen["journal"]["persistence_mode"] is False
    assert gpu.power_limit_mw() == 420_000 and gpu.persistence_mode() is False
    assert list_journals() == []


def test_restores_original_not_max_after_exception():
    gpu = FakeGPU()
    gpu.set_power_limit_mw(350_000)  # the user's own setting before the sweep
    with pytest.raises(RuntimeError), PowerLimitController(gpu) as ctl:
        ctl.set_limit_mw(150_000)
        raise RuntimeError("backend crashed")
    assert gpu.power_limit_mw() == 350_000
    assert list_journals() == []


def test_applied_power_limit_shorthand():
    gpu = FakeGPU(preset=PRESETS["h100-sxm"])
    with applied_power_limit(gpu, 300) as enforced_mw:
        assert enforced_mw == 300_000
    assert gpu.power_limit_mw() == 700_000


def test_no_change_no_journal():
    gpu = FakeGPU()
    with PowerLimitController(gpu):
        assert list_journals() == []
    assert gpu.set_calls == []


def test_stale_journal_refused_and_restore_replays_it(state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    from luce_bench.gpu import open_gpu

    gpu = open_gpu(fake_preset="rtx3090")
    ctl = PowerLimitController(gpu, fake="rtx3090").__enter__()
    ctl.set_limit_mw(220_000)
    ctl._lock.release()  # simulate SIGKILL: lock gone, journal left, limit still low
    from luce_bench.gpu.power_limit import _Guard

    _Guard.remove(ctl)
    with pytest.raises(JournalError, match="luce-bench restore"), PowerLimitController(open_gpu(fake_preset="rtx3090")):
        pass
    lines = restore_from_journals()
    assert "restored GPU 0" in lines[0] and "220 W -> 420 W" in lines[0]
    assert open_gpu(fake_preset="rtx3090").power_limit_mw() == 420_000
    assert list_journals() == []


def test_lock_keeps_two_controllers_apart():
    gpu = FakeGPU()
    with PowerLimitController(gpu), pytest.raises(JournalError, match="another luce-bench process") as exc:
        PowerLimitController(FakeGPU()).__enter__()
    assert f"changing power limits on {gpu.uuid()};" in str(exc.value)  # a UUID names itself ("GPU-…"): no "GPU GPU-"


def test_missing_permission_fails_before_anything_changes():
    gpu = FakeGPU(refuse_set=True)
    with pytest.raises(GPUPermissionError, match="CAP_SYS_ADMIN.*cap-add SYS_ADMIN"):
        gpu.check_writable()
    with pytest.raises(GPUPermissionError), PowerLimitController(gpu) as ctl:
        ctl.set_limit_mw(220_000)
    assert gpu.power_limit_mw() == 420_000
    assert list_journals() == []  # nothing changed, so the journal was cleared


def test_read_only_refuses_controller_and_restore(monkeypatch):
    with pytest.raises(GPUReadOnlyError):
        PowerLimitController(FakeGPU(read_only=True)).__enter__()
    with pytest.raises(GPUReadOnlyError):
        FakeGPU(read_only=True).check_writable()


def test_env_read_only_holds_even_for_a_gpu_opened_writable(monkeypatch):
    from luce_bench.gpu.base import GPUReadOnlyError
    from luce_bench.gpu.fake import FakeGPU

    gpu = FakeGPU(read_only=False)
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    with pytest.raises(GPUReadOnlyError):
        gpu.set_power_limit_mw(300_000)


@pytest.mark.parametrize(
    ("value", "read_only"),
    [
        ("", False),
        ("0", False),
        (" false ", False),
        ("No", False),
        ("off", False),
        ("1", True),
        ("true", True),
        ("ON", True),
        ("2", True),
        ("y", True),
        ("garbage", True),
    ],
)
def test_the_read_only_switch_fails_closed(monkeypatch, value, read_only):
    """Only an empty or clearly false LUCE_BENCH_READONLY lets setters run: "2", "y" or a typo mean read-only."""
    from luce_bench.gpu.base import GPUReadOnlyError, read_only_mode
    from luce_bench.gpu.fake import FakeGPU

    monkeypatch.setenv("LUCE_BENCH_READONLY", value)
    assert read_only_mode() is read_only
    gpu = FakeGPU(read_only=False)
    if read_only:
        with pytest.raises(GPUReadOnlyError):
            gpu.set_power_limit_mw(300_000)
    else:
        gpu.set_power_limit_mw(300_000)


# --- locked SM clocks on the same rails (issue 14) ----------------------------------------------------------------
def test_journal_rewritten_before_the_first_clock_change_and_clocks_restored(state_dir):
    gpu = FakeGPU()
    seen = []
    original_lock = gpu.set_locked_sm_clocks_mhz

    def spy(lo, hi):
        seen.append(json.loads(journal_path(gpu.uuid()).read_text()))
        original_lock(lo, hi)

    gpu.set_locked_sm_clocks_mhz = spy
    with PowerLimitController(gpu, log=lambda m: None) as ctl:
        ctl.set_limit_mw(300_000)
        assert json.loads(journal_path(gpu.uuid()).read_text())["sm_clocks_changed"] is False
        assert ctl.set_sm_clock_mhz(1200) == 1200
        assert ctl.set_sm_clock_mhz(1200) == 1200  # unchanged: not set again
        assert gpu.locked_sm_clocks_mhz() == (1200, 1200)
    assert len(seen) == 1 and seen[0]["sm_clocks_changed"] is True and seen[0]["original_sm_lock_mhz"] is None
    assert seen[0]["original_limit_mw"] == 420_000  # the first journal's original survives the rewrite
    assert gpu.locked_sm_clocks_mhz() is None and gpu.power_limit_mw() == 420_000
    assert list_journals() == []


def test_a_lock_set_before_the_run_comes_back_not_a_reset():
    gpu = FakeGPU()
    gpu.set_locked_sm_clocks_mhz(900, 1500)  # the user's own lock
    with pytest.raises(RuntimeError), PowerLimitController(gpu) as ctl:
        ctl.set_sm_clock_mhz(1200)
        raise RuntimeError("backend crashed")
    assert gpu.locked_sm_clocks_mhz() == (900, 1500)
    assert ("sm_lock_mhz", None) not in gpu.set_calls


def test_a_power_only_run_never_touches_the_clocks():
    gpu = FakeGPU()
    gpu.set_locked_sm_clocks_mhz(900, 1500)
    with PowerLimitController(gpu) as ctl:
        ctl.set_limit_mw(220_000)
    assert [c for c in gpu.set_calls if c[0] == "sm_lock_mhz"] == [("sm_lock_mhz", [900, 1500])]


class Unreadable(FakeGPU):
    """A card like NVML's: locks can be set but not read back."""

    def locked_sm_clocks_mhz(self):
        raise GPUNotSupportedError("NVML cannot read back a locked SM clock range")


def test_an_unreadable_lock_is_journalled_as_such_and_reset_at_the_end():
    gpu = Unreadable()
    notes = []
    with PowerLimitController(gpu, log=notes.append) as ctl:
        ctl.set_sm_clock_mhz(1200)
        ctl.set_sm_clock_mhz(1200)  # cannot tell it is already set: set again
        journal = json.loads(journal_path(gpu.uuid()).read_text())
    assert journal["sm_lock_readable"] is False and journal["sm_clocks_changed"] is True
    assert [c for c in gpu.set_calls if c[0] == "sm_lock_mhz"] == [("sm_lock_mhz", [1200, 1200])] * 2 + [
        ("sm_lock_mhz", None)
    ]
    assert any("cannot read back a clock lock" in n for n in notes)


def test_a_refused_lock_changes_nothing_and_leaves_no_journal():
    gpu = FakeGPU(clock_locks=False)
    with pytest.raises(GPUNotSupportedError, match="some cards and drivers"), PowerLimitController(gpu) as ctl:
        ctl.set_sm_clock_mhz(1200)
    assert gpu.persistence_mode() is False and gpu.power_limit_mw() == 420_000
    assert list_journals() == []  # the restore found nothing to undo and cleared the journal


def test_restore_replays_limit_and_clocks(state_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    from luce_bench.gpu import open_gpu
    from luce_bench.gpu.power_limit import _Guard

    ctl = PowerLimitController(open_gpu(fake_preset="rtx3090"), fake="rtx3090").__enter__()
    ctl.set_limit_mw(220_000)
    ctl.set_sm_clock_mhz(1200)
    ctl._lock.release()  # simulate SIGKILL
    _Guard.remove(ctl)
    (dry,) = restore_from_journals(dry_run=True)
    assert dry.startswith("would restore") and "original limit 420 W, SM clocks unlocked" in dry
    (line,) = restore_from_journals()
    assert "power limit 220 W -> 420 W, SM clocks locked 1200 MHz -> unlocked" in line
    card = open_gpu(fake_preset="rtx3090")
    assert card.power_limit_mw() == 420_000 and card.locked_sm_clocks_mhz() is None


def test_read_only_refuses_clock_locks_before_anything_changes(monkeypatch):
    gpu = FakeGPU()
    monkeypatch.setenv("LUCE_BENCH_READONLY", "1")
    with pytest.raises(GPUReadOnlyError):
        PowerLimitController(gpu).__enter__()
    assert gpu.set_calls == [] and list_journals() == []


def test_a_state_folder_that_cannot_be_written_is_named_with_its_variable(tmp_path, monkeypatch):
    from luce_bench.errors import WriteError

    blocked = tmp_path / "a-file"
    blocked.write_text("x")
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(blocked / "state"))  # under a file: cannot be made
    gpu = FakeGPU()
    with pytest.raises(WriteError, match=r"power-limit lock and journal folder .*LUCE_BENCH_STATE_DIR") as exc:
        PowerLimitController(gpu).__enter__()
    assert exc.value.exit_code == 4 and gpu.set_calls == []


def test_restore_leaves_a_running_sweeps_journal_and_says_so_on_stderr(state_dir, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "fake.json"))
    from luce_bench.gpu import open_gpu

    with PowerLimitController(open_gpu(fake_preset="rtx3090"), fake="rtx3090") as ctl:  # a sweep that is running
        ctl.set_limit_mw(220_000)
        result = CliRunner().invoke(app, ["restore"])
        assert result.exit_code == 1
        assert result.stdout == "" and result.stderr.startswith("skipped ") and "another luce-bench" in result.stderr
        assert open_gpu(fake_preset="rtx3090").power_limit_mw() == 220_000  # left to the sweep
