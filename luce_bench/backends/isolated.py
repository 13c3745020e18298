"""Run a backend in a child Python process of its own.

Why: on the H100, the CUDA build of llama-cpp-python crashed in a process that had imported torch (a segfault in
`llama_model_load_from_file` when pynvml was initialised too, heap corruption otherwise). The child imports only the
backend it runs, so torch and pynvml stay in the parent. Timings are unaffected: each call's `elapsed_s` is measured
inside the child around synchronised device work; the pipe round trip (~0.1 ms) lies outside it but inside the
energy window, like any other host overhead.

    parent                                   child (python -m luce_bench.backends.isolated FD MODULE:CLASS KWARGS)
    IsolatedBackend.prefill(ids) --pickle--> backend.prefill(ids) --pickle--> StepResult
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection, Pipe
from typing import Any

from luce_bench.backends.base import (
    Backend,
    BackendUnavailable,
    ModelSpec,
    StepResult,
    UnavailableAndBadInput,
    load_class,
)
from luce_bench.errors import UserError


class IsolatedBackend(Backend):
    """Proxy for backend `inner_name` ("module:Class" `target`), in a child process; the backend's own interface."""

    def __init__(self, inner_name: str, target: str, **kwargs: Any) -> None:
        self.name = inner_name  # type: ignore[misc]  # the proxy reports under the inner backend's name
        self._target = target
        self._inner_cls = load_class(target)
        self.simulated = self._inner_cls.simulated  # type: ignore[misc]
        self._kwargs = kwargs
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._info: dict[str, Any] = {}
        self._broken = False  # a call was interrupted or the child died: close() kills it at once

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The proxy can always start; the inner backend's reason was checked by the caller."""
        return None

    def load(self, model: ModelSpec, device: str = "auto") -> None:
        """Run the inner backend's `prepare` here, start the child process, load the model there."""
        prepare = getattr(self._inner_cls, "prepare", None)
        if prepare is not None:  # parent-side work that needs torch (e.g. the GGUF export)
            prepare(model, **self._kwargs)
        parent, child = Pipe(duplex=True)
        fd = child.fileno()
        env = dict(os.environ, LUCE_BENCH_ISOLATED="1")
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "luce_bench.backends.isolated", str(fd), self._target, json.dumps(self._kwargs)],
            pass_fds=(fd,),
            env=env,
        )
        child.close()
        self._conn = parent
        self._call("load", model, device)
        self._device_kind = self._call("device_kind")

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._conn is None:
            raise RuntimeError(f"{self.name}: not loaded")
        if self._broken:
            raise RuntimeError(f"{self.name} worker process was abandoned mid-call; it cannot be used again")
        try:
            self._conn.send((method, args, kwargs))
            status, value = self._conn.recv()
        except (EOFError, OSError, BrokenPipeError) as exc:
            self._broken = True
            code = self._proc.poll() if self._proc else None
            raise RuntimeError(f"{self.name} worker process died (exit code {code}) during {method}()") from exc
        except BaseException:  # interrupted mid-call (a test's deadline, a signal): the reply may never come
            self._broken = True
            raise
        if status == "ok":
            return value
        kind, message = value
        if kind == "UnavailableAndBadInput":
            raise UnavailableAndBadInput(message)
        if kind == "UserError":
            raise UserError(message)
        if kind == "BackendUnavailable":
            raise BackendUnavailable(message)
        raise RuntimeError(f"{self.name} worker: {message}")

    def reset(self) -> None:
        """Reset the inner backend."""
        self._call("reset")

    def prefill(self, token_ids: Sequence[int], logits: bool = False) -> StepResult:
        """The inner backend's prefill, in the child."""
        return self._call("prefill", list(token_ids), logits=logits)

    def decode(self, n: int, logits: bool = False, inputs: Sequence[int] | None = None) -> StepResult:
        """The inner backend's decode, in the child."""
        return self._call("decode", n, logits=logits, inputs=list(inputs) if inputs is not None else None)

    def generate(self, seed: int, n: int) -> StepResult:
        """The inner backend's generate, in the child (one round trip per tg iteration)."""
        return self._call("generate", int(seed), n)

    def save_context(self) -> None:
        """The inner backend keeps its context, in the child."""
        self._call("save_context")

    def restore_context(self) -> None:
        """The inner backend goes back to its context, in the child."""
        self._call("restore_context")

    def info(self) -> dict[str, Any]:
        """The inner backend's provenance, marked as run in a child process."""
        info = dict(self._call("info")) if self._conn is not None else dict(self._info)
        info["process"] = "isolated child process (no torch, no NVML)"
        return info

    def close(self) -> None:
        """Close the inner backend and end the child process (killed at once when a call was interrupted)."""
        if self._broken and self._proc is not None:
            self._proc.kill()
        if self._conn is not None and not self._broken:
            try:
                self._info = self._call("info")
                self._call("close")
                self._conn.send(("exit", (), {}))
            except Exception:  # noqa: BLE001 - closing must not mask the run's result
                pass
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


def _serve(conn: Connection, target: str, kwargs: dict[str, Any]) -> None:
    backend = load_class(target)(**kwargs)
    while True:
        try:
            method, args, kw = conn.recv()
        except EOFError:
            return
        if method == "exit":  # the parent does not wait for a reply
            return
        try:
            if method == "device_kind":
                result: Any = backend.device_kind
            else:
                result = getattr(backend, method)(*args, **kw)
            conn.send(("ok", result))
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
            kind = (
                "UnavailableAndBadInput"
                if isinstance(exc, UnavailableAndBadInput)
                else "UserError"
                if isinstance(exc, UserError)
                else "BackendUnavailable"
                if isinstance(exc, BackendUnavailable)
                else type(exc).__name__
            )
            detail = (
                str(exc)
                if kind in ("UnavailableAndBadInput", "UserError", "BackendUnavailable")
                else (f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=4)}")
            )
            conn.send(("error", (kind, detail)))


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent dies, so a killed luce-bench never leaves a worker behind."""
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent is already gone
        sys.exit(1)


if __name__ == "__main__":
    _die_with_parent()
    _serve(Connection(int(sys.argv[1])), sys.argv[2], json.loads(sys.argv[3]))
