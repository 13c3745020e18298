"""`status.json` in every run directory: where the run is, where it stopped and why, and the exit code it gave.

The file is rewritten (atomically) when the run starts, at each setting, trial and repetition, after each row, and
when it ends. Fields:
* `state`: running, finished, finished-with-failures, interrupted (a signal), stopped (a fault) or killed (the
  process vanished without a word: SIGKILL, OOM, power loss; see `effective_state`); `exit_code` and `reason`
  say why (see EXIT_CODES); `settings_restored`: whether the original power limit and clock lock are back (None when
  the run changed nothing). After the last row of a run with rows, the ending waits under `render_pending`, the
  state still running, until the summary, report and plots are written (`RunStatus.finish`, `render_done`).
* `where`: the last step started: phase (loading, applying setting, warm-up, measuring, cooldown, done), trial n of
  N, setting, backend, test, repetition.
* `rows` / `rows_planned`; `failed` (backends that failed, with why) and `warnings` (e.g. the sampler stopped).
* `command`, `config_sha256`, `plan_sha256`, `gpu_uuid`: what `sweep --resume` checks; `pid`, `host`, `boot_id`.
* `attempts`: the earlier attempts of a resumed run, each with its state, exit code, reason and rows.

On a full disk the atomic rewrite fails; the status is then written compactly over the old file, in place (its
blocks are already allocated), padded with spaces to the old length. So that the ending fits there (its reason is
often the longest field), every normal write leaves `RESERVE_BYTES` of trailing spaces after the JSON, and a reason
that still does not fit is cut short.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from luce_bench.errors import UserError
from luce_bench.files import atomic_write, boot_id, pid_alive, shell_arg

STATUS = "status.json"
FORMAT = 1
RESERVE_BYTES = 1024  # trailing spaces after every normal write: room for the ending on a full disk
CUT = " [cut]"  # the end of a reason cut short to fit a full disk's in-place rewrite

EXIT_OK = 0
EXIT_FAILURES = 1
EXIT_BAD_INPUT = 2
EXIT_GPU_FAULT = 3
EXIT_DISK = 4
EXIT_NOT_RESTORED = 5
EXIT_CODES = {
    EXIT_OK: "finished: every planned repetition was measured",
    EXIT_FAILURES: "finished with failures: a backend failed to load, crashed or timed out, or the sampler stopped",
    EXIT_BAD_INPUT: "bad input: refused before any run directory was created and before any setting changed",
    EXIT_GPU_FAULT: "stopped by a GPU error mid-run (NVML: GPU lost, not supported, ...); finished rows kept",
    EXIT_DISK: "stopped: the run directory could not be written (disk full, I/O error); finished rows kept",
    EXIT_NOT_RESTORED: "the original power limit / clock lock could not be put back: run `luce-bench restore`",
    128 + 1: "interrupted by SIGHUP (settings restored)",
    128 + 2: "interrupted by SIGINT / Ctrl-C (settings restored)",
    128 + 15: "interrupted by SIGTERM (settings restored)",
    128 + 9: "killed by SIGKILL: nothing could run; `luce-bench restore`, then `luce-bench sweep --resume RUN_DIR`",
}

# the run's own ending, kept while its report is unwritten: from its last row until `render_done` (longer after a
# signal, a full disk or a kill in that time)
RENDER_PENDING = "render_pending"
RUNNING, FINISHED, FAILURES = "running", "finished", "finished-with-failures"
INTERRUPTED, STOPPED, KILLED = "interrupted", "stopped", "killed"


def utc_now() -> str:
    """The current UTC time, RFC 3339 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def sha256_json(value: Any) -> str:
    """A stable hash of a JSON-able value (sorted keys)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def write_status(run_dir: Path, doc: dict[str, Any]) -> bool:
    """Write `doc` to `run_dir`/status.json; on a full disk overwrite the old file in place. False if neither worked."""
    path = Path(run_dir) / STATUS
    try:
        atomic_write(path, json.dumps(doc, indent=1, default=str) + "\n" + " " * RESERVE_BYTES)
        return True
    except OSError:
        pass
    try:
        size = path.stat().st_size
        compact = _fitted(doc, size)
        if compact is None:
            return False
        with open(path, "r+", encoding="utf-8") as f:  # the old file's blocks are already allocated
            f.write(compact + " " * (size - len(compact)))
        return True
    except OSError:
        return False


def _fitted(doc: dict[str, Any], size: int) -> str | None:
    """`doc` as compact JSON of at most `size` bytes, its reasons cut short if need be; None if even that is too long.

    The reasons are the run's (`reason`) and, while its report is due, the ending waiting under RENDER_PENDING: each
    is cut to the same length. json.dumps escapes every non-ASCII character (and a lone surrogate from an
    undecodable path), so the text is ASCII: its length is its size in bytes.
    """
    compact = json.dumps(doc, default=str) + "\n"
    pending = doc.get(RENDER_PENDING)
    reasons = [str(doc.get("reason") or "")] + ([str(pending.get("reason") or "")] if isinstance(pending, dict) else [])
    keep = max(len(r) for r in reasons)

    def cut(text: str) -> str:
        return text if len(text) <= keep else text[:keep] + CUT

    while len(compact) > size:
        long = sum(len(r) >= keep for r in reasons) or 1  # the reasons a shorter `keep` shortens
        keep -= -(-(len(compact) - size) // long) + len(CUT)  # (an escaped character is longer than one: again)
        if keep <= 0:
            return None
        fitted = {**doc, "reason": cut(reasons[0])}
        if isinstance(pending, dict):
            fitted[RENDER_PENDING] = {**pending, "reason": cut(reasons[1])}
        compact = json.dumps(fitted, default=str) + "\n"
    return compact


def read_status(run_dir: Path) -> dict[str, Any] | None:
    """status.json of `run_dir` (None when there is none); UserError when it is not a luce-bench status file."""
    path = Path(run_dir) / STATUS
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is unreadable ({exc}); it is not a luce-bench status file") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or not isinstance(doc.get("state"), str):
        raise UserError(f"{path} is not a luce-bench status file (format {FORMAT})")
    return doc


def effective_state(doc: dict[str, Any]) -> str:
    """The state, with a `running` status whose process is gone (or ran before a reboot) read as `killed`."""
    if doc.get("state") != RUNNING:
        return str(doc.get("state"))
    same_machine = doc.get("host") == socket.gethostname() and doc.get("boot_id") == boot_id()
    return RUNNING if same_machine and pid_alive(doc.get("pid")) else KILLED


def describe(doc: dict[str, Any], run_dir: Path | None = None) -> str:
    """One line: the state, where it stopped and why; its commands name `run_dir` where given (else RUN_DIR)."""
    state = effective_state(doc)
    where = doc.get("where") or {}
    at = ", ".join(
        f"{k} {where[k]}" for k in ("phase", "setting", "backend", "test", "rep") if where.get(k) not in (None, "")
    )
    rows = f"{doc.get('rows', '?')} of {doc.get('rows_planned', '?')} repetitions"
    if state == KILLED and doc.get("state") == RUNNING:
        reason = "the process ended without a word (SIGKILL, OOM or power loss)"
        from luce_bench.results import META

        pending = doc.get(RENDER_PENDING)
        # (a sweep killed before its meta.json was written has nothing `--resume` can continue)
        resumable = doc.get("command") == "sweep" and (run_dir is None or (run_dir / META).is_file())
        if isinstance(pending, dict) and pending.get("state") in (FINISHED, FAILURES):
            reason += " after its last row, before its report: `luce-bench report RUN_DIR` writes it"
        elif isinstance(pending, dict):  # stopped early (its settings already restored), then killed in its report
            then = "`luce-bench report RUN_DIR`"
            if resumable:
                then = "`luce-bench sweep --resume RUN_DIR` continues it and"
            reason += f" while writing the report of a run {pending.get('state', 'stopped')}: {then} writes it"
        elif resumable:
            reason += "; `luce-bench restore`, then `luce-bench sweep --resume RUN_DIR` continues it"
    else:
        reason = doc.get("reason") or ""
    if run_dir is not None:
        reason = reason.replace("RUN_DIR", shell_arg(run_dir))
    return f"{state}: {rows}" + (f"; last step: {at}" if at else "") + (f"; {reason}" if reason else "")


class RunStatus:
    """The status file of one run directory (see the module docstring)."""

    def __init__(self, run_dir: Path, doc: dict[str, Any]) -> None:
        """Wrap `doc` for `run_dir` (use `start`)."""
        self.run_dir, self.doc = Path(run_dir), doc

    @classmethod
    def start(cls, run_dir: Path, identity: dict[str, Any], rows: int, previous: dict[str, Any] | None) -> RunStatus:
        """A running status: `identity` (command, config_sha256, plan_sha256, gpu_uuid, rows_planned), `rows` so far.

        `previous`: the status of the attempt a resume continues; it moves into `attempts`.
        """
        attempts = list(previous.get("attempts", [])) if previous else []
        if previous:
            keep = ("started_utc", "updated_utc", "pid", "host", "rows", "exit_code", "reason", "where")
            ended = as_ended(previous)  # (an ending that waited for its report: the run's own)
            state = effective_state(previous)
            if state == KILLED and isinstance(previous.get(RENDER_PENDING), dict):  # killed with its report due
                state = str(ended.get("state"))
            attempts.append({"state": state, **{k: ended.get(k) for k in keep}})
        now = utc_now()
        doc = {
            "format": FORMAT,
            **identity,
            "state": RUNNING,
            "exit_code": None,
            "reason": "",
            "where": {"phase": "starting"},
            "rows": rows,
            "failed": [],
            "warnings": [],
            "settings_restored": None,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "boot_id": boot_id(),
            "started_utc": now,
            "updated_utc": now,
            "attempts": attempts,
        }
        status = cls(run_dir, doc)
        status.write()
        return status

    def write(self) -> bool:
        """Write the file now (best effort: a status write never stops a run)."""
        self.doc["updated_utc"] = utc_now()
        return write_status(self.run_dir, self.doc)

    def at(self, **where: Any) -> None:
        """Record the step the run is starting (phase, trial, setting, backend, test, rep); unset keys stay."""
        self.doc["where"] = {**self.doc["where"], **where}
        self.write()

    def rows(self, n_rows: int) -> None:
        """Record the rows in runs.csv."""
        self.doc["rows"] = n_rows
        self.write()

    def finish(self, state: str, exit_code: int, reason: str = "", render: bool = False, **extra: Any) -> bool:
        """Record how the run ended (`extra`: rows, failed, warnings, settings_restored).

        `render`: its summary, report and plots are written next. Until `render_done`, the ending waits under
        RENDER_PENDING and the state stays running, so a process killed in between reads as killed with its report
        unwritten (`describe`), never as finished without one.
        """
        if not render:
            self.doc.update(state=state, exit_code=exit_code, reason=reason, **extra)
            return self.write()
        ending = {"state": state, "exit_code": exit_code, "reason": reason}
        self.doc.update(**extra, **{RENDER_PENDING: ending})
        return self.write()


def mark_killed(run_dir: Path, note: str) -> bool:
    """Say in a killed run's status that it was killed and what `luce-bench restore` did; False if not applicable."""
    with contextlib.suppress(UserError):
        doc = read_status(run_dir)
        if doc is not None and effective_state(doc) == KILLED and doc.get("state") == RUNNING:
            reason = f"the process ended without a word (SIGKILL, OOM or power loss); {note}"
            doc.update(state=KILLED, exit_code=137, reason=reason, settings_restored=True, updated_utc=utc_now())
            return write_status(run_dir, doc)
    return False


