"""Config loading and validation: every error names the bad key or value."""

import re
from pathlib import Path

import pytest
import yaml

from luce_bench import config
from luce_bench.errors import UserError

DEFAULT = Path(__file__).resolve().parent.parent / "configs" / "default.yaml"


def test_default_yaml_loads_with_documented_values():
    cfg = config.load(DEFAULT)
    assert cfg.tests == ("pp520", "tg128")
    assert cfg.reps == 5 and cfg.window_s == 10.0 and cfg.sampler.period_s == 0.1
    assert cfg.sweep.limits == ("auto",)
    assert [t.name for t in cfg.test_specs] == ["pp520", "tg128"]


@pytest.mark.parametrize("path", sorted((DEFAULT.parent / "presets").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_preset_loads_and_its_limits_suit_its_card(path, tmp_path, monkeypatch):
    from luce_bench.gpu import open_gpu
    from luce_bench.plan import parse_limits

    monkeypatch.setenv("LUCE_BENCH_FAKE_GPU_STATE", str(tmp_path / "card.json"))
    cfg = config.load(path)
    for preset in ("rtx3090", "h100-sxm", "h200") if path.stem == "relative" else (cfg.gpu.fake_preset,):
        gpu = open_gpu(fake_preset=preset, read_only=True)
        limits = parse_limits(cfg.sweep.limits, gpu.default_power_limit_mw(), gpu.power_limit_constraints_mw())
        assert len(limits) == len(cfg.sweep.limits)  # every limit within the card's range, none merged


def test_yaml_merge_keys_and_their_overrides_are_not_duplicates(tmp_path):
    doc = tmp_path / "m.yaml"
    doc.write_text("defs: {a: &a {x: 1}, b: &b {<<: *a, x: 2}}\nc: {<<: *b}\nd: {<<: *a, x: 3}\n")
    assert config._read_yaml(doc) == yaml.safe_load(doc.read_text())  # PyYAML's merge, only duplicates refused
    doc.write_text("a: 1\nb: 2\nd: {x: 1, y: 2, x: 3}\n")
    with pytest.raises(UserError, match="line 3, column 17: duplicate key 'x'"):
        config._read_yaml(doc)


def test_exponent_numbers_read_as_yaml_1_2_reads_them(tmp_path):
    doc = tmp_path / "e.yaml"
    doc.write_text("window_s: 1e1\nwarmup_s: 5E-1\nsampler: {period_s: 1.0e-1}\n")  # PyYAML alone: '1e1', '5E-1'
    cfg = config.load(doc)
    assert cfg.window_s == 10.0 and cfg.warmup_s == 0.5 and cfg.sampler.period_s == 0.1
    doc.write_text('x: "1e3"\ny: 1e\nz: 1_0e1\n')  # quoted, or no exponent digits: strings as before
    assert config._read_yaml(doc) == {"x": "1e3", "y": "1e", "z": 100.0}


def test_cli_overrides_win_and_none_is_ignored():
    cfg = config.load(DEFAULT, {"reps": 7, "window_s": None, "sweep.limits": "100%,70%", "gpu.fake": True})
    assert cfg.reps == 7 and cfg.window_s == 10.0
    assert cfg.sweep.limits == ("100%", "70%") and cfg.gpu.fake is True


@pytest.mark.tries("bad input", "YAML config: bad keys, types and ranges named")
@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        pytest.param("reps: 0\n", "reps = 0 is out of range", id="reps-range"),
        pytest.param("repz: 3\n", "unknown key 'repz'", id="unknown-key"),
        pytest.param("sampler:\n  periodd_s: 1\n", "unknown key 'sampler.periodd_s'", id="unknown-nested"),
        pytest.param("window_s: fast\n", "window_s: expected a number", id="type"),
        pytest.param("tests: [pp520, xx1]\n", "bad test 'xx1'", id="bad-test"),
        pytest.param("tests: tg128,pp64,tg128\n", "test tg128 is given twice (tg128 and tg128)", id="test-twice"),
        pytest.param("backends: [sim, sim]\n", "backend sim is given twice", id="backend-twice"),
        pytest.param(
            "reps: 2\nwindow_s: 1\nwarmup_s: 0.5\ntest_timeout_s: 0.5\n",
            "test_timeout_s = 0.5 s is shorter than one test's plan (warm-up 0.5 s + 2 x 1 s windows = 2.5 s)",
            id="timeout-below-plan",
        ),
        pytest.param("sweep:\n  limits: [300, lots]\n", "sweep.limits[1]", id="bad-limit"),
        pytest.param("sweep:\n  order: random\n", "sweep.order = 'random'", id="bad-choice"),
        pytest.param("gpu:\n  fake: maybe\n", "gpu.fake: expected true or false", id="bool"),
        pytest.param("- 1\n- 2\n", "c.yaml: top level: expected a mapping of settings", id="not-mapping"),
        pytest.param("reps: [\n", "invalid YAML", id="yaml-syntax"),
    ],
)
def test_bad_config_names_the_key(tmp_path, yaml_text, message):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UserError, match=re.escape(message)):
        config.load(p)


