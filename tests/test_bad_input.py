"""Bad input on the command line and in the YAML config: fuzzed with hypothesis, and the named cases by hand.

Every input is either accepted (it reaches the run, which is stubbed out) or refused with one line and exit code 2,
before any run directory exists and before any GPU setter is called (badinput.py). Hypothesis runs derandomized
(conftest.py), so every run tries the same examples.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from badinput import invoke, refused, refused_or_reached, sandbox
from hypothesis import event, example, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from luce_bench import config
from luce_bench.cli import app
from luce_bench.errors import UserError

SMOKE = (Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml").read_text()
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=8)
SPECIAL = ["0", "-0", "-1", "1e9", "1000000000", "nan", "NaN", "inf", "-inf", "1e309", "", " ", "abc", "0x10", "1_0"]
NUMBER = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(SPECIAL),
    TEXT,
)
WATTS = st.one_of(NUMBER, NUMBER.map(lambda v: v + "%"), NUMBER.map(lambda v: v + "W"), st.sampled_from(["300", "70%"]))
MHZ = st.one_of(NUMBER, NUMBER.map(lambda v: v + "%"), NUMBER.map(lambda v: v + "MHz"), st.sampled_from(["1200"]))
TEST = st.one_of(st.builds("{}{}".format, st.sampled_from(["pp", "tg", "xx", ""]), NUMBER), TEXT)
COMMON = {
    "--reps": NUMBER,
    "--window-s": NUMBER,
    "--warmup-s": NUMBER,
    "--rep-gap-max-s": NUMBER,
    "--cooldown-max-s": NUMBER,
    "--test-timeout-s": NUMBER,
    "--gpu": NUMBER,
    "--tests": st.lists(TEST, max_size=3).map(",".join),
    "--device": st.one_of(st.sampled_from(["auto", "cpu", "cuda", "cuda:0", "cuda:x", "tpu"]), TEXT),
    "--fake-preset": st.one_of(st.sampled_from(["rtx3090", "h200", "h100-sxm", "a100"]), TEXT),
    "--model": st.sampled_from(["tiny", "/no/such/dir", "./missing", "", " ", "tiny/", "synthetic-9b", "a b"]),
}
SWEEP = {
    "--limits": st.lists(WATTS, max_size=4).map(",".join),
    "--clocks": st.lists(MHZ, max_size=3).map(",".join),
    "--seed": NUMBER,
    "--order": st.one_of(st.sampled_from(["descending", "ascending", "shuffle", "random"]), TEXT),
    "--settle-s": NUMBER,
    "--idle-s": NUMBER,
    "--sweet-spot-min-speed": NUMBER,
    "--backends": st.one_of(st.sampled_from(["sim", "hf", "nope", "sim,nope", ",", "sim,sim"]), TEXT),
}
COMMANDS = {
    "sweep": (["sweep", "--fake-gpu"], {**COMMON, **SWEEP}),
    "compare": (["compare", "--fake-gpu", "--no-megakernel", "--baselines", "sim"], COMMON),
    "bench": (["bench", "sim", "--fake-gpu"], COMMON),
}


@st.composite
def command_lines(draw: st.DrawFn) -> list[str]:
    """A command with a random subset of its flags, each with a value from the strategies above."""
    head, flags = COMMANDS[draw(st.sampled_from(sorted(COMMANDS)))]
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), min_size=1, max_size=5, unique=True))
    return [*head, *(f"{flag}={draw(flags[flag])}" for flag in chosen)]


@pytest.mark.tries("bad input", "CLI flags: fuzzed values (sizes, W, MHz, NaN/inf, text, choices)")
@settings(max_examples=250)
@given(command_lines())
@example(["sweep", "--fake-gpu", "--limits=0"])
@example(["sweep", "--fake-gpu", "--limits=nan"])
@example(["sweep", "--fake-gpu", "--limits=1e9"])
@example(["sweep", "--fake-gpu", "--limits=1000000000"])
@example(["bench", "sim", "--fake-gpu", "--reps=1000000000000"])
def test_fuzzed_flags_are_accepted_or_refused_in_one_line(tiny_model, argv):
    with sandbox() as tmp:
        result, calls = invoke([*argv, f"--out={tmp}/runs"], tmp)
        event("accepted" if refused_or_reached(result, calls, tmp) else "refused")


SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**30), 10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    TEXT,
    st.sampled_from(["420", "70%", "1200MHz", "pp64", "tg8", "sim", "virtual", "h200", "shuffle"]),
)
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3))
SECTIONS = {"sampler": ["period_s"], "gpu": ["index", "fake", "fake_preset", "fake_clock"], "cooldown": ["max_s"]}
SECTIONS["sweep"] = ["limits", "clocks", "order", "shuffle_seed", "clamp", "settle_s", "idle_s", "sweet_spot_min_speed"]
TOP = ["backends", "tests", "reps", "warmup_s", "window_s", "rep_gap_max_s", "test_timeout_s", "prompt_seed", "device"]
KEYS = st.one_of(st.sampled_from(TOP), TEXT)


@st.composite
def configs(draw: st.DrawFn) -> dict:
    """The smoke config with random keys changed, added or given values of the wrong type or range."""
    doc = yaml.safe_load(SMOKE)
    for key in draw(st.lists(KEYS, max_size=4)):
        doc[key] = draw(VALUES)
    for section in draw(st.lists(st.sampled_from(sorted(SECTIONS)), max_size=2)):
        inner = doc.setdefault(section, {})
        if isinstance(inner, dict):
            key = draw(st.one_of(st.sampled_from(SECTIONS[section]), TEXT))
            inner[key] = draw(VALUES)
        else:
            doc[section] = draw(VALUES)
    return doc


@pytest.mark.tries("bad input", "YAML config: fuzzed documents (types, ranges, unknown keys, nesting)")
@settings(max_examples=200)
@given(configs())
def test_fuzzed_yaml_configs_are_accepted_or_refused_in_one_line(tiny_model, doc):
    with sandbox() as tmp:
        path = tmp / "fuzz.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        result, calls = invoke(["sweep", "-c", str(path), f"--out={tmp}/runs"], tmp)
        event("accepted" if refused_or_reached(result, calls, tmp) else "refused")


@st.composite
def mangled(draw: st.DrawFn) -> bytes:
    """The smoke config's bytes with random spans deleted, replaced or inserted (malformed YAML, broken UTF-8)."""
    data = bytearray(SMOKE.encode())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 8))
        data[at : at + cut] = draw(st.binary(max_size=6))
    return bytes(data)


