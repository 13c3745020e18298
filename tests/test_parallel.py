"""`make test` in parallel (tests/parallel.py): GPU tests on one worker in order, modules whole, workers by cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from parallel import GPU_SCOPE, THREAD_VARS, WORKER_BYTES, auto_workers, scope_of, units_named, usable_cpus

GIB = 1 << 30


def test_the_gpu_tests_are_one_unit_and_every_other_module_is_one():
    assert scope_of("tests/gpu/test_megakernel.py::test_teacher_forced_logits_short") == GPU_SCOPE
    assert scope_of("tests/gpu/test_prefill.py::test_x[a::b]") == GPU_SCOPE
    assert scope_of("tests/test_cli.py::test_compare_writes_every_file") == "tests/test_cli.py"
    assert scope_of("tests/test_cli.py::TestX::test_y[1]") == "tests/test_cli.py"
    assert scope_of("tests/test_gpu_fake.py::test_z") == "tests/test_gpu_fake.py"  # "gpu" in a CPU module's name
    assert scope_of("gpu/test_prefill.py::test_x") == GPU_SCOPE  # ids relative to another rootdir (--rootdir=tests)


@pytest.mark.parametrize(
    ("cpus", "available", "workers"),
    [
        (16, 128 * GIB, 15),  # the H200 machine: a worker per core, one core left to the GPU worker's host side
        (16, 20 * GIB, 20 * GIB // WORKER_BYTES),  # memory caps them
        (4, 24 * GIB, 4),  # no core to spare on four
        (2, 24 * GIB, 2),  # CI's machine
        (1, 24 * GIB, 0),  # one core: one process, no xdist
        (8, WORKER_BYTES + 1, 0),  # memory for one worker only: likewise
        (4, None, 4),  # no /proc/meminfo: by cores
    ],
)
def test_auto_takes_a_worker_per_core_while_memory_allows(cpus, available, workers):
    assert auto_workers(cpus, available) == workers


def test_a_command_line_naming_test_files_starts_no_more_workers_than_it_names_units(tmp_path):
    assert units_named(["tests/test_cli.py"]) == 1
    assert units_named(["tests/test_cli.py::test_a", "tests/test_cli.py::test_b[x::y]"]) == 1
    assert units_named(["tests/test_cli.py", "tests/test_files.py", "tests/gpu/test_a.py", "tests/gpu/test_b.py"]) == 3
    assert units_named(["tests/gpu"]) == units_named(["tests/gpu/", "tests/gpu/test_a.py"]) == 1
    assert units_named([]) is None  # the whole suite
    assert units_named(["tests/test_cli.py", "tests"]) is None  # a folder holds any number
    folder = tmp_path / "odd.py"  # a folder whose name looks like a module
    folder.mkdir()
    assert units_named([str(folder)]) is None
    assert auto_workers(16, 128 * GIB, units_named(["tests/test_cli.py"])) == 0  # one unit: one process
    assert auto_workers(16, 128 * GIB, 3) == 3
    assert auto_workers(2, 24 * GIB, 3) == 2


TOY_CONFTEST = """
import json, os, time
from parallel import pytest_cmdline_main, pytest_configure_node, pytest_xdist_make_scheduler  # the hooks under test
from parallel import hide_gpu_from_cpu_workers, share_cores

def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: a GPU test")
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw0" and os.environ.get("TOY_SLOW_GW0"):
        time.sleep(2)  # the GPU worker is the last one ready
    hide_gpu_from_cpu_workers(config)
    share_cores(config)

def pytest_runtest_call(item):
    seen = os.environ.get(os.environ.get("TOY_SEEN", "CUDA_VISIBLE_DEVICES"))
    with open(os.environ["TOY_LOG"], "a") as f:
        f.write(json.dumps([item.nodeid, os.environ.get("PYTEST_XDIST_WORKER"), time.monotonic(), seen]) + "\\n")
"""
TOY_TESTS = """
import os, pytest
{mark}
@pytest.mark.parametrize("k", range({n}))
def test_t(k):
    if os.environ.get("TOY_CRASH") == os.path.basename(__file__) + str(k):
        os._exit(1)  # as a kernel fault kills a worker
