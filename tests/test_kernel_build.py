"""CPU CI for the megakernel.

It compiles for sm_80/86/89/90 without cuBLAS, ptxas reports 0 spills, the library loads without a GPU (static cudart)
and exports the luce_mk.h symbols; arch parsing and the build cache behave.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import KERNEL_OPTION_SETS, selected_option_sets

from luce_bench.errors import UserError
from luce_bench.kernels import build as kb

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
# f32 words of scratch (mk_layout.cuh Scratch): tagged raw 8224 x 2 + tagged sums of squares 128 x 2 + residual
# 3 x 4 x 1024 + tagged merged attention output 2048 x 2 + tagged attention partials 2 x 4 x 16 x 256 x 2 + tagged
# (max, sum) 2 x 4 x 16 x 2 x 2
SCRATCH_FLOATS = 16448 + 256 + 12288 + 4096 + 65536 + 512
needs_nvcc = pytest.mark.skipif(kb.find_nvcc() is None, reason="nvcc not found: the CUDA toolkit is not installed here")


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One nvcc call for all four archs (parallel per arch), shared by the tests of this session."""
    out = tmp_path_factory.mktemp("mk") / "build"
    return kb.build(ARCHS, out)


@needs_nvcc
def test_compiles_for_all_archs(built):
    assert built.lib.is_file()
    assert {r.arch for r in built.reports} == set(ARCHS)


@needs_nvcc
def test_no_register_spills(built):
    assert built.reports, "empty ptxas report"
    for r in built.reports:
        assert r.spill_stores == 0 and r.spill_loads == 0, (
            f"{r.arch} {r.function}: {r.spill_stores}/{r.spill_loads} B spilled"
        )
        if "decode_kernel" in r.function:
            assert 0 < r.registers <= 128  # 512-thread blocks: at most 128 registers per thread


@needs_nvcc
def test_library_loads_and_exports_abi(built):
    from luce_bench.kernels import lib as klib

    raw = ctypes.CDLL(str(built.lib))
    for sym in (*klib.SYMBOLS, *klib.PREFILL_SYMBOLS):
        assert hasattr(raw, sym), sym
    lib = klib.load_library(built.lib)
    lay = klib.layout(lib)
    assert lay.wblob_elems == 18 * 21528576 + 6 * 18350080  # all layer matrices, bf16 elements
    assert list(lay.layer_woff)[:5] == [0, 21528576, 43057152, 64585728, 82935808]
    assert lay.syncs_per_step == 49 and lay.vocab == 248320 and lay.hidden == 1024  # 18 x 2 + 6 x 2 + 1
    assert lay.gdn_out_transposed == 1 and lay.scratch_floats == SCRATCH_FLOATS
    assert lay.sp_stride == 26784 and lay.sblob_floats == 24 * 26784 + 1024
    # layer params + embedding = 752,393,024 - norms/conv/A/dt (small params are in the f32 blob)
    assert lay.wblob_elems + 248320 * 1024 == 752_393_024 - (24 * 2048 + 1024 + 6 * 512 + 18 * (6144 * 4 + 32 + 128))
    # 15 pointers, 7 ints + padding before `trace`; the tune (ABI 9; a fifth int in ABI 10) and, padded to 8, the
    # two pointers of the screened LM head (ABI 10) appended; then the grid (ABI 11), the deep phases and pause_ready
    # (ABI 12)
    assert ctypes.sizeof(klib.LuceMkParams) == 15 * 8 + 8 * 4 + 5 * 4 + 4 + 2 * 8 + 4 * 4
    assert ctypes.sizeof(klib.LuceMkTune) == 5 * 4
    assert lib.luce_mk_trace_points() == 24 * 12 + 5  # 12 points per layer + 5 per step
    assert klib.has_prefill(lib) and klib.prefill_continues(lib) and lib.luce_mk_abi_version() == 12
    # n_layers padded before hidden; pos (ABI 7) appended, padded to 8
    assert ctypes.sizeof(klib.LuceMkPrefillParams) == 9 * 8 + 2 * 4 + 2 * 8 + 8 + 8 + 8
    # prefill workspace for 64 tokens: best 256 B | conv history copy f32 6144 x 4 | X f32 64 x 1024 | Xn bf16 |
    # Y f32 64 x 8224 | U bf16 64 x 3584 |
    # conv out f32 64 x 6144 | Q, K, U, W f32 16 x 64 x 128 each | G 16 x 64 | M 16 x 64 x 64 | the tensor-core GDN's
    # start states S_c f32 16 x 1 chunk x 128 x 128 and E f32 16 x 64 x 128 (no O: its gated norm is fused) | the
    # split attention's parts (prompts up to 1024 tokens): rows f32 256 x 64 x 256, (max, sum) 256 x 64 x 2, counters
    assert lib.luce_mk_prefill_workspace(64) == 25_473_792 and lib.luce_mk_prefill_workspace(0) == 0
    assert lib.luce_mk_prefill_workspace(65) > lib.luce_mk_prefill_workspace(64)
    assert lib.luce_mk_prefill_launches(520) == 1 + 24 * 4 + 18 * 6 + 6 * 4 + 3


