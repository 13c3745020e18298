"""How `make test` spreads the suite over processes (pytest-xdist): the GPU tests together, every module in one piece.

* The tests under tests/gpu/ (every `gpu`-marked test lives there; conftest refuses one elsewhere) form one work unit,
  run in order by one worker, and it is handed out first: its chain (8 min 23 s on an H100, 2026-12-05) sets the
  suite's time, while the other workers run the CPU tests beside it. Two workers on one card would time each other,
  or run two persistent megakernels competing for its SMs.
* Every other module is one work unit, so its module and session fixtures (the kernel builds of
  tests/test_kernel_build.py, say) are made once, not once per worker. The longest known one is handed out next.
* `-n auto` takes one worker per core while memory allows ~WORKER_BYTES each (one core fewer on a machine with more
  than SPARE_CORE_ABOVE), no more than the work units the command line names where it names only test files, and none
  (one process, no xdist) where that leaves fewer than MIN_WORKERS.
  `-s` and `--trace` run in one process too, as xdist does for `--pdb`.
* Each CPU worker starts torch's and BLAS's CPU threads for its share of the cores (OMP_NUM_THREADS, MKL_NUM_THREADS,
  OPENBLAS_NUM_THREADS = cores // workers), unless the user set one of them: one thread per core in every worker
  oversubscribed the H200's 16 cores fifteen-fold. The GPU worker keeps torch's default.
* A worker that crashes (a kernel fault kills the process) fails its test once; the rest of its unit goes to a new
  worker.
* One worker is the GPU worker (the first started, or the one started after it crashed): only it gets the GPU unit,
  first, and only it sees the GPU. Every other worker hides it from CUDA (`CUDA_VISIBLE_DEVICES=""`, set before
  anything initialises CUDA) and runs the CPU tests as CI's machine does. Otherwise a CPU test that uses CUDA where
  there is one (HF on `--device auto`) would share the card with the megakernel's persistent launches: on the H200
  such tests waited 60 s and failed. After the GPU unit, the GPU worker takes CPU units too (the card is idle then).

The controller tells the workers that this plan is on (`workerinput["gpu_together"]`); under another --dist mode the
workers leave the GPU tests out, and the run says so (conftest.py). xdist 3.8's own `loadgroup` would do the grouping
but does not group under pytest 9 (it renames `item._nodeid`, which pytest 9 no longer reads).
"""

from __future__ import annotations

import os
from typing import Any

import pytest

GPU_SCOPE = "tests/gpu/"
# work units handed out before the others, in this order (the rest: most tests first, xdist's loadscope order)
FIRST_SCOPES = (GPU_SCOPE, "tests/test_kernel_build.py")
WORKER_BYTES = 2 << 30  # a worker's peak resident memory, with margin (measured 0.9 GiB on CI's machine)
MIN_WORKERS = 2
SPARE_CORE_ABOVE = 4
PLAN_KEY = "gpu_together"
GPU_WORKER_KEY = "gpu_worker"
_GPU_WORKER = pytest.StashKey[dict[str, Any]]()


def in_gpu_dir(nodeid: str) -> bool:
    """Whether a test id names a module in the gpu/ folder (whatever the rootdir the ids are relative to)."""
    parts = nodeid.split("::", 1)[0].split("/")
    return len(parts) >= 2 and parts[-2] == "gpu"


def scope_of(nodeid: str) -> str:
    """The work unit of a test: GPU_SCOPE for the tests under tests/gpu/, else its module's path."""
    return GPU_SCOPE if in_gpu_dir(nodeid) else nodeid.split("::", 1)[0]