"""


def _toy_run(root: Path, workers: int, *args: str, crash: str = "", rc: int = 0) -> list[tuple[str, str]]:
    """Run the toy suite under `-n workers`; (nodeid, worker) in the order the tests ran (crash: "test_g1.py2")."""
    return [(nodeid, worker) for nodeid, worker, _ in _toy_rows(root, workers, *args, crash=crash, rc=rc)]


def _toy_rows(
    root: Path, workers: int, *args: str, crash: str = "", rc: int = 0, slow_gw0: bool = False, **env_vars: str
) -> list[tuple[str, str, str]]:
    """_toy_run's rows with the value each test saw of CUDA_VISIBLE_DEVICES (the toy runs under "7") or of TOY_SEEN.

    `env_vars` are set for the run; the cores' share variables are unset otherwise.
    """
    for rel, mark, n in [
        ("tests/gpu/test_g1.py", "pytestmark = pytest.mark.gpu", 5),
        ("tests/gpu/test_g2.py", "pytestmark = pytest.mark.gpu", 3),
        ("tests/test_kernel_build.py", "", 2),
        ("tests/test_a.py", "", 9),
        ("tests/test_b.py", "", 7),
        ("tests/test_c.py", "", 1),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(TOY_TESTS.format(mark=mark, n=n))
    (root / "tests/conftest.py").write_text(TOY_CONFTEST)
    (root / "pytest.ini").write_text("[pytest]\ntestpaths = tests\n")
    log = root / "ran.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]),
        "TOY_LOG": str(log),
        "TOY_CRASH": crash,
        "CUDA_VISIBLE_DEVICES": "7",
        "TOY_SLOW_GW0": "1" if slow_gw0 else "",
    }
    # this run's own options (make test's plugin choice too) and, under make test, its worker's name and core share
    unset = ("PYTEST_ADDOPTS", "PYTEST_DISABLE_PLUGIN_AUTOLOAD", *THREAD_VARS)
    for name in [k for k in env if k in unset or k.startswith("PYTEST_XDIST_")]:
        env.pop(name)
    env.update(env_vars)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", str(workers), *args]
    r = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == rc, r.stdout + r.stderr
    (root / "out.txt").write_text(r.stdout)
    rows = sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda row: row[2])
    return [(nodeid, worker, seen) for nodeid, worker, _, seen in rows]


def test_xdist_keeps_the_gpu_tests_on_one_worker_in_order_and_each_module_whole(tmp_path):
    pytest.importorskip("xdist")
    ran = _toy_run(tmp_path, 3)
    assert len(ran) == 27
    by_unit: dict[str, set[str]] = {}
    for nodeid, worker in ran:
        by_unit.setdefault(scope_of(nodeid), set()).add(worker)
    assert all(len(workers) == 1 for workers in by_unit.values()), by_unit  # one worker per unit
    assert len(set().union(*by_unit.values())) == 3  # and the units spread over the three
    gpu = [nodeid for nodeid, _ in ran if scope_of(nodeid) == GPU_SCOPE]
    assert gpu == [f"tests/gpu/test_g1.py::test_t[{k}]" for k in range(5)] + [
        f"tests/gpu/test_g2.py::test_t[{k}]" for k in range(3)
    ]


def test_the_gpu_tests_go_first_then_the_kernel_builds(tmp_path):
    pytest.importorskip("xdist")
    units = []
    for nodeid, _ in _toy_run(tmp_path, 1):
        if not units or units[-1] != scope_of(nodeid):
            units.append(scope_of(nodeid))
    assert units[:2] == [GPU_SCOPE, "tests/test_kernel_build.py"]
    assert sorted(units[2:]) == ["tests/test_a.py", "tests/test_b.py", "tests/test_c.py"]


def test_a_crashed_worker_fails_its_test_once_and_the_rest_of_its_unit_runs_elsewhere(tmp_path):
    pytest.importorskip("xdist")
    ran = _toy_run(tmp_path, 2, crash="test_g1.py2", rc=1)
    crashed = "tests/gpu/test_g1.py::test_t[2]"
    assert [nodeid for nodeid, _ in ran].count(crashed) == 1  # not once per replacement worker
    assert len(ran) == 27  # every test ran
    assert "1 failed, 26 passed" in (tmp_path / "out.txt").read_text()


def test_only_the_gpu_worker_sees_the_gpu(tmp_path):
    """The other workers run the CPU tests as CI does: a CPU test using CUDA would share the card with the GPU tests."""
    pytest.importorskip("xdist")
    rows = _toy_rows(tmp_path, 3)
    gpu_workers = {worker for nodeid, worker, _ in rows if scope_of(nodeid) == GPU_SCOPE}
    assert len(gpu_workers) == 1
    for nodeid, worker, seen in rows:
        assert seen == ("7" if worker in gpu_workers else ""), (nodeid, worker, seen)
    assert {seen for nodeid, _, seen in rows if scope_of(nodeid) == GPU_SCOPE} == {"7"}


def test_each_cpu_worker_gets_its_share_of_the_cores_for_cpu_threads_unless_the_user_chose(tmp_path):
    pytest.importorskip("xdist")
    share = str(max(1, usable_cpus() // 3))
    rows = _toy_rows(tmp_path, 3, TOY_SEEN="OMP_NUM_THREADS")
    gpu_workers = {worker for nodeid, worker, _ in rows if scope_of(nodeid) == GPU_SCOPE}
    assert len(rows) == 27 and len(gpu_workers) == 1
    for nodeid, worker, seen in rows:  # the GPU worker keeps torch's default (the variable unset)
        assert seen == (None if worker in gpu_workers else share), (nodeid, worker, seen)
    (tmp_path / "ran.jsonl").unlink()
    rows = _toy_rows(tmp_path, 3, TOY_SEEN="MKL_NUM_THREADS", OMP_NUM_THREADS="5")
    assert {seen for _, _, seen in rows} == {None}  # one variable set by the user: the others are left alone too


@pytest.mark.parametrize("only_gpu", [True, False])
def test_a_gpu_worker_ready_last_is_not_the_one_left_out_when_workers_outnumber_units(tmp_path, only_gpu):
    """With more workers than units, xdist shuts down the workers that were ready last."""
    pytest.importorskip("xdist")
    rows = _toy_rows(tmp_path, 4 if only_gpu else 7, *(["tests/gpu"] if only_gpu else []), slow_gw0=True)
    gpu = [(worker, seen) for nodeid, worker, seen in rows if scope_of(nodeid) == GPU_SCOPE]
    assert len(gpu) == 8 and {worker for worker, _ in gpu} == {"gw0"} and {seen for _, seen in gpu} == {"7"}
    assert len(rows) == (8 if only_gpu else 27)


def test_the_gpu_workers_replacement_sees_the_gpu_and_finishes_the_gpu_unit(tmp_path):
    pytest.importorskip("xdist")
    rows = _toy_rows(tmp_path, 3, crash="test_g1.py2", rc=1)
    gpu = [(nodeid, worker, seen) for nodeid, worker, seen in rows if scope_of(nodeid) == GPU_SCOPE]
    assert [nodeid for nodeid, _, _ in gpu] == [f"tests/gpu/test_g1.py::test_t[{k}]" for k in range(5)] + [
        f"tests/gpu/test_g2.py::test_t[{k}]" for k in range(3)
    ]
    assert len({worker for _, worker, _ in gpu}) == 2  # the first GPU worker, then its replacement
    assert {seen for _, _, seen in gpu} == {"7"}
    assert len(rows) == 27


@pytest.mark.parametrize("flag", ["-s", "--capture=no"])
def test_output_left_uncaptured_runs_the_tests_in_this_process(tmp_path, flag):
    """`make test ARGS=-s`: xdist's workers would swallow the output, so the tests run in this process."""
    pytest.importorskip("xdist")
    ran = _toy_run(tmp_path, 2, flag)
    assert len(ran) == 27 and {worker for _, worker in ran} == {None}  # no xdist worker ran them
