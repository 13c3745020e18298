"""Statistics and the run-directory writer: known numbers in, known numbers out."""

import math

import pytest

from luce_bench import stats
from luce_bench.results import RunWriter, read_csv, summarize


def test_describe_matches_hand_computed_t_interval():
    s = stats.describe([10.0, 12.0, 14.0, 16.0, 18.0])
    assert s.n == 5 and s.mean == 14.0
    assert s.std == pytest.approx(math.sqrt(10.0))  # sample std, n-1
    half = 2.776 * math.sqrt(10.0) / math.sqrt(5)
    assert (s.ci95_lo, s.ci95_hi) == pytest.approx((14.0 - half, 14.0 + half))


def test_describe_drops_nan_and_handles_tiny_samples():
    assert stats.describe([]).n == 0 and math.isnan(stats.describe([]).mean)
    one = stats.describe([3.0, float("nan"), None])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.std)
    assert stats.median([3, 1, 2, float("nan")]) == 2
    assert stats.t975(100) == 1.960


def _row(backend, test, rep, tokens, window_s, energy_j, valid=True):
    return {"backend": backend, "test": test, "rep": rep, "n_tokens": tokens, "window_s": window_s,
            "avg_ts": tokens / window_s, "energy_j": energy_j, "tok_per_j": tokens / energy_j if valid else None,
            "mean_power_w": energy_j / window_s, "valid": valid, "verdict": "ok" if valid else "no-energy"}


def test_summarize_groups_and_pools_energy():
    runs = [_row("hf", "tg128", i, 1280, 10.0, 1000.0 + 100 * i) for i in range(3)] + [_row("mk", "tg128", 0, 12800, 10.0, 3000.0)]
    rows = summarize(runs)
    assert [(r["backend"], r["test"], r["n"]) for r in rows] == [("hf", "tg128", 3), ("mk", "tg128", 1)]
    hf = rows[0]
    assert hf["avg_ts"] == pytest.approx(128.0)
    assert hf["tok_per_j"] == pytest.approx((1.28 + 1280 / 1100 + 1280 / 1200) / 3)
    assert hf["j_per_tok"] == pytest.approx(3300.0 / 3840)
    assert hf["mean_power_w"] == pytest.approx(110.0)
    assert hf["valid_reps"] == 3 and hf["verdict"] == "ok"


def test_summary_without_energy_says_so():
    rows = summarize([_row("hf", "pp520", 0, 520, 10.0, 1.0, valid=False)])
    assert math.isnan(rows[0]["tok_per_j"]) and rows[0]["verdict"] == "no-energy"


def test_writer_appends_rows_immediately_and_replaces_summary(tmp_path):
    w = RunWriter.create(tmp_path, "x")
    w.add_run(_row("hf", "tg128", 0, 128, 10.0, 100.0))
    # an interrupted run keeps the finished rows: they are on disk before close()
    assert len(read_csv(w.dir / "runs.csv")) == 1
    w.add_samples([{"t_s": 0.1, "power_w": 100.0}])
    w.write_summary()
    w.write_meta({"a": 1})
    w.write_meta({"b": 2})
    w.close()
    assert read_csv(w.dir / "summary.csv")[0]["avg_ts"] == "12.8"
    assert float(read_csv(w.dir / "samples.csv")[0]["power_w"]) == 100.0
    assert (w.dir / "meta.json").read_text().count('"') == 4
    assert not list(w.dir.glob(".*"))  # no temp files left behind