def mark_render_unwritten(
    run_dir: Path, state: str, code: int, note: str, ending: tuple[str, int, str] | None = None
) -> tuple[str, int, str]:
    """The run's summary, report and plots were not all written (a signal, a write error): say so in status.json.

    A run that had finished (or finished with failures) becomes `state` with `code` (interrupted 128 + n, or stopped
    with exit 4); a worse ending (a GPU fault, settings not restored, an earlier signal) is kept. `note` is added to
    the reason either way, and the run's own ending is kept under RENDER_PENDING: `render_done` puts it back once the
    report is written (`luce-bench report RUN`, `sweep --resume`). `ending`: the run's (state, exit code, reason) as
    the caller knows it, used where status.json does not say it (unreadable, or still "running": its last write
    failed). Returns the (state, exit code, reason) to tell the user; status.json is left as it was where it cannot be
    read or written (a full disk).
    """
    doc = None
    with contextlib.suppress(UserError, OSError):
        doc = read_status(run_dir)
    own = dict(zip(("state", "exit_code", "reason"), ending or (state, EXIT_OK, ""), strict=True))
    found = (doc or {}).get(RENDER_PENDING) or {k: (doc or {}).get(k) for k in ("state", "exit_code", "reason")}
    run_end = found if isinstance(found.get("exit_code"), int) else own
    if run_end["exit_code"] not in (EXIT_OK, EXIT_FAILURES):
        state, code = str(run_end["state"]), int(run_end["exit_code"])
    reason = f"{run_end['reason']}; {note}" if run_end.get("reason") else note
    if doc is None:
        return state, code, reason
    doc.update({RENDER_PENDING: run_end, "state": state, "exit_code": code, "reason": reason, "updated_utc": utc_now()})
    with contextlib.suppress(UserError, OSError):  # (the caller's error line still says it)
        write_status(run_dir, doc)
    return state, code, reason


def as_ended(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with the run's own ending where only the writing of its report was interrupted (RENDER_PENDING)."""
    return {**doc, **doc[RENDER_PENDING]} if isinstance(doc.get(RENDER_PENDING), dict) else doc


def render_done(run_dir: Path) -> None:
    """The report is written: a status that waited for it (RENDER_PENDING) gets the run's own ending back."""
    with contextlib.suppress(UserError, OSError):
        doc = read_status(run_dir)
        if doc is not None and isinstance(doc.get(RENDER_PENDING), dict):
            doc = as_ended(doc)
            doc.pop(RENDER_PENDING)
            doc["updated_utc"] = utc_now()
            write_status(run_dir, doc)


def render_pending(run_dir: Path) -> bool:
    """Whether the run's report is still due (status.json keeps RENDER_PENDING): a signal, a kill or a full disk."""
    with contextlib.suppress(UserError, OSError):
        doc = read_status(run_dir)
        return doc is not None and isinstance(doc.get(RENDER_PENDING), dict)
    return False