@pytest.mark.tries("bad input", "YAML config: mangled bytes (malformed YAML, broken UTF-8, binary)")
@settings(max_examples=300)
@given(st.one_of(mangled(), st.binary(max_size=64)))
def test_mangled_config_files_load_or_give_one_line(data):
    with sandbox() as tmp:
        path = tmp / "c.yaml"
        path.write_bytes(data)
        try:
            cfg = config.load(path)
        except UserError as exc:
            assert "\n" not in str(exc) and str(exc)
        else:
            assert cfg.reps >= 1 and math.isfinite(cfg.window_s)


def _deep(tmp: Path) -> Path:
    (tmp / "deep.yaml").write_text("[" * 3000 + "]" * 3000)
    return tmp / "deep.yaml"


CONFIG_FILES = {
    "empty": (lambda t: _write(t, b""), "is empty"),
    "comments-only": (lambda t: _write(t, b"# nothing here\n\n"), "only comments"),
    "not-utf8": (lambda t: _write(t, b"reps: \xff\xfe3\n"), "cannot read it"),
    "utf16": (lambda t: _write(t, "reps: 3\n".encode("utf-16")), "cannot read it"),
    "directory": (lambda t: t, "is a directory"),
    "missing": (lambda t: t / "nope.yaml", "config file not found"),
    "dev-null": (lambda t: Path("/dev/null"), "config /dev/null is empty"),
    "too-large": (lambda t: _write(t, b"# " + b"x" * (2 << 20)), "larger than 1 MiB"),
    "too-deep": (_deep, "nested too deeply"),
    "bad-date": (lambda t: _write(t, b"reps: 2017-13-45\n"), "invalid YAML value"),
    "bad-tag": (lambda t: _write(t, b"reps: !!python/name:os.system\n"), "invalid YAML"),
    "syntax": (lambda t: _write(t, b"reps: [\n"), "invalid YAML at line 2, column 1: expected the node content"),
    "duplicate-key": (lambda t: _write(t, b"reps: 2\nwindow_s: 1\nreps: 3\n"), "line 3, column 1: duplicate key"),
    "duplicate-nested": (lambda t: _write(t, b"sweep:\n  order: ascending\n  order: shuffle\n"), "key 'order'"),
    "not-a-mapping": (lambda t: _write(t, b"- 1\n"), "expected a mapping"),
    "unknown-key": (lambda t: _write(t, b"repz: 3\n"), "unknown key 'repz'"),
    "nan-window": (lambda t: _write(t, b"window_s: .nan\n"), "window_s = nan is out of range"),
    "huge-reps": (lambda t: _write(t, b"reps: 100000000000000000000\n"), "reps = 100000000000000000000 is out"),
    "negative-size": (lambda t: _write(t, b"tests: [pp-5]\n"), "bad test 'pp-5'"),
    "huge-seed": (lambda t: _write(t, b"model_seed: 100000000000000000000000\n"), "model_seed = "),
    "zero-watts": (lambda t: _write(t, b"sweep: {limits: ['0']}\n"), "sweep.limits[0]: a power limit must be positive"),
    "bool-limit": (lambda t: _write(t, b"sweep: {limits: [true]}\n"), "limits[0]: expected watts (220) or a share"),
    "null-clock": (lambda t: _write(t, b"sweep: {clocks: [1500, null]}\n"), "clocks[1]: expected MHz (1600) or"),
    "zero-share": (lambda t: _write(t, b"sweep: {limits: ['0%']}\n"), "c.yaml: sweep.limits[0]: a power limit must"),
    "unknown-backend": (lambda t: _write(t, b"backends: [nope]\n"), "c.yaml: backends: unknown backend 'nope'"),
    "giga-watts": (lambda t: _write(t, b"sweep: {limits: [1000000000]}\n"), "outside the range"),
}