def auto_workers(cpus: int, available_bytes: int | None, units: int | None = None) -> int:
    """Workers for `-n auto`: one per core while memory allows WORKER_BYTES each; 0 (no xdist) below MIN_WORKERS.

    Above SPARE_CORE_ABOVE cores one is left to the GPU worker's host side and the tests' own compile pools. `units`:
    how many work units the command line names, where it names only files (see units_named); no more workers than that.
    """
    n = cpus - 1 if cpus > SPARE_CORE_ABOVE else cpus
    if available_bytes is not None:
        n = min(n, available_bytes // WORKER_BYTES)
    if units is not None:
        n = min(n, units)
    return n if n >= MIN_WORKERS else 0


def units_named(args: list[str]) -> int | None:
    """The work units that command-line arguments name, where each names a test file or a test in one (else None).

    `make test ARGS=tests/test_cli.py` is one unit: one process, no workers to start. A folder, or no argument at all,
    may hold any number of units (None).
    """
    if not args:
        return None
    scopes = set()
    for arg in args:
        path = arg.split("::", 1)[0].replace(os.sep, "/").rstrip("/")
        if path.endswith("/gpu") or path == "gpu":
            scopes.add(GPU_SCOPE)  # the GPU tests' folder is one unit
        elif path.endswith(".py") and not os.path.isdir(path):
            scopes.add(scope_of(path))
        else:
            return None
    return len(scopes)


def available_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. a container's share)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def plan_is_on(config: pytest.Config) -> bool:
    """In a worker: whether the controller runs this plan (the GPU tests stay together on one worker)."""
    return bool(getattr(config, "workerinput", {}).get(PLAN_KEY))


def hide_gpu_from_cpu_workers(config: pytest.Config) -> None:
    """In a worker of this plan other than the GPU worker: CUDA sees no device (call before anything initialises it)."""
    if plan_is_on(config) and not config.workerinput.get(GPU_WORKER_KEY):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def share_cores(config: pytest.Config) -> None:
    """In a CPU worker of this plan: torch's and BLAS's CPU threads = its share of the cores (unless the user set them).

    Each would otherwise start one thread per core: 15 workers x 16 threads on the H200's 16 cores spent 30 min of CPU
    time on the CPU tests (CI's 2 workers: 12) and starved the GPU worker's host side. The GPU worker keeps torch's
    default: its CPU-bound steps (the 0.8B random weights, compiling) have the machine to themselves once the CPU tests
    are done.
    """
    if not plan_is_on(config) or config.workerinput.get(GPU_WORKER_KEY) or any(os.environ.get(v) for v in THREAD_VARS):
        return
    share = str(max(1, usable_cpus() // max(1, int(config.workerinput.get("workercount", 1)))))
    for var in THREAD_VARS:
        os.environ[var] = share


def _gpu_worker(config: pytest.Config) -> dict[str, Any]:
    """The controller's record of which worker is the GPU worker ({"id": "gw0"}; None until one is started)."""
    return config.stash.setdefault(_GPU_WORKER, {"id": None})


def _takes_over(config: pytest.Config) -> bool:
    return config.getvalue("dist") == "load"  # what -n gives without --dist


def _scheduling(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class GpuTogetherScheduling(LoadScopeScheduling):
        """xdist's loadscope with scope_of's units, FIRST_SCOPES first, the GPU unit only to the GPU worker."""

        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

        def _is_gpu_worker(self, node: Any) -> bool:
            return node.gateway.id == _gpu_worker(self.config)["id"]

        def _assign_work_unit(self, node: Any) -> None:
            gpu_worker = self._is_gpu_worker(node)
            for scope in reversed(FIRST_SCOPES):
                if scope in self.workqueue:
                    self.workqueue.move_to_end(scope, last=False)
            if GPU_SCOPE in self.workqueue and not gpu_worker:
                self.workqueue.move_to_end(GPU_SCOPE)
            if self.workqueue and (gpu_worker or next(iter(self.workqueue)) != GPU_SCOPE):
                super()._assign_work_unit(node)

        def schedule(self) -> None:
            if self.collection is None:  # the first call: with more workers than units, xdist shuts down the last
                gpu = [n for n in self.assigned_work if self._is_gpu_worker(n)]  # ones added: never the GPU worker
                if gpu:
                    self.assigned_work = {gpu[0]: self.assigned_work.pop(gpu[0]), **self.assigned_work}
            super().schedule()

        def _reschedule(self, node: Any) -> None:
            if list(self.workqueue) == [GPU_SCOPE] and not self._is_gpu_worker(node):
                if not node.shutting_down:
                    node.shutdown()  # what is left is not for it (the GPU worker's replacement takes it)
                return
            super()._reschedule(node)

        def remove_node(self, node: Any) -> str | None:
            """A crashed worker's test is reported once and not run again; the rest of its unit is requeued.

            loadscope would requeue the crashed test with the rest, so every replacement worker would crash on it
            (a faulting kernel launched ~4N times).
            """
            if self._is_gpu_worker(node) and self._pending_of(self.assigned_work.get(node, {})):
                # it crashed: its replacement (the next worker started) is the GPU worker
                _gpu_worker(self.config)["id"] = None
            for unit in self.assigned_work.get(node, {}).values():
                crashed = next((nodeid for nodeid, done in unit.items() if not done), None)
                if crashed is not None:
                    unit[crashed] = True
                    super().remove_node(node)  # requeues the unit's remaining tests
                    return crashed
            return super().remove_node(node)

    return GpuTogetherScheduling(config, log)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return _scheduling(config, log) if _takes_over(config) else None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    if _takes_over(node.config):
        node.workerinput[PLAN_KEY] = True
        gpu = _gpu_worker(node.config)
        if gpu["id"] is None:
            gpu["id"] = node.gateway.id
        node.workerinput[GPU_WORKER_KEY] = gpu["id"] == node.gateway.id


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config: pytest.Config) -> None:
    """-s, --capture=no and --trace need the test in this process (xdist's workers swallow output, ignore --trace)."""
    opt = config.option
    if getattr(opt, "numprocesses", None) and (opt.capture == "no" or getattr(opt, "trace", False)):
        opt.numprocesses = 0


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own rule reads it
    return auto_workers(usable_cpus(), available_bytes(), units_named(list(config.args)))
