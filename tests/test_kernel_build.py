"""CPU CI for the megakernel: it compiles for sm_80/86/89/90 without cuBLAS, ptxas reports 0 spills, the library
loads without a GPU (static cudart) and exports the luce_mk.h symbols; arch parsing and the build cache behave."""

from __future__ import annotations

import ctypes

import pytest

from luce_bench.errors import UserError
from luce_bench.kernels import build as kb

ARCHS = ("sm_80", "sm_86", "sm_89", "sm_90")
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
        assert r.spill_stores == 0 and r.spill_loads == 0, f"{r.arch} {r.function}: {r.spill_stores}/{r.spill_loads} B spilled"
        if "kernel" in r.function:
            assert 0 < r.registers <= 128  # 512-thread blocks: at most 128 registers per thread


@needs_nvcc
def test_library_loads_and_exports_abi(built):
    from luce_bench.kernels import lib as klib

    raw = ctypes.CDLL(str(built.lib))
    for sym in klib.SYMBOLS:
        assert hasattr(raw, sym), sym
    lib = klib.load_library(built.lib)
    lay = klib.layout(lib)
    assert lay.wblob_elems == 18 * 21528576 + 6 * 18350080  # all layer matrices, bf16 elements
    assert list(lay.layer_woff)[:5] == [0, 21528576, 43057152, 64585728, 82935808]
    assert lay.syncs_per_step == 55 and lay.vocab == 248320 and lay.hidden == 1024  # 18 x 2 + 6 x 3 + 1
    assert lay.gdn_out_transposed == 1
    # layer params + embedding = 752,393,024 - norms/conv/A/dt (small params are in the f32 blob)
    assert lay.wblob_elems + 248320 * 1024 == 752_393_024 - (24 * 2048 + 1024 + 6 * 512 + 18 * (6144 * 4 + 32 + 128))
    assert ctypes.sizeof(klib.LuceMkParams) == 15 * 8 + 8 * 4  # 15 pointers, 7 ints + padding before `trace`
    assert lib.luce_mk_trace_points() == 24 * 12 + 4  # 12 points per layer + 4 per step


@needs_nvcc
def test_cache_hit(built, tmp_path):
    again = kb.build(ARCHS, built.lib.parent)
    assert again.cached and again.lib == built.lib


def test_normalize_arch():
    assert kb.normalize_arch("90") == "sm_90"
    assert kb.normalize_arch("sm_86") == "sm_86"
    assert kb.normalize_arch("9.0") == "sm_90"
    assert kb.normalize_arch("compute_80") == "sm_80"
    with pytest.raises(UserError):
        kb.normalize_arch("hopper")


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
    text += "ptxas info    : Function properties for _Z3barv\n    0 bytes stack frame, 0 bytes spill stores, 4 bytes spill loads\n"
    r, d = kb.parse_ptxas(text)
    assert (r.arch, r.function, r.registers, r.stack_bytes, r.spill_stores, r.spill_loads) == (
        "sm_90", "_Z3fooPf", 40, 8, 4, 12)
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


def test_kernel_options_from_env(monkeypatch):
    from luce_bench.errors import UserError
    from luce_bench.kernels import build as b

    monkeypatch.setenv(b.OPTIONS_ENV, "MK_L2LEAD=0, MK_POLL=0x1")
    assert b.options_from_env() == {"MK_L2LEAD": 0, "MK_POLL": 1}
    assert b.define_flags(b.options_from_env()) == ["-DMK_L2LEAD=0", "-DMK_POLL=1"]
    monkeypatch.setenv(b.OPTIONS_ENV, "")
    assert b.options_from_env() == {}
    for bad in ("L2LEAD=0", "MK_L2LEAD=fast"):
        monkeypatch.setenv(b.OPTIONS_ENV, bad)
        with pytest.raises(UserError):
            b.options_from_env()


@pytest.mark.parametrize("options", [
    {"MK_TAGRAW": 1, "MK_HEADBUF": 1, "MK_SSTAG": 0, "MK_ATTHEAD": 0, "MK_ATTMERGE": 0, "MK_XCOPIES": 1},
    {"MK_INFLIGHT": 0, "MK_SLOT_KB": 16, "MK_PAUSE": 0, "MK_TAGRAW": 0, "MK_ATTMERGE": 0},
    {"MK_GDNFUSE": 0, "MK_SSTAG": 0, "MK_TAGRAW": 0, "MK_L2LEAD": 65536, "MK_IDLEPF": 131072, "MK_NOINLINE": 1}])
def test_kernel_build_options_compile(tmp_path, options):
    """The non-default build options (measured variants, cuda/NOTES.md) still compile for sm_90."""
    from luce_bench.kernels import build as b

    if b.find_nvcc() is None:
        pytest.skip("nvcc not found")
    res = b.build(("sm_90",), out_dir=tmp_path / "lib", defines=options)
    assert res.lib.is_file() and any("decode_kernel" in r.function for r in res.reports)