@needs_nvcc
def test_cache_hit(built, tmp_path):
    again = kb.build(ARCHS, built.lib.parent)
    assert again.cached and again.lib == built.lib and again.options == built.options


@needs_nvcc
def test_a_directory_built_with_other_flags_is_rebuilt_not_reused(built, tmp_path, monkeypatch):
    """`kernel build --out DIR` over a library of other options (or from before build keys were recorded) compiles."""
    other = tmp_path / "other"
    shutil.copytree(built.lib.parent, other)
    assert kb.build(ARCHS, other).cached  # the same key: reused

    def no_nvcc(cmd, tmp_dir, run=None):
        raise RuntimeError("nvcc was called")

    monkeypatch.setattr(kb, "run_nvcc", no_nvcc)
    for stale in ("another key", None):
        if stale is None:
            (other / kb.KEY_NAME).unlink()
        else:
            (other / kb.KEY_NAME).write_text(stale)
        with pytest.raises(RuntimeError, match="nvcc was called"):
            kb.build(ARCHS, other)
        shutil.rmtree(other, ignore_errors=True)
        shutil.copytree(built.lib.parent, other)


def _fake_nvcc(report: str, lib_bytes: bytes, before=None):
    """A run_nvcc stand-in: runs `before()` (what happens while nvcc compiles), then writes `lib_bytes` as the lib."""

    def run(cmd, tmp_dir, run=None):
        if before is not None:
            before()
        Path(cmd[cmd.index("-o") + 1]).write_bytes(lib_bytes)
        return subprocess.CompletedProcess(cmd, 0, stdout=report, stderr="")

    return run


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@needs_nvcc
def test_a_concurrent_builder_that_finished_first_is_kept(built, tmp_path, monkeypatch):
    """Two builders of one key: the second to finish keeps the first one's directory (never deletes or swaps it)."""
    out = tmp_path / "lib"
    theirs = built.lib.read_bytes()
    other_finishes = lambda: shutil.copytree(built.lib.parent, out)  # noqa: E731
    monkeypatch.setattr(kb, "run_nvcc", _fake_nvcc(built.report_path.read_text(), b"ours", other_finishes))
    res = kb.build(ARCHS, out)
    assert not res.cached and res.lib == out / kb.LIB_NAME
    assert res.lib.read_bytes() == theirs
    assert _leftovers(tmp_path) == []


@needs_nvcc
@pytest.mark.parametrize("stale", ["another key", "forced"])
def test_a_rebuild_keeps_the_old_library_readable_until_the_new_one_replaces_it(built, tmp_path, monkeypatch, stale):
    out = tmp_path / "lib"
    shutil.copytree(built.lib.parent, out)
    if stale != "forced":
        (out / kb.KEY_NAME).write_text(stale)
    key = (built.lib.parent / kb.KEY_NAME).read_text()
    old = built.lib.read_bytes()
    seen = []
    still_there = lambda: seen.append((out / kb.LIB_NAME).read_bytes() == old)  # noqa: E731
    monkeypatch.setattr(kb, "run_nvcc", _fake_nvcc(built.report_path.read_text(), b"new", still_there))
    res = kb.build(ARCHS, out, force=stale == "forced")
    assert seen == [True]
    assert res.lib.read_bytes() == b"new" and (out / kb.KEY_NAME).read_text() == key
    assert _leftovers(tmp_path) == []


def test_an_output_path_that_is_a_file_is_one_line_and_left_alone(tmp_path):
    out = tmp_path / "lib"
    out.write_text("mine")
    with pytest.raises(UserError, match="is a file, not a directory"):
        kb.build(ARCHS, out)
    assert out.read_text() == "mine"