def test_a_bad_value_that_a_validator_refuses_names_the_file_and_a_flags_does_not(tmp_path):
    # "bad test '128'" came without the file's name when the value was the file's
    p = tmp_path / "c.yaml"
    p.write_text("tests: [128]\n")
    with pytest.raises(UserError, match=re.escape(f"config {p}: bad test '128'")):
        config.load(p)
    p.write_text("reps: 2\n")
    with pytest.raises(UserError) as exc:
        config.load(p, {"tests": "128"})
    assert str(exc.value).startswith("bad test '128'")  # (a flag's: the CLI names the flag, not the file)


@pytest.mark.tries("bad input", "YAML config: bad keys, types and ranges named")
def test_missing_file_and_unknown_override(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        config.load(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="unknown setting 'sweep.nope'"):
        config.load(None, {"sweep.nope": 1})


@pytest.mark.parametrize(
    ("text", "expected"), [("220", (220.0, False)), ("220W", (220.0, False)), ("70%", (70.0, True))]
)
def test_parse_limit(text, expected):
    assert config.parse_limit(text) == expected


@pytest.mark.tries("bad input", "YAML config: bad keys, types and ranges named")
@pytest.mark.parametrize(
    ("yaml_text", "message"),
    [
        pytest.param('reps: "3"\n', "reps: expected an integer, got '3'", id="string-int"),
        pytest.param("reps: 2.5\n", "reps: expected an integer, got 2.5", id="fractional-int"),
        pytest.param("gpu:\n  fake: yes please\n", "gpu.fake: expected true or false", id="string-bool"),
        pytest.param("sampler: 5\n", "c.yaml: sampler: expected a mapping, got 5", id="section-not-mapping"),
        pytest.param("tests: 5\n", "tests: expected a list, got 5", id="not-a-list"),
        pytest.param(
            "gpu:\n  fake_clock: fast\n", "gpu.fake_clock = 'fast'; expected one of real, virtual", id="clock"
        ),
        pytest.param("window_s: 9999\n", "window_s = 9999 is out of range [0.001, 3600]", id="upper-bound"),
    ],
)
def test_types_are_strict_with_the_same_one_line_messages(tmp_path, yaml_text, message):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    with pytest.raises(UserError) as err:
        config.load(p)
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.skipif(not Path("/dev/fd").is_dir(), reason="no /dev/fd here")
def test_a_config_can_come_through_a_pipe():
    """`-c <(sed 's/reps: 3/reps: 5/' base.yaml)`: the shell hands over /dev/fd/N, a pipe, not a regular file."""
    import os

    r, w = os.pipe()
    try:
        os.write(w, b"reps: 5\nsweep:\n  limits: [300]\n")
        os.close(w)
        cfg = config.load(Path(f"/dev/fd/{r}"))
    finally:
        os.close(r)
    assert cfg.reps == 5 and cfg.sweep.limits == ("300",)


def test_yaml_numbers_become_strings_and_whole_floats_integers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("reps: 3.0\nsweep:\n  limits: [300, 220.5, 70%]\nmodel: 123\n")
    cfg = config.load(p)
    assert cfg.reps == 3 and isinstance(cfg.reps, int)
    assert cfg.sweep.limits == ("300", "220.5", "70%") and cfg.model == "123"
    p.write_text("sweep:\n  limits: 420\n  clocks: 1980\n")  # one number is a list of one, as "420" is
    assert config.load(p).sweep.limits == ("420",) and config.load(p).sweep.clocks == ("1980",)


@pytest.mark.tries("bad input", "config files: empty, unreadable, non-UTF-8, too large/deep, bad values")
def test_unreadable_config_is_one_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"reps: \xff\xfe\n")
    with pytest.raises(UserError, match="cannot read it"):
        config.load(p)


@pytest.mark.parametrize(
    "yaml_text, fragment, overrides",
    [
        ("reps: -3\n", "reps = -3 is out of range", {"reps": 1}),
        ('window_s: "ten"\n', "window_s: expected a number, got 'ten'", {"window_s": 1.0}),
        ("sweep: {limits: [420, -5]}\n", "sweep.limits[1]", {"sweep.limits": "300"}),
    ],
)
def test_a_broken_file_is_refused_even_where_a_flag_overrides_the_value(tmp_path, yaml_text, fragment, overrides):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text)
    assert config.load(None, overrides).reps >= 1  # the overrides alone are valid
    with pytest.raises(UserError) as err:
        config.load(p, overrides)
    assert str(err.value).startswith(f"config {p}: ") and fragment in str(err.value)


def test_a_check_between_fields_waits_for_the_flags(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("test_timeout_s: 30\n")  # shorter than the default plan (3 s + 5 x 10 s), not than the flags' one
    short = {"reps": 1, "window_s": 5.0, "warmup_s": 1.0}
    assert config.load(p, short).test_timeout_s == 30
    with pytest.raises(UserError, match="test_timeout_s = 30 s is shorter than one test's plan"):
        config.load(p)  # without the flags the merged settings are refused, as before