def _write(tmp: Path, data: bytes) -> Path:
    (tmp / "c.yaml").write_bytes(data)
    return tmp / "c.yaml"


@pytest.mark.tries("bad input", "config files: empty, unreadable, non-UTF-8, too large/deep, bad values")
@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_files_are_one_line(tiny_model, case):
    make, fragment = CONFIG_FILES[case]
    with sandbox() as tmp:
        path = make(tmp)
        result, calls = invoke(["sweep", "--fake-gpu", "-c", str(path), f"--out={tmp}/runs"], tmp)
        refused(result, calls, tmp, fragment)


FLAGS = {
    "zero-watts": (["sweep", "--fake-gpu", "--limits", "0"], "--limits: a power limit must be positive, got '0'"),
    "nan-watts": (["sweep", "--fake-gpu", "--limits", "nan"], "got 'nan'"),
    "giga-watts": (["sweep", "--fake-gpu", "--limits", "1000000000"], "outside the range"),
    "exp-watts": (["sweep", "--fake-gpu", "--limits", "1e9"], "got '1e9'"),
    "zero-percent": (["sweep", "--fake-gpu", "--limits", "0%"], "--limits: a power limit must be positive"),
    "nan-window": (["sweep", "--fake-gpu", "--window-s", "nan"], "--window-s = nan is out of range"),
    "inf-timeout": (["sweep", "--fake-gpu", "--test-timeout-s", "inf"], "--test-timeout-s = inf is out of range"),
    "negative-reps": (["bench", "sim", "--fake-gpu", "--reps", "-3"], "--reps = -3 is out of range"),
    "huge-reps": (["bench", "sim", "--fake-gpu", "--reps", "99999999999"], "--reps = 99999999999 is out of range"),
    "huge-test": (["bench", "sim", "--fake-gpu", "--tests", "tg999999999"], "bad test 'tg999999999'"),
    "test-too-long": (["bench", "sim", "--fake-gpu", "--tests", "pp5000"], "needs 5000 positions"),
    "zero-clock": (["sweep", "--fake-gpu", "--clocks", "0"], "--clocks: an SM clock must be positive, got '0'"),
    "huge-clock": (["sweep", "--fake-gpu", "--clocks", "99999999"], "not supported by"),
    "unknown-backend": (["sweep", "--fake-gpu", "--backends", "nope"], "--backends: unknown backend 'nope'"),
    "tiny-watts": (["sweep", "--fake-gpu", "--limits", "0.0001"], "power limit 0.0001 (0 W) outside the range"),
    "empty-backends": (["sweep", "--fake-gpu", "--backends", " , "], "--backends is empty"),
    "all-and-more": (["sweep", "--fake-gpu", "--backends", "all,sim"], "backends: 'all' stands alone, not beside sim"),
    "empty-baselines": (["compare", "--fake-gpu", "--baselines", " "], "--baselines is empty: name one or more"),
    "baselines-empty-entry": (["compare", "--fake-gpu", "--baselines", "sim,"], "--baselines has an empty entry"),
    "preset-without-fake-gpu": (["bench", "hf", "--fake-preset", "h200"], "--fake-preset chooses the simulated card"),
    "empty-clocks": (["sweep", "--fake-gpu", "--clocks", ""], "--clocks is empty"),
    "empty-limits": (["sweep", "--fake-gpu", "--limits", ""], "--limits is empty; leave it out for the config's value"),
    "empty-tests": (["sweep", "--fake-gpu", "--tests", ","], "--tests is empty"),
    "empty-entry": (["sweep", "--fake-gpu", "--limits", "300,,200"], "--limits has an empty entry: '300,,200'"),
    "sim-without-fake-gpu": (["bench", "sim"], "backend sim cannot run here"),
    "missing-model": (["bench", "sim", "--fake-gpu", "--model", "/no/such/model"], "no such directory"),
    "wrong-type": (["sweep", "--reps", "abc"], "Invalid value for '--reps'"),
    "unknown-option": (["sweep", "--nope"], "No such option: --nope"),
    "unknown-option-unlike-any": (["sweep", "--foo"], "No such option: --foo (see `"),
    "unknown-option-typo": (["sweep", "--limt", "3"], "No such option: --limt (Possible options: --limits) (see"),
    "unknown-command": (["nosuchcommand"], "No such command 'nosuchcommand'"),
    "negative-limit": (["sweep", "--fake-gpu", "--limits", "-5"], "--limits: expected watts (220) or a share"),
    "min-speed-above-1": (
        ["sweep", "--fake-gpu", "--sweet-spot-min-speed", "2"],
        "--sweet-spot-min-speed = 2.0 is out",
    ),
}


