"""Statistics, typed records, the run-directory writer and summaries: known numbers in, known numbers out."""

import dataclasses
import math

import pytest

from luce_bench import stats
from luce_bench.errors import UserError
from luce_bench.measure import Edge, violation_pct
from luce_bench.records import RunRecord, SummaryRow, columns, read_csv, write_csv
from luce_bench.results import RunWriter, read_meta, read_runs, read_samples
from luce_bench.sampler import Sample
from luce_bench.summary import summarize

T975_DF4 = 2.776445105197793  # Student t, 97.5 % quantile, 4 degrees of freedom (tables: 2.776)


def test_describe_matches_hand_computed_t_interval():
    s = stats.describe([10.0, 12.0, 14.0, 16.0, 18.0])
    assert s.n == 5 and s.mean == 14.0
    assert s.std == pytest.approx(math.sqrt(10.0))  # sample std, n-1
    half = T975_DF4 * math.sqrt(10.0) / math.sqrt(5)
    assert (s.ci95_lo, s.ci95_hi) == pytest.approx((14.0 - half, 14.0 + half))


def test_t_quantiles_are_exact():
    assert stats.t975(4) == pytest.approx(T975_DF4, rel=1e-12)
    assert stats.t975(1) == pytest.approx(12.706204736174707, rel=1e-12)
    assert stats.t975(100) == pytest.approx(1.983971518523552, rel=1e-12)  # not the normal 1.960
    assert math.isnan(stats.t975(0))


def test_describe_drops_nan_and_handles_tiny_samples():
    assert stats.describe([]).n == 0 and math.isnan(stats.describe([]).mean)
    one = stats.describe([3.0, float("nan"), None])
    assert one.n == 1 and one.mean == 3.0 and math.isnan(one.std)
    assert stats.median([3, 1, 2, float("nan")]) == 2
    assert stats.describe([246.594] * 3).std == 0.0  # equal values: exactly no spread


def _row(backend, test, rep, tokens, window_s, energy_j, valid=True, **kw):
    return RunRecord(
        test_time="2027-01-01T00:00:00Z",
        backend=backend,
        model="tiny",
        model_type="qwen35 4L h128",
        model_n_params=910200,
        n_prompt=0,
        n_gen=128,
        test=test,
        rep=rep,
        iterations=10,
        n_tokens=tokens,
        window_s=window_s,
        compute_s=window_s,
        avg_ts=tokens / window_s,
        energy_j=energy_j if valid else None,
        tok_per_j=tokens / energy_j if valid else None,
        mean_power_w=energy_j / window_s if valid else None,
        device="cuda",
        gpu_simulated=False,
        valid=valid,
        verdict="ok" if valid else "no-energy",
        **kw,
    )


def test_summarize_groups_and_pools_energy():
    runs = [_row("hf", "tg128", i, 1280, 10.0, 1000.0 + 100 * i) for i in range(3)]
    runs.append(_row("mk", "tg128", 0, 12800, 10.0, 3000.0))
    rows = summarize(runs)
    assert [(r.backend, r.test, r.n) for r in rows] == [("hf", "tg128", 3), ("mk", "tg128", 1)]
    hf = rows[0]
    assert hf.avg_ts == pytest.approx(128.0)
    assert hf.tok_per_j == pytest.approx((1.28 + 1280 / 1100 + 1280 / 1200) / 3)
    assert hf.j_per_tok == pytest.approx(3300.0 / 3840)
    assert hf.mean_power_w == pytest.approx(110.0)
    assert hf.valid_reps == 3 and hf.verdict == "noisy"  # tok/J 1.28, 1.16, 1.07: a 9 % spread


def test_net_tok_per_j_is_empty_when_any_window_drew_no_more_than_its_idle_baseline():
    # 1000 tokens in 10 s windows over a 72 W idle: 1000, 780 and 700 J; the last nets -20 J, so it has no net tok/J
    def window(rep, energy_j):
        net_j = energy_j - 720.0
        return _row(
            "hf",
            "tg128",
            rep,
            1000,
            10.0,
            energy_j,
            idle_power_w=72.0,
            net_tok_per_j=1000 / net_j if net_j > 0 else None,
        )

    both = summarize([window(0, 1000.0), window(1, 780.0)])[0]
    assert both.net_tok_per_j == pytest.approx((1000 / 280 + 1000 / 60) / 2)
    # before: the mean of the two that netted above zero, as if the third had not been measured
    assert math.isnan(summarize([window(0, 1000.0), window(1, 780.0), window(2, 700.0)])[0].net_tok_per_j)
    # compare and bench measure no idle baseline: no net tok/J, and nothing to poison
    assert math.isnan(summarize([_row("hf", "tg128", 0, 1000, 10.0, 1000.0)])[0].net_tok_per_j)


