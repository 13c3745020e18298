"""Model spec, synthetic checkpoints and checkpoint resolution."""

import json

import pytest

from luce_bench.errors import UserError
from luce_bench.model import synthetic
from luce_bench.model.resolve import read_config, resolve_model
from luce_bench.model.spec import QWEN35_08B, SIZES, TINY, TextConfig
from luce_bench.model.weights import canonical_key, load_text_weights


def test_08b_has_exact_shapes_and_param_count():
    assert QWEN35_08B.num_params() == 752_393_024
    assert QWEN35_08B.full_attention_layers == [3, 7, 11, 15, 19, 23]
    assert QWEN35_08B.conv_dim == 6144 and QWEN35_08B.rotary_dim == 64
    total = sum(int(__import__("math").prod(s)) for _, s, _ in synthetic.tensor_plan(QWEN35_08B))
    assert total == 752_393_024


def test_tiny_keeps_the_architecture():
    assert TINY.num_hidden_layers >= 4 and TINY.full_attention_layers
    assert len(TINY.full_attention_layers) < TINY.num_hidden_layers


def test_hf_config_round_trip_avoids_the_defaults_trap():
    d = QWEN35_08B.to_hf_dict()
    assert d["rope_parameters"]["rope_theta"] == 1e7 and d["linear_num_value_heads"] == 16
    assert d["tie_word_embeddings"] is True and d["hidden_size"] == 1024
    assert TextConfig.from_hf_dict(d) == QWEN35_08B
    assert TextConfig.from_hf_dict({"model_type": "qwen3_5", "text_config": d}) == QWEN35_08B


def test_transformers_builds_the_exact_08b_from_our_config():
    torch = pytest.importorskip("torch")
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(**QWEN35_08B.to_hf_dict())
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    assert sum(p.numel() for p in model.parameters()) == 752_393_024


def test_tiny_checkpoint_is_complete_and_generated_once(tiny_model):
    assert synthetic.is_complete(tiny_model.path)
    mtime = (tiny_model.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_model("tiny", progress=False)
    assert again.path == tiny_model.path
    assert (again.path / "model.safetensors").stat().st_mtime_ns == mtime
    weights = load_text_weights(tiny_model.path)
    assert sum(t.numel() for t in weights.values()) == TINY.num_params()
    assert "lm_head.weight" not in weights  # tied


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    torch = pytest.importorskip("torch")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d, seed in ((a, 1), (b, 1), (c, 2)):
        d.mkdir()
        synthetic.generate(TINY, d, seed)
    wa, wb, wc = (load_text_weights(d) for d in (a, b, c))
    key = "model.layers.0.linear_attn.in_proj_qkv.weight"
    assert torch.equal(wa[key], wb[key]) and not torch.equal(wa[key], wc[key])


def test_a_negative_seed_is_not_named_like_a_positive_one(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_CACHE", str(tmp_path))
    names = [synthetic.synthetic_dir("tiny", seed).name for seed in (1, -1, 0)]
    assert names == ["tiny-seed1-v1", "tiny-seed_minus1-v1", "tiny-seed0-v1"]


def test_half_written_checkpoint_is_not_loaded(tmp_path, monkeypatch):
    monkeypatch.setenv("LUCE_BENCH_CACHE", str(tmp_path))
    final = synthetic.synthetic_dir("tiny", 5)
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}")  # leftover of a killed run: no marker, no weights
    spec = resolve_model("tiny", seed=5, progress=False)
    assert synthetic.is_complete(spec.path)
    assert json.loads((spec.path / "config.json").read_text())["hidden_size"] == TINY.hidden_size
    assert not [p for p in final.parent.iterdir() if ".tmp-" in p.name]


def test_multimodal_prefixes_are_canonicalised():
    assert canonical_key("model.language_model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    assert canonical_key("model.visual.blocks.0.attn.qkv.weight") is None
    assert canonical_key("mtp.fc.weight") is None
    assert canonical_key("lm_head.weight") == "lm_head.weight"


def test_local_dir_and_errors(tmp_path, tiny_model, monkeypatch):
    spec = resolve_model(str(tiny_model.path))
    assert spec.config == TINY and not spec.synthetic
    with pytest.raises(UserError, match="no config.json"):
        read_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError, match="not Qwen3.5"):
        resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="not a synthetic size"):
        resolve_model("no such thing!")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="cannot get model 'someone/not-cached'"):
        resolve_model("someone/not-cached")
    assert set(SIZES) == {"synthetic-0.8b", "tiny"}


def test_the_weights_file_is_as_readable_as_the_config(tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        synthetic.generate(TINY, tmp_path, 0)
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}  # (safetensors wrote 0600: a shared cache)