@pytest.mark.tries("bad input", "CLI flags: 0 W, NaN, 1e9 W, huge/negative sizes, unknown backends, paths")
@pytest.mark.parametrize("case", list(FLAGS))
def test_bad_flags_are_one_line(tiny_model, case):
    argv, fragment = FLAGS[case]
    with sandbox() as tmp:
        result, calls = invoke([*argv, f"--out={tmp}/runs"] if argv[0] != "nosuchcommand" else argv, tmp)
        refused(result, calls, tmp, fragment)


@pytest.mark.tries("bad input", "--gpu N for a card the host lacks (the simulated host here; NVML: test_gpu_nvml.py)")
@pytest.mark.parametrize("command", ["sweep", "bench", "info"])
def test_a_gpu_index_the_host_lacks_is_one_line_and_leaves_no_lock(tiny_model, command):
    argv = {"sweep": ["sweep"], "bench": ["bench", "sim"], "info": ["info"]}[command] + ["--fake-gpu", "--gpu", "5"]
    with sandbox() as tmp:
        result, calls = invoke([*argv, f"--out={tmp}/runs"] if command != "info" else argv, tmp)
        said = refused(result, calls, tmp)
        assert said == "error: GPU index 5 out of range: the simulated host has 1 GPU (index 0) (--gpu, gpu.index)"
        assert not list(tmp.rglob("*.lock"))  # nothing left behind: no power-limit lock for a card that is not there