def test_a_windows_violation_shares_come_from_the_counters_at_its_edges():
    a = Edge(0.0, 0, None, {"power_cap": 0, "sw_thermal": 1_000_000_000, "hw_thermal": 0})
    b = Edge(10.0, 1, None, {"power_cap": 5_000_000_000, "sw_thermal": 3_500_000_000, "hw_thermal": 500_000_000})
    # thermal: software 2.5 s, hardware 0.5 s, perhaps within it: the longer of the two
    assert violation_pct(a, b, 10.0) == {"power_cap_pct": 50.0, "thermal_pct": 25.0}
    # a counter readable at one edge only (or not at all: an NVML without field values) gives no share
    assert violation_pct(a, Edge(10.0, 1, None, {"power_cap": 1_000_000_000}), 10.0) == {"power_cap_pct": 10.0}
    assert violation_pct(Edge(0.0, None, None), Edge(10.0, None, None), 10.0) == {}
    # software and hardware slowdown over the same whole window: 100 %, not 200
    both = Edge(10.0, 1, None, {"power_cap": 0, "sw_thermal": 11_000_000_000, "hw_thermal": 10_000_000_000})
    assert violation_pct(a, both, 10.0)["thermal_pct"] == 100.0


def test_a_summary_whose_repetitions_spread_more_than_5_percent_is_noisy():
    def group(tok_per_j, valid=True):
        return summarize([_row("hf", "tg128", i, 1280, 10.0, 1280 / t, valid=valid) for i, t in enumerate(tok_per_j)])

    assert group([2.0, 2.09, 1.91])[0].verdict == "ok"  # sample std 4.5 % of the mean
    assert group([2.0, 2.2, 1.8])[0].verdict == "noisy"  # 10 %
    assert group([2.0, 3.0])[0].verdict == "ok"  # two repetitions say nothing about their spread
    assert group([2.0, 2.2, 1.8], valid=False)[0].verdict == "no-energy"  # tok/s is steady; no tok/J to judge
    slow = [_row("hf", "tg128", i, tokens, 10.0, 0.0, valid=False) for i, tokens in enumerate([1000, 1300, 800])]
    assert summarize(slow)[0].verdict == "no-energy;noisy"  # tok/s alone spreads 24 %: both flags


def test_summary_groups_by_limit_and_collects_flags():
    runs = [
        _row("hf", "tg128", 0, 100, 10.0, 50.0, power_limit_req_w=300.0, temp_start_c=40.0, temp_end_c=47.0),
        _row("hf", "tg128", 1, 100, 10.0, 50.0, power_limit_req_w=300.0),
        _row("hf", "tg128", 0, 90, 10.0, 40.0, power_limit_req_w=200.0),
    ]
    runs[0].verdict = "temp-drift"
    rows = summarize(runs)
    assert [(r.power_limit_req_w, r.n) for r in rows] == [(300.0, 2), (200.0, 1)]
    assert rows[0].verdict == "temp-drift" and rows[0].temp_drift_c == 7.0 and rows[1].verdict == "ok"


def test_summary_without_energy_says_so():
    (row,) = summarize([_row("hf", "pp520", 0, 520, 10.0, 1.0, valid=False)])
    assert math.isnan(row.tok_per_j) and row.verdict == "no-energy"


def test_records_round_trip_through_csv_with_the_llama_bench_names(tmp_path):
    rec = _row("hf", "tg128", 0, 1280, 10.0, 1000.0, power_limit_req_w=300.0, temp_start_c=41)
    assert columns(RunRecord)[:10] == [
        "test_time",
        "backend",
        "model",
        "model_type",
        "model_n_params",
        "n_prompt",
        "n_gen",
        "n_depth",
        "test",
        "rep",
    ]
    write_csv(tmp_path / "r.csv", RunRecord, [rec])
    (back,) = read_csv(tmp_path / "r.csv", RunRecord)
    assert back == dataclasses.replace(rec, temp_start_c=41.0)
    assert back.power_limit_w is None and back.valid is True and back.tok_per_j == pytest.approx(1.28)


@pytest.mark.tries("bad input", "report: foreign or corrupt run files")
def test_reader_names_the_bad_line_and_missing_columns(tmp_path):
    write_csv(tmp_path / "runs.csv", RunRecord, [_row("hf", "tg128", 0, 128, 10.0, 100.0)])
    text = (tmp_path / "runs.csv").read_text().replace(",1280,", ",x,").replace("128,10,", "lots,10,")
    (tmp_path / "runs.csv").write_text(text)
    with pytest.raises(UserError, match=r"runs.csv line 2: column \w+: invalid literal"):
        read_csv(tmp_path / "runs.csv", RunRecord)
    (tmp_path / "summary.csv").write_text("backend,test\nhf,tg128\n")
    with pytest.raises(UserError, match=r"missing columns: model, n_prompt"):
        read_csv(tmp_path / "summary.csv", SummaryRow)


