"""The cells and labels of the published tables, from known rows and meta.json contents to known text."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from luce_bench.config import TG_ITERATION
from luce_bench.gpu.fake import PRESETS, FakeGPU
from luce_bench.provenance import gpu_meta, peak_bandwidth_gb_s
from luce_bench.published import floor_text, hf_label, kernel_label, labels, load_run, method_label, ratio_text
from luce_bench.records import SummaryRow

ROOT = Path(__file__).resolve().parent.parent
H100_META = ROOT / "results" / "nvidia-h100-80gb-hbm3" / "20261124-compare-v10-tagraw" / "meta.json"
H200 = {"gpu": {"memory_bandwidth_gb_s": 4916.7}, "model": {"bytes": 1504786048, "kv_bytes_per_position": 12288}}


def _row(backend: str, test: str, tok_s: float, tok_j: float = 1.0, n_gen: int = 128, n_depth: int = 0) -> SummaryRow:
    """A row of the committed H100 run, renamed and given the numbers under test."""
    (base,) = [r for r in load_run(H100_META.parent).summary if (r.backend, r.test) == ("megakernel", "tg128")]
    return dataclasses.replace(
        base, backend=backend, test=test, avg_ts=tok_s, tok_per_j=tok_j, n_gen=n_gen, n_depth=n_depth
    )


@pytest.mark.parametrize(
    ("bus_bits", "mem_mhz", "gb_s"),
    [(6144, 3201, 4916.7), (5120, 2619, 3352.3), (384, 9751, 936.1)],
    ids=["h200", "h100-sxm", "rtx3090"],
)
def test_peak_bandwidth_matches_the_datasheets(bus_bits, mem_mhz, gb_s):
    assert peak_bandwidth_gb_s(bus_bits, mem_mhz) == gb_s


def test_the_simulated_h200_records_its_bandwidth():
    assert gpu_meta(FakeGPU(preset=PRESETS["h200"]))["memory_bandwidth_gb_s"] == 4916.7


@pytest.mark.parametrize(
    ("row", "meta", "text"),
    [
        # 4916.7e9 B/s over 1,504,786,048 B of weights + 12,288 B x 64.5 positions (mean context of tg128) = 3265.6
        pytest.param(_row("megakernel", "tg128", 1636.0), H200, "50 % of 3,266", id="tg128"),
        # ... + 12,288 B x (4096 + 64.5) positions = 3160.0
        pytest.param(_row("megakernel", "tg128@d4096", 1440.0, n_depth=4096), H200, "46 % of 3,160", id="depth"),
        pytest.param(_row("llamacpp", "pp520", 43694.0, n_gen=0), H200, "– (prefill)", id="prefill"),
        pytest.param(_row("hf", "tg128", 28.2), {"model": {"bytes": 1}}, "n/a: no bandwidth in meta.json", id="old"),
        pytest.param(
            _row("hf", "tg128@d4096", 20.0, n_depth=4096),
            {"gpu": {"memory_bandwidth_gb_s": 4916.7}, "model": {"bytes": 1504786048}},
            "n/a: no KV bytes in meta.json",
            id="depth-without-kv",
        ),
    ],
)
def test_share_of_the_bandwidth_floor(row, meta, text):
    assert floor_text(row, meta) == text


def test_ratios_against_a_baseline():
    mk, lc = _row("megakernel", "tg128", 1636.0, 3.09), _row("llamacpp", "tg128", 475.0, 1.37)
    assert (ratio_text(mk, lc, "avg_ts"), ratio_text(mk, lc, "tok_per_j")) == ("3.44×", "2.26×")
    assert ratio_text(lc, lc, "avg_ts") == "–" and ratio_text(mk, None, "avg_ts") == "n/a"


def test_labels_of_a_committed_h100_run():
    facts = dict(labels(json.loads(H100_META.read_text())))
    assert facts == {
        "GPU": "NVIDIA H100 80GB HBM3 (card 3922f63d), driver 580.159.04 (CUDA 13.0), power limit in force 700 W "
        "(default 700 W, range 200 W–700 W)",
        "model": "synthetic-0.8b: synthetic bf16 weights (seed 0) with the exact Qwen3.5-0.8B shapes",
        "megakernel": "version not recorded in meta.json (library build key 4c65e154ae5c)",
        "llama.cpp": "0c1e57098 (llama-cpp-python 0.3.36, cuda build, BF16 GGUF, flash attention on)",
        "HF": "GDN path pure-torch fallback; transformers 5.17.0, torch 2.11.0+cu130, fla not installed",
        "luce-bench commit": "70a0e474e9d11eb5420b91e22db113db4934c9c9",
        "method": "5 repetitions of ≥ 10.0 s windows per row; tg<N>: a seed step, then N steps (before 2026-12-06)",
    }
    now = {"method": {"reps": 3, "window_s": 10.0, "tg_iteration": TG_ITERATION}}  # a run of this version
    assert method_label(now) == (
        "3 repetitions of ≥ 10.0 s windows per row; tg<N>: N one-token steps from a seed token (llama-bench)"
    )


def test_labels_of_a_run_with_the_kernel_version_and_a_skipped_backend():
    meta = {
        "backends": {
            "megakernel": {"abi_version": 5, "sources_sha256": "ab12" * 16, "prefill": {"last_used": "tokens"}},
            "hf": {"skipped": "torch is not installed"},
        }
    }
    assert kernel_label(meta) == "ABI 5, sources ab12ab12ab12, prompt path tokens"
    assert hf_label(meta) == "not run (torch is not installed)"
