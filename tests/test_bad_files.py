"""Bad files: model directories (config.json, safetensors), cached GGUF exports and power-limit journals.

A broken model is refused while the plan is made (one line, exit 2, no run directory, no setting changed); a corrupt
or foreign journal is refused by `luce-bench restore` before it changes anything. Hypothesis cuts files at random
offsets, flips bytes in their headers and fills config.json and journals with values of any type.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from badinput import invoke, refused, sandbox
from hypothesis import given, settings
from hypothesis import strategies as st

from luce_bench.errors import UserError
from luce_bench.model.gguf_check import check_gguf
from luce_bench.model.resolve import resolve_model

ROOT = Path(__file__).resolve().parents[1]
RUN = ["bench", "sim", "--fake-gpu", "--tests", "pp8"]


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory) -> Path:
    """A copy of the tiny checkpoint this module may break (copies of it, that is)."""
    out = tmp_path_factory.mktemp("ckpt") / "tiny"
    shutil.copytree(tiny_model.path, out)
    return out


@pytest.fixture(scope="module")
def gguf_file(checkpoint, tmp_path_factory) -> Path:
    """A valid GGUF export of the tiny checkpoint."""
    from luce_bench.gguf_export import ensure_gguf
    from luce_bench.model.spec import TINY

    model = tmp_path_factory.mktemp("gguf") / "tiny"
    shutil.copytree(checkpoint, model)
    return ensure_gguf(model, TINY, progress=False)


def _model_copy(checkpoint: Path, tmp: Path) -> Path:
    model = tmp / "model"
    shutil.copytree(checkpoint, model)
    return model


@pytest.mark.tries("bad input", "safetensors truncated at a random offset")
@settings(max_examples=40)
@given(st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_safetensors_file_is_refused(checkpoint, share):
    data = (checkpoint / "model.safetensors").read_bytes()
    with sandbox() as tmp:
        model = _model_copy(checkpoint, tmp)
        (model / "model.safetensors").write_bytes(data[: int(share * len(data))])
        with pytest.raises(UserError, match="model.safetensors is not a valid safetensors file") as err:
            resolve_model(str(model))
        assert "\n" not in str(err.value)


@pytest.mark.tries("bad input", "safetensors header with flipped bytes")
@settings(max_examples=60)
@given(st.data())
def test_a_damaged_safetensors_header_is_refused_or_still_consistent(checkpoint, data):
    blob = bytearray((checkpoint / "model.safetensors").read_bytes())
    header_end = 8 + int.from_bytes(blob[:8], "little")
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, header_end - 1))] = data.draw(st.integers(0, 255))
    with sandbox() as tmp:
        model = _model_copy(checkpoint, tmp)
        (model / "model.safetensors").write_bytes(bytes(blob))
        try:
            resolve_model(str(model))
        except UserError as exc:
            assert "\n" not in str(exc) and str(model) in str(exc)
        else:  # a flip the check tolerates (in a metadata string, say): the safetensors library reads every tensor
            from safetensors import safe_open

            with safe_open(str(model / "model.safetensors"), framework="np") as f:
                assert all(f.get_tensor(k).size >= 1 for k in f.keys())


FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=5), st.lists(st.integers())
)
FIELDS = ["hidden_size", "num_hidden_layers", "vocab_size", "head_dim", "rms_norm_eps", "layer_types", "model_type"]


@pytest.mark.tries("bad input", "config.json fields of any type and range")
@settings(max_examples=80)
@given(st.dictionaries(st.sampled_from(FIELDS), FIELD_VALUES, min_size=1, max_size=3))
def test_fuzzed_config_json_is_refused_or_matches_the_weights(checkpoint, changes):
    raw = json.loads((checkpoint / "config.json").read_text())
    with sandbox() as tmp:
        model = tmp / "model"
        model.mkdir()
        (model / "model.safetensors").symlink_to(checkpoint / "model.safetensors")
        (model / "config.json").write_text(json.dumps({**raw, **changes}))
        try:
            spec = resolve_model(str(model))
        except UserError as exc:
            assert "\n" not in str(exc)
        else:  # accepted only when the weights have exactly the shapes this config.json implies
            assert spec.config.hidden_size == 128 and spec.config.num_hidden_layers == 4


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


MODEL_DIRS = {
    "missing": (lambda m: shutil.rmtree(m), "no such directory"),
    "a-file": (lambda m: (shutil.rmtree(m), m.write_text("x")), "expected a checkpoint directory, got a file"),
    "no-config": (lambda m: (m / "config.json").unlink(), "has no config.json"),
    "config-not-json": (lambda m: (m / "config.json").write_text("{"), "config.json is not valid JSON"),
    "config-not-utf8": (lambda m: (m / "config.json").write_bytes(b"\xff\xfe{}"), "cannot read"),
    "config-a-list": (lambda m: (m / "config.json").write_text("[]"), "expected a JSON object"),
    "config-not-qwen": (lambda m: (m / "config.json").write_text('{"model_type": "llama"}'), "is not Qwen3.5"),
    "hidden-size-text": (
        lambda m: (m / "config.json").write_text('{"model_type": "qwen3_5_text", "hidden_size": "abc"}'),
        "hidden_size = 'abc' is not valid",
    ),
    "no-weights": (lambda m: (m / "model.safetensors").unlink(), "no .safetensors weights"),
    "weights-truncated": (lambda m: _cut(m / "model.safetensors", 5000), "is not a valid safetensors file"),
    "weights-empty": (lambda m: _cut(m / "model.safetensors", 0), "shorter than its 8-byte header length"),
    "weights-of-another-size": (
        lambda m: (m / "config.json").write_text(
            (m / "config.json").read_text().replace('"hidden_size": 128', '"hidden_size": 256')
        ),
        "config.json implies",
    ),
    "bad-shard-index": (lambda m: (m / "model.safetensors.index.json").write_text("{}"), "not a valid shard index"),
}


@pytest.mark.tries("bad input", "model directories: missing, no/bad config.json, missing/bad weights")
@pytest.mark.parametrize("case", list(MODEL_DIRS))
def test_a_broken_model_directory_is_refused_before_the_run(checkpoint, case):
    damage, fragment = MODEL_DIRS[case]
    with sandbox() as tmp:
        model = _model_copy(checkpoint, tmp)
        damage(model)
        result, calls = invoke([*RUN, "--model", str(model), f"--out={tmp}/runs"], tmp)
        refused(result, calls, tmp, fragment)


@pytest.mark.tries("bad input", "GGUF truncated at a random offset")
@settings(max_examples=40)
@given(st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_gguf_is_refused(gguf_file, share):
    data = gguf_file.read_bytes()
    with sandbox() as tmp:
        path = tmp / "x.gguf"
        path.write_bytes(data[: int(share * len(data))])
        with pytest.raises(UserError, match=r"x.gguf (is truncated|is not a valid GGUF file)") as err:
            check_gguf(path)
        assert "\n" not in str(err.value)


@pytest.mark.tries("bad input", "GGUF header with flipped bytes, or not a GGUF at all")
@settings(max_examples=60)
@given(st.data())
def test_a_damaged_gguf_header_is_refused_or_still_complete(gguf_file, data):
    blob = bytearray(gguf_file.read_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        blob[data.draw(st.integers(0, 4096))] = data.draw(st.integers(0, 255))
    with sandbox() as tmp:
        path = tmp / "x.gguf"
        path.write_bytes(bytes(blob))
        try:
            check_gguf(path)
        except UserError as exc:
            assert "\n" not in str(exc)
        else:  # what the check accepts, the gguf package's reader reads in full
            import gguf

            reader = gguf.GGUFReader(path)
            assert all(t.data.nbytes == t.n_bytes for t in reader.tensors)


def test_a_truncated_cached_gguf_is_refused_before_a_llamacpp_run(checkpoint, tmp_path, monkeypatch):
    from luce_bench.backends.llamacpp import LlamaCppBackend
    from luce_bench.gguf_export import ensure_gguf
    from luce_bench.model.spec import TINY

    # llama.cpp is never loaded (the run is stubbed): the check must come first even where it could not run (a CUDA
    # build in a make test worker that hides the GPU)
    monkeypatch.setattr(LlamaCppBackend, "unavailable_reason", classmethod(lambda cls: None))
    # a cache of its own: the export it cuts would be every other test's export of the same weights
    monkeypatch.setenv("LUCE_BENCH_CACHE", str(tmp_path / "cache"))

    with sandbox() as tmp:
        model = _model_copy(checkpoint, tmp)
        path = ensure_gguf(model, TINY, progress=False)
        _cut(path, path.stat().st_size - 100)
        result, calls = invoke(["bench", "llamacpp", "--model", str(model), f"--out={tmp}/runs"], tmp)
        refused(result, calls, tmp, "is truncated")


@pytest.mark.tries("bad input", "disk full while writing the synthetic checkpoint")
def test_a_full_disk_while_preparing_the_model_is_one_line(tmp_path):
    import os
    import resource

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    env = {**os.environ, "LUCE_BENCH_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "luce_bench", "model", "prepare", "--size", "tiny"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, preexec_fn=small_files)
    assert res.returncode == 4 and "Traceback" not in res.stderr, res.stderr  # 4: the disk, not the input
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot write the synthetic checkpoint" in lines[0]
    assert not [p for p in (tmp_path / "cache" / "models").iterdir() if not p.name.startswith(".")]


UUID = "GPU-fake0000-rtx3090-0000"
GOOD_JOURNAL = {
    "uuid": UUID, "index": 0, "gpu_name": "NVIDIA GeForce RTX 3090 (simulated)", "original_limit_mw": 420000,
    "persistence_mode": False, "fake": "rtx3090", "pid": 1, "host": "elsewhere", "boot_id": None,
    "created_unix_s": 1.0, "sm_clocks_changed": False, "original_sm_lock_mhz": None, "sm_lock_readable": True,
    "run_dir": None,
}  # fmt: skip
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-(2**62), 2**62), st.floats(), st.text(max_size=6))


def _capped_card(tmp: Path) -> list:
    """Cap the simulated card at 300 W (what a killed sweep leaves); return its recorded setter calls."""
    from faultkit import card

    from luce_bench.gpu import open_gpu

    open_gpu(fake_preset="rtx3090").set_power_limit_mw(300_000)
    return card(tmp / "card.json")["set_calls"]


def _restore(tmp: Path, journal: bytes, *args: str) -> tuple:
    from badinput import runner
    from faultkit import card

    from luce_bench.cli import app

    calls = _capped_card(tmp)
    (tmp / "state").mkdir(exist_ok=True)
    (tmp / "state" / f"power-limit-{UUID}.json").write_bytes(journal)
    result = runner.invoke(app, ["restore", *args])
    return result, calls, card(tmp / "card.json")


def _refused_restore(result, calls_before, after, fragment=""):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert fragment in lines[0] and "Traceback" not in result.output
    assert after["set_calls"] == calls_before and after["limit_mw"] == 300_000  # nothing touched


@pytest.mark.tries("bad input", "restore: journal fields of any type and range")
@settings(max_examples=80)
@given(st.dictionaries(st.sampled_from(sorted(GOOD_JOURNAL)), JUNK, max_size=3), st.sets(st.sampled_from(["x", "y"])))
def test_a_fuzzed_journal_is_restored_only_when_it_is_valid(changes, extra):
    with sandbox() as tmp:
        doc = {**GOOD_JOURNAL, **changes, **dict.fromkeys(extra, 1)}
        result, calls, after = _restore(tmp, json.dumps(doc).encode())
        if result.exit_code == 0:  # every field right for this card: the original limit is back
            assert "300 W -> " in result.output and after["limit_mw"] == doc["original_limit_mw"]
            assert not extra and 100_000 <= doc["original_limit_mw"] <= 420_000
        else:
            _refused_restore(result, calls, after)


@pytest.mark.tries("bad input", "restore: journal cut at a random offset")
@settings(max_examples=40)
@given(st.floats(0.0, 1.0, exclude_max=True))
def test_a_truncated_journal_is_refused(share):
    data = json.dumps(GOOD_JOURNAL, indent=1).encode()
    with sandbox() as tmp:
        result, calls, after = _restore(tmp, data[: int(share * len(data))])
        _refused_restore(result, calls, after, "unreadable power-limit journal")


JOURNALS = {
    "empty": (b"", "unreadable power-limit journal"),
    "not-utf8": (b"\xff\xfe{}", "unreadable power-limit journal"),
    "a-list": (b"[1, 2]", "expected a JSON object"),
    "foreign-program": (b'{"gpu": 0, "limit": 300}', "unknown field"),
    "limit-text": (json.dumps({**GOOD_JOURNAL, "original_limit_mw": "300"}).encode(), "original_limit_mw"),
    "limit-nan": (json.dumps({**GOOD_JOURNAL, "original_limit_mw": float("nan")}).encode(), "original_limit_mw"),
    "limit-zero": (json.dumps({**GOOD_JOURNAL, "original_limit_mw": 0}).encode(), "original_limit_mw"),
    "limit-1e9-w": (json.dumps({**GOOD_JOURNAL, "original_limit_mw": 10**12}).encode(), "outside the range"),
    "other-card": (json.dumps({**GOOD_JOURNAL, "fake": "h200"}).encode(), "no fake GPU with UUID"),
    "real-gpu-elsewhere": (json.dumps({**GOOD_JOURNAL, "fake": None}).encode(), ""),
    "bad-lock": (json.dumps({**GOOD_JOURNAL, "original_sm_lock_mhz": [1, 2, 3]}).encode(), "original_sm_lock_mhz"),
}


@pytest.mark.tries("bad input", "restore: corrupt or foreign journals")
@pytest.mark.parametrize("case", list(JOURNALS))
def test_a_corrupt_or_foreign_journal_is_refused_before_any_change(case):
    journal, fragment = JOURNALS[case]
    with sandbox() as tmp:
        result, calls, after = _restore(tmp, journal, "--dry-run")  # says what the real one would: it refuses
        _refused_restore(result, calls, after, fragment)
    with sandbox() as tmp:
        result, calls, after = _restore(tmp, journal)
        _refused_restore(result, calls, after, fragment)
        assert list((tmp / "state").glob("power-limit-*.json"))  # kept for the user to inspect


def test_a_corrupt_second_journal_stops_the_restore_of_the_first_too():
    with sandbox() as tmp:
        (tmp / "state").mkdir()
        (tmp / "state" / "power-limit-zzz.json").write_text("{")
        result, calls, after = _restore(tmp, json.dumps(GOOD_JOURNAL).encode())
        _refused_restore(result, calls, after, "power-limit-zzz.json")