@pytest.mark.tries("bad input", "CLI flags: 0 W, NaN, 1e9 W, huge/negative sizes, unknown backends, paths")
def test_an_empty_out_is_refused_not_taken_as_the_current_directory(tiny_model):
    with sandbox() as tmp:
        result, calls = invoke(["sweep", "--fake-gpu", "--out", ""], tmp)
        refused(result, calls, tmp, "--out is empty")


DEVICE_CUDA = {
    "compare": ["compare", "--no-megakernel", "--baselines", "hf"],
    "bench": ["bench", "hf"],
    "sweep": ["sweep", "--fake-gpu", "--backends", "hf", "--limits", "300"],
}


@pytest.mark.tries("bad input", "CLI: --device cuda with no CUDA GPU visible, an unusable --out: before any note")
@pytest.mark.parametrize("case", list(DEVICE_CUDA))
def test_device_cuda_without_a_visible_gpu_is_refused_before_any_backend_loads(tiny_model, monkeypatch, case):
    import os
    from unittest import mock

    from luce_bench.backends.hf import HFBackend

    monkeypatch.setattr(HFBackend, "unavailable_reason", classmethod(lambda cls: None))  # installed or not
    with sandbox() as tmp, mock.patch.dict(os.environ, {"CUDA_VISIBLE_DEVICES": ""}):
        result, calls = invoke([*DEVICE_CUDA[case], "--device", "cuda", f"--out={tmp}/runs"], tmp)
        line = refused(result, calls, tmp)
    assert line == (
        "error: device cuda (--device, or `device:` in the config): no CUDA GPU visible here; use auto or cpu"
    )


@pytest.mark.tries("bad input", "CLI: --device cuda with no CUDA GPU visible, an unusable --out: before any note")
def test_an_unusable_out_is_the_only_line_even_when_the_plan_has_notes(tiny_model, tmp_path):
    from typer.testing import CliRunner

    from luce_bench.cli import app
    from luce_bench.plan import TINY_NOTE

    afile = tmp_path / "afile"
    afile.write_text("x")
    argv = ["compare", "--fake-gpu", "--no-megakernel", "--baselines", "sim,hf", "--model", "auto", "--out", str(afile)]
    with sandbox():
        result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: --out {afile}: exists and is not a directory"]
    assert TINY_NOTE.split(":")[0] not in result.output  # the plan had its note; bad input comes first
    below = afile / "runs"  # a file further up the path: bad input too, not a write failure
    with sandbox():
        result = CliRunner().invoke(app, [*argv[:-1], str(below)])
    assert result.exit_code == 2, result.output
    assert result.output.splitlines() == [f"error: cannot create a run directory under {below}: a file is in its path"]


@pytest.mark.parametrize(
    "argv,command",
    [
        (["compare", "--tests"], "compare"),
        (["kernel", "build", "--arch"], "kernel build"),
        (["--debug", "sweep", "-o"], "sweep"),
    ],
)
def test_an_option_without_its_value_points_at_its_commands_help(argv, command):
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"requires an argument. (see `luce-bench {command} --help`)"), result.output
