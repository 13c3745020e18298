"""Clock requests against a card (snap, %, range, clamp), sweep settings and their order, the two-axis sweet spot."""

from __future__ import annotations

import pytest

from luce_bench import config
from luce_bench.errors import UserError
from luce_bench.gpu.fake import PRESETS, FakeGPU
from luce_bench.plan import Setting, limit_settings, merge_notes, order_settings, sweep_settings
from luce_bench.records import SummaryRow
from luce_bench.sm_clocks import ClockTarget, parse_clocks, snap_mhz
from luce_bench.summary import sweet_spots

H200 = list(range(1980, 344, -15))  # 1980, 1965, ..., 345


def test_snap_to_the_nearest_supported_clock_lower_on_a_tie():
    assert snap_mhz(1600, H200) == 1605 and snap_mhz(1597.5, H200) == 1590 and snap_mhz(1598, H200) == 1605
    assert snap_mhz(1980, H200) == 1980 and snap_mhz(2500, H200) == 1980 and snap_mhz(10, H200) == 345


def test_mhz_and_percent_resolve_and_record_request_and_lock():
    got = parse_clocks("1980, 1600MHz,50%", H200)
    assert [(t.text, t.requested_mhz, t.locked_mhz, t.snapped) for t in got] == [
        ("1980", 1980, 1980, False),
        ("1600MHz", 1600, 1605, True),
        ("50%", 990, 990, False),
    ]
    assert [t.locked_mhz for t in parse_clocks([1980, "80%"], H200)] == [1980, 1590]  # 1584 snaps to 1590


def test_requests_that_snap_to_the_same_clock_count_once():
    assert [t.locked_mhz for t in parse_clocks("1600,1605,1610", H200)] == [1605]


def test_a_clock_written_twice_is_refused():
    with pytest.raises(UserError, match=r"SM clock 1980 MHz is given twice \(1980 and 100%\): give each once"):
        parse_clocks("1980,1600,100%", H200)
    for spec in ("1605,1600,1600", "1600,1605,1600"):  # the order does not matter
        with pytest.raises(UserError, match=r"1600 MHz is given twice"):
            parse_clocks(spec, H200)


def test_out_of_range_names_the_card_range_and_clamp():
    with pytest.raises(UserError, match=r"SM clock 2100 MHz, 300 MHz not supported by H200: "):
        parse_clocks("2100,1200,300", H200, gpu_name="H200")
    with pytest.raises(UserError, match=r"SM clock 50.5 \(50 MHz\), 300 MHz not supported"):  # as written, then MHz
        parse_clocks("50.5,300MHz", H200)
    with pytest.raises(UserError, match=r"it locks 345-1980 MHz \(110 clocks"):
        parse_clocks("2100", H200)
    got = parse_clocks("2100,300", H200, clamp=True)
    assert [(t.locked_mhz, t.clamped) for t in got] == [(1980, True), (345, True)]
    # a share above 100 % is out of range the same way: --clamp takes the top clock, as it takes the top limit
    (top,) = parse_clocks("120%", H200, clamp=True)
    assert (top.locked_mhz, top.clamped) == (1980, True)
    with pytest.raises(UserError, match="out of range"):
        parse_clocks("0%", H200, clamp=True)


@pytest.mark.tries("bad input", "clock and limit values: malformed or impossible")
@pytest.mark.parametrize("bad", ["abc", "-5", "0", "", ",", "120%", "0%", "70%%", "1e3", "nan", "1600 W"])
def test_malformed_or_impossible_clocks(bad):
    with pytest.raises(UserError):
        parse_clocks(bad, H200)


def test_a_card_without_clocks_is_refused():
    with pytest.raises(UserError, match="lists no supported SM clocks"):
        parse_clocks("1200", [])


def _cfg(**over):
    return config.load(None, {"gpu.fake": True, **over})


def test_a_limits_only_sweep_plans_exactly_as_before():
    cfg = _cfg(**{"sweep.limits": "220,420,300", "sweep.order": "shuffle", "sweep.shuffle_seed": 5})
    assert sweep_settings(cfg, FakeGPU()) == limit_settings(cfg, FakeGPU())