def test_normalize_arch():
    assert kb.normalize_arch("90") == "sm_90"
    assert kb.normalize_arch("sm_86") == "sm_86"
    assert kb.normalize_arch("9.0") == "sm_90"
    assert kb.normalize_arch("compute_80") == "sm_80"
    assert kb.normalize_arch("sm_90a") == "sm_90a"
    with pytest.raises(UserError):
        kb.normalize_arch("hopper")
    with pytest.raises(UserError, match="older than the kernels need: sm_80"):
        kb.normalize_arch("sm_75")  # no bf16 tensor cores or cp.async: nvcc's own error would come later and less clear


def test_arch_from_env(monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_CUDA_ARCH", "sm_89")
    assert kb.detect_arch() == "sm_89"


def test_no_gpu_no_arch_is_loud(monkeypatch):
    monkeypatch.delenv("LUCE_BENCH_CUDA_ARCH", raising=False)
    import sys
    import types

    fake_torch = types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False))
    monkeypatch.setitem(sys.modules, "torch", fake_torch)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    with pytest.raises(UserError, match="--arch"):
        kb.detect_arch()


def test_parse_ptxas():
    text = (
        "ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'\n"
        "ptxas info    : Function properties for _Z3fooPf\n"
        "    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads\n"
        "ptxas info    : Used 40 registers, used 1 barriers\n"
    )
    text += (
        "ptxas info    : Function properties for _Z3barv\n"
        "    0 bytes stack frame, 0 bytes spill stores, 4 bytes spill loads\n"
    )
    r, d = kb.parse_ptxas(text)
    assert (r.arch, r.function, r.registers, r.stack_bytes, r.spill_stores, r.spill_loads) == (
        "sm_90",
        "_Z3fooPf",
        40,
        8,
        4,
        12,
    )
    assert (d.arch, d.function, d.spill_loads) == ("sm_90", "_Z3barv", 4)


def test_build_key_changes_with_flags(tmp_path):
    (tmp_path / "a.cu").write_text("x")
    assert kb.build_key(tmp_path, ["-O3"], "v1") != kb.build_key(tmp_path, ["-O2"], "v1")
    assert kb.build_key(tmp_path, ["-O3"], "v1") != kb.build_key(tmp_path, ["-O3"], "v2")


def test_config_check_refuses_other_shapes():
    from luce_bench.backends.megakernel import check_config
    from luce_bench.model.spec import QWEN35_08B, TINY

    check_config(QWEN35_08B)
    with pytest.raises(UserError, match="0.8B"):
        check_config(TINY)