def test_a_csv_saved_with_a_byte_order_mark_reads_as_without(tmp_path):
    # a spreadsheet's "save as CSV (UTF-8)" starts the file with U+FEFF: it was read into the first column's name
    rows = [_row("hf", "tg128", 0, 128, 10.0, 100.0)]
    write_csv(tmp_path / "runs.csv", RunRecord, rows)
    (tmp_path / "runs.csv").write_text("\ufeff" + (tmp_path / "runs.csv").read_text(), encoding="utf-8")
    assert read_csv(tmp_path / "runs.csv", RunRecord) == rows


@pytest.mark.tries("bad input", "report: foreign or corrupt run files")
@pytest.mark.parametrize(
    "name, data, message",
    [
        ("runs.csv", b"backend,\x81\xfe\n", r"runs.csv is not a luce-bench runs.csv: not UTF-8 text \(byte 8\)"),
        ("runs.csv.gz", b"\x1f\x8b not gzip data", r"runs.csv.gz is not a luce-bench runs.csv: "),
        ("meta.json", b'{"a": "\xff"}', r"meta.json is not valid JSON \(not UTF-8 text, byte 7\)"),
    ],
    ids=["bad-bytes", "bad-gzip", "meta-bad-bytes"],
)
def test_a_run_file_that_is_not_text_is_one_line(tmp_path, name, data, message):
    from luce_bench.results import read_meta

    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        read_meta(tmp_path) if name == "meta.json" else read_csv(tmp_path / "runs.csv", RunRecord)


def test_writer_appends_rows_immediately_and_reads_back(tmp_path):
    w = RunWriter.create(tmp_path, "x")
    w.add_run(_row("hf", "tg128", 0, 128, 10.0, 100.0))
    # an interrupted run keeps the finished rows: they are on disk before close()
    assert len(read_runs(w.dir)) == 1 and w.n_runs == 1
    w.add_samples([Sample(0.1, 100.0, None, 1980, 2619, 40, 0, 1000, 700.0)])
    w.write_meta({"a": 1})
    w.write_meta({"b": 2})
    w.close()
    assert read_runs(w.dir)[0].avg_ts == 12.8
    assert read_samples(w.dir)[0].power_w == 100.0 and read_samples(w.dir)[0].avg_power_w is None
    assert read_meta(w.dir) == {"a": 1, "b": 2}
    assert not list(w.dir.glob(".*"))  # no temp files left behind


def test_two_runs_started_in_the_same_second_get_two_folders(tmp_path, monkeypatch):
    from luce_bench import results

    monkeypatch.setattr(results, "utc_stamp", lambda: "20270101T000000Z")
    first, second = RunWriter.create(tmp_path, "sweep"), RunWriter.create(tmp_path, "sweep")
    assert [first.dir.name, second.dir.name] == ["20270101T000000Z-sweep", "20270101T000000Z-sweep-2"]
    first.close()
    second.close()


def test_writer_refuses_a_file_as_output_dir(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="exists and is not a directory"):
        RunWriter.create(tmp_path / "f", "x")


def test_a_published_run_reads_its_gzipped_samples(tmp_path):
    import gzip

    sample = Sample(0.5, 250.0, 240.0, 1980, 2619, 55, 4, 123456, 700.0)
    write_csv(tmp_path / "samples.csv", Sample, [sample])
    (tmp_path / "samples.csv.gz").write_bytes(gzip.compress((tmp_path / "samples.csv").read_bytes()))
    (tmp_path / "samples.csv").unlink()
    assert read_samples(tmp_path) == [sample]


def test_the_tables_name_fewer_windows_behind_tok_j_than_behind_tok_s():
    from luce_bench.tables import table_rows

    runs = [_row("hf", "tg128", i, 1280, 10.0, 1000.0, valid=i != 1) for i in range(3)]
    runs += [_row("mk", "tg128", i, 12800, 10.0, 3000.0) for i in range(3)]
    hf, mk = summarize(runs)
    assert (hf.n, hf.valid_reps, mk.n, mk.valid_reps) == (3, 2, 3, 3)
    assert hf.tok_per_j == pytest.approx(1.28)  # the window without energy is not averaged in as zero
    assert [r[-2] for r in table_rows([hf, mk])] == ["3 (tok/J 2)", "3"]
    (cpu,) = summarize([_row("hf", "tg128", i, 1280, 10.0, 1000.0, valid=False) for i in range(3)])
    assert table_rows([cpu])[0][-2] == "3"  # no energy at all: the empty tok/J column says it, not "(tok/J 0)"


def test_a_ci_that_reaches_below_zero_starts_at_zero_in_the_table_and_is_kept_in_summary_csv():
    from luce_bench.tables import table_rows

    (row,) = summarize([_row("hf", "tg8", i, tokens, 1.0, 1000.0) for i, tokens in enumerate([100, 1900])])
    assert row.ts_ci95_lo == pytest.approx(1000.0 - 12.706204736 * 900.0)  # n = 2: t(1) = 12.706, mean 1000 +- 900
    cells = table_rows([row])[0]
    assert cells[4] == f"0.0–{row.ts_ci95_hi:.1f}"  # tok/s cannot be negative: the table starts the interval at 0
