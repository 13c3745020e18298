"""`luce-bench kernel bench` and `kernel trace` run end to end on a GPU.

Short runs; their numbers are not checked here: performance is judged by benchmarks, not tests).
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gpu


def test_kernel_bench_cli(tmp_path):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(
        app,
        [
            "kernel",
            "bench",
            "--variant",
            "base",
            "--variant",
            "slot16:MK_SLOT_KB=16",
            "--variant",
            "inflight2@inflight=2",
            "--reps",
            "1",
            "--rounds",
            "1",
            "--steps",
            "8",
            "--long",
            "300",
            "--no-per-token",
            "--energy-s",
            "0.5",
            "--seed",
            "7",
            "--instances",
            "2",
            "--json",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(out.read_text())
    assert [v["variant"] for v in s["variants"]] == ["base", "slot16", "inflight2"]
    for v in s["variants"]:
        assert v["parity"]["nan"] == 0 and v["parity"]["rel_l2_max"] < 2e-2
        assert v["short_tok_s"] > 0 and v["long_tok_s"] > 0 and 0 < v["share_of_floor"] < 1.05
        assert v["n"] == 2 and len(v["instances"]) == 2 and all(x["short_tok_s"] > 0 for x in v["instances"])
        if "energy_w" in v:  # an energy window ran (where the GPU has a counter; not judged here)
            assert 30 < v["energy_w"] < 1500 and v["tok_per_j"] > 0
    by = {v["variant"]: v for v in s["variants"]}
    assert by["inflight2"]["tune"]["inflight"] == 2 and by["base"]["tune"]["inflight"] != 2
    assert by["slot16"]["options"] == {"MK_SLOT_KB": 16}
    assert 1.0 < s["bandwidth_tbs"] < 10.0


def test_kernel_trace_cli(tmp_path):
    from typer.testing import CliRunner

    from luce_bench.cli import app

    out, raw = tmp_path / "trace.json", tmp_path / "trace.npz"
    r = CliRunner().invoke(
        app, ["kernel", "trace", "--steps", "8", "--seed", "3", "--json", str(out), "--raw", str(raw)]
    )
    assert r.exit_code == 0, r.output
    t = json.loads(out.read_text())
    total = sum(v["gdn_us"] + v["attn_us"] for v in t["segments"].values())
    assert abs(total - t["step_us"]) < 0.02 * t["step_us"]  # the segments tile the step
    assert "mixer barrier" in t["segments"] and "LM head stream" in t["segments"]
    assert set(t["tune"]) == {
        "inflight",
        "inflight_lm",
        "pause_mask",
        "spin_sleep_ns",
        "lm_screen",
        "grid",
        "deep_phases",
        "inflight_deep",
        "pause_ready",
    }
    path = t["gdn_skew_path_us"]  # the GDN mixer barrier's skew, point by point up to the arrival
    assert list(path)[-1] == "mixer done" and path["mixer done"]["slowest_minus_median"] >= 0
    assert "GDN mixer skew by point" in r.output and t["last_blocks_mixer"]
    p4 = t["p4_skew_path_us"]  # the same for the MLP barrier, from the barrier before it
    assert list(p4)[-1] == "down done (arrival)" and "MLP (P4) skew by point" in r.output
    import numpy as np

    with np.load(raw) as z:  # the per-block timestamps behind the summary
        tr_l = dict(zip(z["point_names"].tolist(), z["point_values"].tolist(), strict=True))["TR_L"]
        # five per-step points after the layers: step, LM x ready, LM done, LM barrier, LM streamed (mk_trace.cuh)
        assert z["t_us"].shape == (8, 24 * tr_l + 5, t["grid"])
        assert json.loads(str(z["meta_json"]))["seed"] == 3
