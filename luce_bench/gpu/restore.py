"""Putting a GPU back as the journal says: the original SM clock lock, power limit and persistence mode.

`apply_entry` is shared by the controller's restore (every exit path of a live run) and by `restore_from_journals`
(`luce-bench restore`, after SIGKILL, a crash or a reboot). It skips values that are already right, reads each one
back, and tries every setting before it reports the first failure, so one stuck setting does not keep the others
from coming back; the journal then stays for another try.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

from luce_bench.files import shell_arg
from luce_bench.gpu.base import GPU, GPUError, GPUNotSupportedError, GPUPermissionError
from luce_bench.gpu.journal import GpuLock, JournalEntry, JournalError, list_journals, lock_text, read_journal
from luce_bench.status import mark_killed


def _restore_clocks(gpu: GPU, entry: JournalEntry) -> str:
    """Put the original SM clock lock back (unlock where it was none or unreadable); say what was done."""
    try:
        before, readable = gpu.locked_sm_clocks_mhz(), True
    except GPUNotSupportedError:  # NVML: a lock cannot be read back
        before, readable = None, False
    want = tuple(entry.original_sm_lock_mhz) if entry.sm_lock_readable and entry.original_sm_lock_mhz else None
    if readable and before == want:
        return f"SM clocks {lock_text(want)}"
    try:
        if want is None:
            gpu.reset_locked_sm_clocks()
        else:
            gpu.set_locked_sm_clocks_mhz(*want)
    except GPUNotSupportedError:  # a card that cannot lock clocks was never locked by us
        return "SM clocks: locked clocks not supported here, nothing to undo"
    if not readable:
        return f"SM clocks reset ({lock_text(want)})"
    after = gpu.locked_sm_clocks_mhz()
    if after != want:
        raise GPUError(f"SM clocks read {lock_text(after)} after restoring {lock_text(want)}")
    return f"SM clocks {lock_text(before)} -> {lock_text(want)}"


def _restore_limit(gpu: GPU, entry: JournalEntry) -> str:
    """Put the power-management limit back (the one set; an outside cap may hold the enforced one lower)."""
    before_mw = int(gpu.management_limit_mw())
    if before_mw != entry.original_limit_mw:
        gpu.set_power_limit_mw(entry.original_limit_mw)
    after_mw = int(gpu.management_limit_mw())
    if after_mw != entry.original_limit_mw:
        raise GPUError(
            f"the power limit reads {after_mw / 1000:g} W after restoring {entry.original_limit_mw / 1000:g} W"
        )
    return f"power limit {before_mw / 1000:g} W -> {after_mw / 1000:g} W"


def apply_entry(gpu: GPU, entry: JournalEntry) -> str:
    """Set `gpu` back to the journalled state; return what was done, e.g. "power limit 220 W -> 420 W".

    Raises:
        GPUError: the first setting that could not be put back (the others were tried).
    """
    steps: list[Callable[[GPU, JournalEntry], str]] = [_restore_limit]
    if entry.sm_clocks_changed:
        steps.insert(0, _restore_clocks)
    done, errors = [], []
    for step in steps:
        try:
            done.append(step(gpu, entry))
        except GPUError as exc:
            errors.append(exc)
    with contextlib.suppress(GPUNotSupportedError):
        if not errors and bool(gpu.persistence_mode()) != entry.persistence_mode:
            gpu.set_persistence_mode(entry.persistence_mode)
    if errors:
        raise errors[0]
    return ", ".join(sorted(done, key=lambda d: not d.startswith("power limit")))


def refuse_stale_journals(state_dir: Path | None = None) -> None:
    """Raise JournalError when a journal exists whose GPU lock no live process holds (it needs `luce-bench restore`)."""
    for path in list_journals(state_dir):
        entry = read_journal(path)
        lock = GpuLock(entry.uuid, state_dir)
        try:
            lock.acquire()
        except JournalError:
            continue  # a live run owns it (the lock check on our own GPU reports that conflict)
        lock.release()
        raise JournalError(stale_message(path, entry))


def stale_message(path: Path, entry: JournalEntry) -> str:
    """Why a run cannot start while `path` exists."""
    return (
        f"a stale power-limit journal exists ({path}): {entry.describe()}. "
        "A previous run did not finish; run `luce-bench restore` first"
    )


def restore_from_journals(
    state_dir: Path | None = None, opener: Callable[..., object] | None = None, dry_run: bool = False
) -> list[str]:
    """Replay every stale journal (`luce-bench restore`); return one line per GPU. Journals of live runs are skipped.

    Raises:
        GPUError: a GPU could not be restored (its journal stays; the message says why).
    """
    if opener is None:
        from luce_bench.gpu import open_gpu as opener

    lines: list[str] = []
    entries = [(path, read_journal(path)) for path in list_journals(state_dir)]  # all readable before any change
    held: list[tuple[Path, JournalEntry, GpuLock]] = []
    try:
        for path, entry in entries:
            lock = GpuLock(entry.uuid, state_dir)
            try:
                lock.acquire()
            except JournalError as exc:
                lines.append(f"skipped {entry.uuid}: {exc}")
                continue
            held.append((path, entry, lock))
        gpus = _open_checked(held, opener)  # (a dry run too: it says only what the real one would do)
        try:
            if dry_run:
                return lines + [f"would restore {entry.describe()}" for _, entry, _ in held]
            lines += [_replay(path, entry, gpu) for (path, entry, _), gpu in zip(held, gpus, strict=True)]
        finally:
            for gpu in gpus:
                gpu.close()  # type: ignore[attr-defined]
    finally:
        for _, _, lock in held:
            lock.release()
    return lines


def _open_checked(held: list[tuple[Path, JournalEntry, GpuLock]], opener: Callable[..., object]) -> list[object]:
    """Open every journalled GPU and check its journal against it, before any setting changes."""
    gpus: list[object] = []
    try:
        for path, entry, _ in held:
            gpus.append(opener(index=entry.index, fake_preset=entry.fake, uuid=entry.uuid))
            check_entry(path, entry, gpus[-1])  # type: ignore[arg-type]
    except BaseException:
        for gpu in gpus:
            gpu.close()  # type: ignore[attr-defined]
        raise
    return gpus


def _replay(path: Path, entry: JournalEntry, gpu: object) -> str:
    from luce_bench.files import boot_id

    try:
        done = apply_entry(gpu, entry)  # type: ignore[arg-type]
    except GPUPermissionError as exc:
        raise GPUPermissionError(f"cannot restore GPU {entry.index}: {exc}") from exc
    path.unlink(missing_ok=True)
    note = (
        " (the machine rebooted since the journal was written)" if entry.boot_id and entry.boot_id != boot_id() else ""
    )
    if entry.run_dir and mark_killed(Path(entry.run_dir), "`luce-bench restore` put the original settings back"):
        resume = f"luce-bench sweep --resume {shell_arg(entry.run_dir)}"
        note += f"; the killed run {entry.run_dir} can continue with `{resume}`"
    return (
        f"restored GPU {entry.index} ({entry.gpu_name}): {done}, persistence "
        f"{'on' if entry.persistence_mode else 'off'}{note}"
    )


def check_entry(path: Path, entry: JournalEntry, gpu: GPU) -> None:
    """Refuse, before any change, a journal whose original limit or clock lock this card could not have had."""
    lo, hi = gpu.power_limit_constraints_mw()
    if not lo <= entry.original_limit_mw <= hi:
        raise JournalError(
            f"power-limit journal {path}: its original limit {entry.original_limit_mw / 1000:g} W is outside the "
            f"range of GPU {entry.index} ({lo / 1000:g}-{hi / 1000:g} W): not this card's journal; inspect it and "
            "delete it by hand"
        )
    lock = entry.original_sm_lock_mhz
    if entry.sm_clocks_changed and lock and not (len(lock) == 2 and 0 < lock[0] <= lock[1]):
        raise JournalError(f"power-limit journal {path}: bad original SM clock lock {lock}; inspect it and delete it")