@needs_nvcc
def test_cli_build_and_info(built):
    import json

    from typer.testing import CliRunner

    from luce_bench.kernels.cli import app

    r = CliRunner().invoke(app, ["build", "--arch", ",".join(ARCHS), "--out", str(built.lib.parent)])
    assert r.exit_code == 0, r.output
    assert "cached" in r.output and "0 B spill stores" in r.output
    r = CliRunner().invoke(app, ["info", "--arch", "sm_90"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["arch"] == "sm_90"


@pytest.mark.tries("bad input", "kernel info: a CUDA arch in $LUCE_BENCH_CUDA_ARCH that is none")
def test_kernel_info_refuses_a_bad_arch_in_the_environment(monkeypatch):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    monkeypatch.setenv("LUCE_BENCH_CUDA_ARCH", "sm_bogus")
    r = CliRunner().invoke(app, ["kernel", "info"])
    assert r.exit_code == 2 and "LUCE_BENCH_CUDA_ARCH: bad CUDA arch 'sm_bogus'" in r.output, r.output
    assert "Traceback" not in r.output


@pytest.mark.tries("bad input", "kernel info: no --arch where no GPU tells one, or several archs")
def test_kernel_info_without_an_arch_to_describe_is_one_line_and_exit_2(monkeypatch):
    from typer.testing import CliRunner

    from luce_bench.cli import app
    from luce_bench.kernels import build as b

    def no_gpu() -> str:
        raise UserError("cannot tell the CUDA arch: no GPU visible to torch or NVML; pass --arch (e.g. sm_90)")

    monkeypatch.delenv("LUCE_BENCH_CUDA_ARCH", raising=False)
    monkeypatch.setattr(b, "detect_arch", no_gpu)
    monkeypatch.setattr(b, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")  # (CI without nvcc: the arch is what fails)
    monkeypatch.setattr(b, "nvcc_version", lambda nvcc: "Cuda compilation tools\nBuild cuda_13.0")
    r = CliRunner().invoke(app, ["kernel", "info"])
    assert (r.exit_code, r.output) == (
        2,
        "error: cannot tell the CUDA arch: no GPU visible to torch or NVML; pass --arch (e.g. sm_90)\n",
    )  # as kernel build says it
    r = CliRunner().invoke(app, ["kernel", "info", "--arch", "sm_80, sm_90"])
    assert r.exit_code == 2 and "kernel info describes one arch's build; give one of sm_80, sm_90" in r.output
    monkeypatch.setattr(b, "find_nvcc", lambda: None)  # no toolkit: as kernel build says it
    r = CliRunner().invoke(app, ["kernel", "info", "--arch", "sm_90"])
    assert (r.exit_code, r.output) == (2, f"error: {b.NO_NVCC}\n")


def test_kernel_options_from_env(monkeypatch):
    from luce_bench.kernels import build as b

    monkeypatch.setenv(b.OPTIONS_ENV, "MK_PF_GBM=128, MK_SLOT_KB=0x10")
    assert b.options_from_env() == {"MK_PF_GBM": 128, "MK_SLOT_KB": 16}
    assert b.define_flags(b.options_from_env()) == ["-DMK_PF_GBM=128", "-DMK_SLOT_KB=16"]
    monkeypatch.setenv(b.OPTIONS_ENV, "")
    assert b.options_from_env() == {}
    # MK_INFLIGHT and MK_SPIN_SLEEP_NS became run-time tune fields (kernels/tune.py): unknown to the build now
    for bad in ("SLOT_KB=16", "MK_SLOT_KB=fast", "MK_POLL=1", "MK_L2LEAD=1", "MK_INFLIGHT=2", "MK_SPIN_SLEEP_NS=64"):
        monkeypatch.setenv(b.OPTIONS_ENV, bad)
        with pytest.raises(UserError):
            b.options_from_env()


def test_build_options_are_read_from_the_header():
    """The names (and defaults) come from cuda/mk_config.cuh: the decode options, then the prefill options."""
    from luce_bench.kernels.abi import build_options

    assert build_options() == {
        "MK_SLOT_KB": "32",
        "MK_LM_TAIL_ROWS": "192",
        "MK_O_TAGS": "0",
        "MK_PF_GSTAGES": "3",
        "MK_PF_GBK": "64",
        "MK_PF_GBM": "64",
        "MK_PF_ATT_PLAIN": "0",
        "MK_PF_ATT_SPLIT": "1",
        "MK_PF_CUBLAS": "1",
        "MK_PF_GDN_TC": "1",
        "MK_PF_WK_HALF": "0",
        "MK_SPIN_LIMIT_NS": "20000000000ull",
    }


def test_unknown_option_is_one_line_before_nvcc(tmp_path):
    names = "MK_LM_TAIL_ROWS, MK_O_TAGS, MK_PF_"
    with pytest.raises(UserError, match=rf"unknown kernel option 'MK_HEADBUF'; the kernel reads {names}"):
        kb.build(("sm_90",), out_dir=tmp_path / "lib", defines={"MK_HEADBUF": 1})
    assert not (tmp_path / "lib").exists()


def test_a_compiler_that_is_not_nvcc_and_an_empty_arch_entry_are_one_line(tmp_path):
    fake = tmp_path / "nvcc"
    fake.write_text("#!/bin/sh\necho 'not a compiler' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(UserError, match=rf"^{fake} --version failed with exit code 3 \(not a compiler\): is it nvcc"):
        kb.nvcc_version(str(fake))
    fake.chmod(0o644)  # a file that cannot be run: bad input, not a write error
    with pytest.raises(UserError, match=rf"^cannot run {fake}: Permission denied: is it nvcc"):
        kb.nvcc_version(str(fake))
    with pytest.raises(UserError, match=r"^--arch has an empty entry: 'sm_90,,sm_80'$"):
        kb.build("sm_90,,sm_80", out_dir=tmp_path / "lib")
    assert not (tmp_path / "lib").exists()


@needs_nvcc
@pytest.mark.parametrize(
    "options, message",
    [
        ({"MK_SLOT_KB": 20}, "MK_SLOT_KB must be 16, 24, 32, 48 or 64"),
        ({"MK_PF_GBM": 96}, "MK_PF_GBM must be 64 or 128"),
        ({"MK_O_TAGS": 2}, "MK_O_TAGS must be 0 or 1"),
        ({"MK_SPIN_LIMIT_NS": 5}, "MK_SPIN_LIMIT_NS must be at least"),
        ({"MK_PF_GBK": 48}, "MK_PF_GSTAGES must be 2, 3 or 4 and MK_PF_GBK 32 or 64"),
    ],
    ids=["slot20", "gbm96", "o-tags2", "spin5", "gbk48"],
)
def test_bad_option_value_is_the_kernels_own_error_line(tmp_path, options, message):
    with pytest.raises(UserError) as err:
        kb.build(("sm_90",), out_dir=tmp_path / "lib", defines=options)
    given = ", ".join(f"{k}={v}" for k, v in options.items())  # the values nvcc saw (a bare -D MK_X is MK_X=1)
    assert str(err.value).startswith(f"kernel build options ({given}): {message}")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "lib" / kb.LIB_NAME).exists()


def test_cli_build_refuses_unknown_option():
    from typer.testing import CliRunner

    from luce_bench.cli import app

    r = CliRunner().invoke(app, ["kernel", "build", "--arch", "sm_90", "--option", "MK_POLL=1"])
    assert r.exit_code == 2
    assert "unknown kernel option 'MK_POLL'" in r.output and "Traceback" not in r.output


@pytest.mark.tries("bad input", "kernel build: one option given twice (--option, $LUCE_BENCH_KERNEL_OPTIONS)")
def test_an_option_given_twice_is_refused_not_last_wins(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    twice = ["--option", "MK_SLOT_KB=16", "--option", "MK_SLOT_KB=32"]
    r = CliRunner().invoke(app, ["kernel", "build", "--arch", "sm_90", "--out", str(tmp_path / "lib"), *twice])
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert r.output.strip() == "error: --option: MK_SLOT_KB is given twice", r.output
    assert not (tmp_path / "lib").exists()
    monkeypatch.setenv(kb.OPTIONS_ENV, "MK_SLOT_KB=16, MK_SLOT_KB = 32")
    with pytest.raises(UserError, match=rf"^{kb.OPTIONS_ENV}: MK_SLOT_KB is given twice$"):
        kb.options_from_env()
    with pytest.raises(UserError, match=r"^--option: '=5': expected MK_NAME=INTEGER$"):  # no name is no option
        kb.parse_options(["=5", "=6"], "--option")
    monkeypatch.setenv(kb.OPTIONS_ENV, "MK_SLOT_KB=16 MK_O_TAGS=1")  # a space where a comma belongs
    with pytest.raises(UserError, match=r"expected MK_NAME=INTEGER \(several options: separate them by commas\)$"):
        kb.options_from_env()
    with pytest.raises(UserError, match=r"^--option: .*\(several options: give each with its own --option\)$"):
        from luce_bench.kernels.cli import _options

        _options(["MK_SLOT_KB=16 MK_O_TAGS=1"])


def test_option_flags_add_to_the_environments_and_a_second_value_is_refused(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from luce_bench.cli import app
    from luce_bench.kernels.cli import _options

    monkeypatch.setenv(kb.OPTIONS_ENV, "MK_PF_GBM=128,MK_SLOT_KB=16")
    assert _options(["MK_LM_TAIL_ROWS=0", "MK_SLOT_KB=16"]) == {
        "MK_PF_GBM": 128,
        "MK_SLOT_KB": 16,
        "MK_LM_TAIL_ROWS": 0,
    }
    assert _options(None) is None  # no -D: the build reads the environment itself
    r = CliRunner().invoke(
        app, ["kernel", "build", "--arch", "sm_90", "--out", str(tmp_path / "lib"), "-D", "MK_SLOT_KB=32"]
    )
    assert r.exit_code == 2 and not (tmp_path / "lib").exists(), r.output
    assert r.output.strip() == f"error: --option MK_SLOT_KB=32 and ${kb.OPTIONS_ENV}'s MK_SLOT_KB=16: give it once"


@pytest.fixture(scope="session")
def option_set_builds(request, tmp_path_factory):
    """The selected option sets' builds for all four archs, queued together in the tests' order.

    As many run at once as the cores allow (nvcc already compiles the four archs of one build in parallel): one at a
    time on CI's 2 cores, four on a 16-core machine.
    """
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path_factory.mktemp("option-sets")
    pool = ThreadPoolExecutor(max_workers=max(1, (os.cpu_count() or 1) // len(ARCHS)))
    names = selected_option_sets(request, "test_kernel_option_sets_compile_without_spills")
    jobs = {name: pool.submit(kb.build, ARCHS, root / name, defines=KERNEL_OPTION_SETS[name]) for name in names}
    yield jobs
    pool.shutdown(cancel_futures=True)


@needs_nvcc
@pytest.mark.parametrize("name", sorted(KERNEL_OPTION_SETS))
def test_kernel_option_sets_compile_without_spills(option_set_builds, name):
    """Every option set that remains compiles for all four archs with 0 spills and the same ABI layout."""
    from luce_bench.kernels import lib as klib

    res = option_set_builds[name].result()
    kernels = [r for r in res.reports if "decode_kernel" in r.function]
    assert {r.arch for r in kernels} == set(ARCHS)
    for r in res.reports:
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{name} {r.arch} {r.function}: spills"
    lib = klib.load_library(res.lib)
    lay = klib.layout(lib)
    if KERNEL_OPTION_SETS[name].get("MK_O_TAGS", 0):  # no barrier after o_proj; o_proj's rows of x, tagged
        assert lay.syncs_per_step == 43 and lay.scratch_floats == SCRATCH_FLOATS + 2048
    else:
        assert lay.syncs_per_step == 49 and lay.scratch_floats == SCRATCH_FLOATS
    assert lib.luce_mk_prefill_gemm_option() == KERNEL_OPTION_SETS[name].get("MK_PF_CUBLAS", 1)
    # the options travel with the library: a prebuilt directory reports what it was compiled with
    assert res.options == KERNEL_OPTION_SETS[name] == kb.prebuilt(res.lib.parent).options


@needs_nvcc
def test_the_prefill_loads_cublas_only_where_built_to(built, tmp_path):
    """An MK_PF_CUBLAS=0 build refuses a cuBLAS path; the default build dlopens it and names what is wrong with it."""
    from luce_bench.kernels import lib as klib

    own = klib.load_library(kb.build(["sm_90"], tmp_path / "own", defines={"MK_PF_CUBLAS": 0}).lib)
    assert own.luce_mk_prefill_gemm_option() == 0 and own.luce_mk_prefill_cublas_version() == 0
    assert own.luce_mk_prefill_cublas(b"/usr/lib/libcublas.so") == -4 and own.luce_mk_prefill_cublas(None) == 0
    cb = klib.load_library(built.lib)
    assert cb.luce_mk_prefill_gemm_option() == 1
    for path in (tmp_path / "libcublas.so.13", Path(ctypes.util.find_library("m") or "libm.so.6")):
        assert cb.luce_mk_prefill_cublas(str(path).encode()) == -7  # missing, or without cublasGemmEx
    assert "cublasGemmEx" in cb.luce_mk_error_string(-7).decode()
    assert "refused a handle" in cb.luce_mk_error_string(-8).decode()
    assert cb.luce_mk_prefill_cublas_version() == 0 and cb.luce_mk_prefill_cublas(None) == 0


@needs_nvcc
def test_prebuilt_reads_a_build_directory(built, tmp_path):
    res = kb.prebuilt(built.lib.parent)
    assert res.lib == built.lib and {r.arch for r in res.reports} == set(ARCHS) and res.cached
    assert res.options == built.options == kb.options_from_env()  # recorded beside the library
    old = tmp_path / "old"  # a directory from before the options were recorded: unknown, not "the defaults"
    shutil.copytree(built.lib.parent, old)
    (old / kb.OPTIONS_NAME).unlink()
    assert kb.prebuilt(old).options is None
    for text in ("{not json", '{"MK_SLOT_KB": true}', '{"MK_SLOT_KB": 1.5}', "[1]"):
        (old / kb.OPTIONS_NAME).write_text(text)
        assert kb.prebuilt(old).options is None, text
    with pytest.raises(UserError, match="no libluce_mk.so"):
        kb.prebuilt(built.lib.parent / "nothing-here")


def test_info_names_the_prompt_path(monkeypatch):
    from luce_bench.kernels import build_info

    monkeypatch.delenv("LUCE_BENCH_PREFILL", raising=False)
    assert build_info()["prefill"].startswith("kernel ")
    monkeypatch.setenv("LUCE_BENCH_PREFILL", "tokens")
    assert build_info()["prefill"].startswith("tokens ")
    monkeypatch.setenv("LUCE_BENCH_PREFILL", "fast")
    assert build_info()["prefill"] == "error: LUCE_BENCH_PREFILL='fast': expected one of tokens, kernel"


@pytest.mark.tries("bad input", "info: $LUCE_BENCH_KERNEL_OPTIONS naming an option the kernel does not read")
def test_info_names_a_kernel_option_the_kernel_does_not_read(monkeypatch):
    """$LUCE_BENCH_KERNEL_OPTIONS with a typo shows as an error row of `luce-bench info`, GPU or not."""
    from luce_bench.kernels import build_info

    monkeypatch.setenv("LUCE_BENCH_KERNEL_OPTIONS", "MK_BOGUS=1")
    said = "error: LUCE_BENCH_KERNEL_OPTIONS: unknown kernel option 'MK_BOGUS'; the kernel reads MK_"
    assert build_info()["options"].startswith(said)


@pytest.mark.tries("fault", "nvcc: its threaded device link fails to read its own temp file once (a rerun succeeds)")
def test_nvcc_is_rerun_once_on_its_temp_file_race_only(tmp_path):
    import subprocess

    race = "nvlink fatal   : Could not read file '/tmp/tmpxft_00000a29_00000000-17_libluce_mk_dlink.reg.c'"
    calls: list[dict] = []

    def fake_run(outcomes):
        def run(cmd, **kw):
            calls.append(kw["env"])
            code, err = outcomes[len(calls) - 1]
            return subprocess.CompletedProcess(cmd, code, "", err)

        return run

    assert kb.run_nvcc(["nvcc"], tmp_path / "t", run=fake_run([(255, race), (0, "")])).returncode == 0
    assert len(calls) == 2 and calls[0]["TMPDIR"] == str(tmp_path / "t") and not (tmp_path / "t").exists()
    calls.clear()
    other = kb.run_nvcc(["nvcc"], tmp_path / "t", run=fake_run([(1, "error: identifier undefined"), (0, "")]))
    assert other.returncode == 1 and len(calls) == 1  # a real compile error is not retried


def test_an_output_directory_holding_other_files_is_refused_and_left_alone(tmp_path, monkeypatch):
    # the build replaces its directory whole: `--out ~/work` must not delete the user's files
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a").write_text("a")
    (tmp_path / "precious.txt").write_text("mine")
    monkeypatch.setattr(kb, "run_nvcc", lambda *a: pytest.fail("nvcc ran"))
    monkeypatch.chdir(tmp_path)
    for out in (tmp_path, Path(".")):
        with pytest.raises(UserError, match=r"holds other files \(precious.txt, sub\)"):
            kb.build(ARCHS, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt", "sub"]
    assert (tmp_path / "sub" / "a").read_text() == "a"
    with pytest.raises(UserError, match="the file system's root"):
        kb.build(ARCHS, Path("/"))


def test_an_empty_or_earlier_build_directory_is_a_valid_output(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert kb._out_dir(Path(".")) == tmp_path  # made absolute: '.' has no name to build a sibling from
    (tmp_path / kb.LIB_NAME).write_bytes(b"old")
    (tmp_path / kb.REPORT_NAME).write_text("")
    assert kb._out_dir(tmp_path) == tmp_path


def test_a_detected_gpu_older_than_sm80_is_refused_and_the_megakernel_skipped(monkeypatch):
    import torch

    import luce_bench.backends.megakernel as mk

    monkeypatch.delenv("LUCE_BENCH_CUDA_ARCH", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda i=0: (7, 5))  # a T4
    with pytest.raises(UserError, match="'sm_75' is older than the kernels need"):
        kb.detect_arch()
    monkeypatch.setattr(mk, "_gpu_present", lambda: True)
    monkeypatch.setattr(kb, "find_nvcc", lambda: "/usr/local/cuda/bin/nvcc")
    assert "'sm_75' is older than the kernels need" in mk.MegakernelBackend.unavailable_reason()