def test_requests_that_merge_into_one_setting_get_a_note():
    cfg = _cfg(**{"sweep.limits": "", "sweep.clocks": "1935,1936,1200"})  # 1935 and 1936 lock the same clock
    settings = sweep_settings(cfg, FakeGPU())
    assert len(settings) == 2
    (note,) = merge_notes(cfg, settings)
    assert note.startswith("SM clock 1936 MHz: the same setting as an earlier request") and "measured once" in note
    cfg = _cfg(**{"sweep.limits": "9999,420,300", "sweep.clamp": True})  # 9999 W clamps to the top: 420 W
    (note,) = merge_notes(cfg, sweep_settings(cfg, FakeGPU()))
    assert note.startswith("power limit 420 W: the same setting")
    cfg = _cfg(**{"sweep.limits": "9999W,420w,300", "sweep.clamp": True})  # a unit the request gave is not doubled
    (note,) = merge_notes(cfg, sweep_settings(cfg, FakeGPU()))
    assert note.startswith("power limit 420w: the same setting")
    cfg = _cfg(**{"sweep.limits": "420,300"})
    assert merge_notes(cfg, sweep_settings(cfg, FakeGPU())) == ()  # nothing merged: no note
    assert merge_notes(_cfg(), sweep_settings(_cfg(), FakeGPU())) == ()  # auto: its shares merge by design


def test_grid_is_limit_major_then_clock_descending_or_ascending():
    cfg = _cfg(**{"sweep.limits": "300,420", "sweep.clocks": "1200,1950"})
    labels = [s.label for s in sweep_settings(cfg, FakeGPU())]
    assert labels == ["420W/1950MHz", "420W/1200MHz", "300W/1950MHz", "300W/1200MHz"]
    cfg = _cfg(**{"sweep.limits": "300,420", "sweep.clocks": "1200,1950", "sweep.order": "ascending"})
    assert [s.label for s in sweep_settings(cfg, FakeGPU())] == labels[::-1]


def test_shuffled_grid_is_seeded():
    grid = {"sweep.limits": "300,420", "sweep.clocks": "1200,1950,60%", "sweep.order": "shuffle"}
    a, b, c = (sweep_settings(_cfg(**grid, **{"sweep.shuffle_seed": seed}), FakeGPU()) for seed in (3, 3, 4))
    assert a == b and a != c and set(a) == set(c) == set(order_settings(a)) and len(a) == 6


def test_clocks_alone_have_no_limit_and_change_the_gpu():
    (s,) = sweep_settings(_cfg(**{"sweep.clocks": "50%"}), FakeGPU(preset=PRESETS["h200"]))
    assert s.power_limit is None and s.sm_clock == ClockTarget("50%", 990, 990) and s.changes_gpu
    assert s.label == "990MHz" and not Setting().changes_gpu


def test_config_clocks_alone_drop_the_limits_default_but_a_grid_keeps_them():
    assert _cfg(**{"sweep.clocks": "1950"}).sweep.limits == ()
    assert _cfg().sweep.limits == ("auto",) and _cfg().sweep.clocks == ()
    assert _cfg(**{"sweep.clocks": "1950", "sweep.limits": "300"}).sweep.limits == ("300",)
    with pytest.raises(UserError, match=r"config: sweep.clocks\[1\]: expected MHz \(1600\) or a share"):
        _cfg(**{"sweep.clocks": "1950,fast"})


def _row(limit, clock, ts, tpj):
    return SummaryRow(
        backend="b", model="m", test="tg128", n_prompt=0, n_gen=128, power_limit_req_w=limit, power_limit_w=limit,
        sm_clock_req_mhz=clock, sm_clock_mhz=clock, n=5, avg_ts=ts, tok_per_j=tpj, mean_power_w=ts / tpj,
        valid_reps=5, device="cuda", gpu_simulated=True, verdict="ok",
    )  # fmt: skip


def test_sweet_spot_over_both_axes_keeps_95_percent_of_the_fastest_setting():
    summary = [
        _row(700, 1980, 100.0, 3.0),
        _row(700, 1700, 104.0, 3.5),  # faster than the top clock (noise, or a throttling top clock): the reference
        _row(500, 1980, 99.0, 3.6),  # 95.2 % of the fastest: kept
        _row(500, 1500, 98.5, 3.9),  # 94.7 %: too slow, however efficient
        _row(700, 1200, 80.0, 5.0),
    ]
    (spot,) = sweet_spots(summary, 0.95, default_limit_w=700)
    assert (spot.limit_w, spot.sm_clock_mhz, spot.reference) == (500, 1980, "fastest")
    assert (spot.stock_limit_w, spot.stock_sm_clock_mhz, spot.stock_ts) == (700, 1700, 104.0)
    assert spot.speed_share == pytest.approx(99 / 104) and spot.tok_per_j_gain_pct == pytest.approx(
        100 * (3.6 / 3.5 - 1)
    )


def test_clocks_only_sweet_spot_has_no_limit():
    summary = [_row(None, 1980, 100.0, 3.0), _row(None, 1785, 96.8, 4.0), _row(None, 1485, 90.0, 4.6)]
    (spot,) = sweet_spots(summary, 0.95)
    assert (spot.limit_w, spot.sm_clock_mhz, spot.setting, spot.stock_setting) == (None, 1785, "1785 MHz", "1980 MHz")
