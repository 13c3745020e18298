"""GGUF export: names, types, keys and the value transforms of qwen35.md §4, on the tiny synthetic model."""

from __future__ import annotations

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")

from luce_bench.errors import UserError  # noqa: E402
from luce_bench.files import cache_dir  # noqa: E402
from luce_bench.gguf_export import EXPORTER_VERSION, ensure_gguf, gguf_path, source_hash, tensor_items  # noqa: E402
from luce_bench.model.spec import QWEN35_08B, TINY  # noqa: E402
from luce_bench.model.synthetic import ensure_synthetic  # noqa: E402
from luce_bench.model.weights import load_text_weights  # noqa: E402


@pytest.fixture(scope="module")
def tiny_dir():
    return ensure_synthetic("tiny", 0, progress=False)


def _read(path):
    r = gguf.GGUFReader(str(path))
    fields = {k: f.contents() for k, f in r.fields.items()}
    tensors = {t.name: t for t in r.tensors}
    return fields, tensors


def _data(t):
    if t.tensor_type == gguf.GGMLQuantizationType.BF16:
        u = np.asarray(t.data).view(np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))
    return np.asarray(t.data, dtype=np.float32).reshape(tuple(reversed([int(d) for d in t.shape])))


def test_tensor_list_of_08b_matches_llamacpp_names():
    names = [it.name for it in tensor_items(QWEN35_08B)]
    assert len(names) == 1 + 18 * 14 + 6 * 11 + 1  # embed, GDN layers, attention layers, final norm (tied: no output)
    assert "output.weight" not in names
    assert {
        "blk.3.attn_q.weight",
        "blk.3.attn_q_norm.weight",
        "blk.0.ssm_a",
        "blk.0.ssm_dt.bias",
        "blk.0.ssm_conv1d.weight",
        "blk.23.post_attention_norm.weight",
    } <= set(names)


def test_export_keys_types_and_transforms(tiny_dir):
    path = ensure_gguf(tiny_dir, TINY, "bf16", progress=False)
    fields, tensors = _read(path)
    assert fields["general.architecture"] == "qwen35"
    expect = {
        "qwen35.block_count": 4,
        "qwen35.embedding_length": 128,
        "qwen35.feed_forward_length": 256,
        "qwen35.attention.head_count": 4,
        "qwen35.attention.head_count_kv": 2,
        "qwen35.attention.key_length": 64,
        "qwen35.attention.value_length": 64,
        "qwen35.rope.dimension_count": 16,
        "qwen35.ssm.conv_kernel": 4,
        "qwen35.ssm.state_size": 32,
        "qwen35.ssm.group_count": 4,
        "qwen35.ssm.time_step_rank": 4,
        "qwen35.ssm.inner_size": 128,
        "qwen35.full_attention_interval": 4,
        "qwen35.vocab_size": 1024,
        "tokenizer.ggml.model": "none",
        "luce_bench.exporter_version": EXPORTER_VERSION,
    }
    for k, v in expect.items():
        assert fields[k] == v, k
    assert fields["qwen35.rope.freq_base"] == pytest.approx(1e7)
    assert fields["qwen35.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-6)
    assert list(fields["qwen35.rope.dimension_sections"]) == [11, 11, 10, 0]
    assert len(tensors) == len(tensor_items(TINY))

    sd = load_text_weights(tiny_dir)
    f32 = gguf.GGMLQuantizationType.F32
    # matrices: BF16, bit-exact copies, GGUF ne = reversed torch shape
    t = tensors["blk.0.attn_qkv.weight"]
    assert t.tensor_type == gguf.GGMLQuantizationType.BF16 and [int(d) for d in t.shape] == [128, 384]
    np.testing.assert_array_equal(_data(t), sd["model.layers.0.linear_attn.in_proj_qkv.weight"].float().numpy())
    # zero-centred norms get +1 (F32)
    t = tensors["blk.3.attn_q_norm.weight"]
    assert t.tensor_type == f32
    q_norm = sd["model.layers.3.self_attn.q_norm.weight"].float().numpy()
    np.testing.assert_allclose(_data(t), q_norm + 1, rtol=0, atol=0)
    np.testing.assert_allclose(_data(tensors["output_norm.weight"]), sd["model.norm.weight"].float().numpy() + 1)
    # the GDN gated norm keeps its plain weight
    gated = sd["model.layers.1.linear_attn.norm.weight"].float().numpy()
    np.testing.assert_array_equal(_data(tensors["blk.1.ssm_norm.weight"]), gated)
    # A_log -> -exp(A_log); dt_bias renamed; conv squeezed to ne {4, C}
    a_log = sd["model.layers.2.linear_attn.A_log"].float()
    np.testing.assert_allclose(_data(tensors["blk.2.ssm_a"]), (-torch.exp(a_log)).numpy(), rtol=1e-7)
    dt_bias = sd["model.layers.2.linear_attn.dt_bias"].float().numpy()
    np.testing.assert_array_equal(_data(tensors["blk.2.ssm_dt.bias"]), dt_bias)
    t = tensors["blk.0.ssm_conv1d.weight"]
    assert t.tensor_type == f32 and [int(d) for d in t.shape] == [4, 384]
    np.testing.assert_array_equal(_data(t), sd["model.layers.0.linear_attn.conv1d.weight"].float().numpy()[:, 0, :])


@pytest.mark.parametrize("ftype,qtype", [("f16", "F16"), ("q8_0", "Q8_0")])
def test_other_types(tiny_dir, ftype, qtype):
    path = ensure_gguf(tiny_dir, TINY, ftype, progress=False)
    assert path.name.startswith(f"model-{ftype}-")
    fields, tensors = _read(path)
    assert tensors["blk.0.ffn_up.weight"].tensor_type.name == qtype
    assert tensors["blk.0.attn_norm.weight"].tensor_type.name == "F32"


def test_cache_reuse_hash_and_atomic(tiny_dir):
    p1 = ensure_gguf(tiny_dir, TINY, "bf16", progress=False)
    mtime = p1.stat().st_mtime_ns
    p2 = ensure_gguf(tiny_dir, TINY, "bf16", progress=False)
    assert p1 == p2 and p2.stat().st_mtime_ns == mtime  # cached, not rewritten
    h = source_hash(tiny_dir)
    assert p1 == cache_dir() / "gguf" / h[:16] / f"model-bf16-{h[:16]}.gguf"
    assert not [f for f in p1.parent.iterdir() if f.name.endswith(".tmp")]  # no temp leftovers
    with pytest.raises(UserError):
        ensure_gguf(tiny_dir, TINY, "q4_k", progress=False)


@pytest.fixture
def mine(tiny_dir, tmp_path, monkeypatch):
    """A user's own model directory (a copy of the tiny checkpoint), with a cache of its own."""
    mine = tmp_path / "my-model"
    mine.mkdir()
    for f in ("config.json", "model.safetensors"):
        (mine / f).write_bytes((tiny_dir / f).read_bytes())
    monkeypatch.setenv("LUCE_BENCH_CACHE", str(tmp_path / "cache"))
    return mine


def test_the_users_model_directory_is_never_written(mine, tmp_path):
    # a real checkpoint's bf16 export is ~1.6 GB: it goes to the cache, not beside the user's files
    path = ensure_gguf(mine, TINY, "bf16", progress=False)
    assert path.is_file() and path.is_relative_to(tmp_path / "cache")
    assert sorted(p.name for p in mine.iterdir()) == ["config.json", "model.safetensors"]


def test_an_export_an_earlier_version_left_in_the_model_directory_is_reused(mine):
    made = ensure_gguf(mine, TINY, "bf16", progress=False)
    old = mine / "gguf" / made.name
    old.parent.mkdir()
    made.rename(old)
    assert ensure_gguf(mine, TINY, "bf16", progress=False) == old == gguf_path(mine, "bf16", source_hash(mine))
    assert not made.exists()  # not exported again


_EXPORT_IN_A_CHILD = """
import sys
from pathlib import Path
from luce_bench.errors import WriteError
from luce_bench.gguf_export import ensure_gguf
from luce_bench.model.spec import TINY
try:
    ensure_gguf(Path(sys.argv[1]), TINY, "bf16", progress=False)
except WriteError as exc:
    print(exc.exit_code, exc)
"""


def _small_files_only() -> None:  # in the child: a 64 KB file-size limit, a short write instead of SIGXFSZ
    import resource
    import signal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


@pytest.mark.tries("fault", "a GGUF export that cannot be written (the cache a file, a file-size limit)")
@pytest.mark.parametrize("how", ["cache-is-a-file", "file-size-limit"])
def test_an_export_that_cannot_be_written_is_a_write_error_naming_the_file(mine, tmp_path, how):
    import os
    import subprocess
    import sys

    if how == "cache-is-a-file":
        (tmp_path / "cache").write_text("")  # LUCE_BENCH_CACHE names a file: no folder can be made in it
    child = subprocess.run(  # (the limit is the child's alone: this process and its other tests keep theirs)
        [sys.executable, "-c", _EXPORT_IN_A_CHILD, str(mine)],
        env=os.environ,  # LUCE_BENCH_CACHE from the fixture
        preexec_fn=_small_files_only if how == "file-size-limit" else None,
        capture_output=True,
        text=True,
        timeout=120,
    )
    said = child.stdout.strip()
    assert child.returncode == 0 and said.startswith("4 cannot write the GGUF export "), child.stdout + child.stderr
    assert "model-bf16-" in said and len(said.splitlines()) == 1
    assert ("Not a directory" in said) == (how == "cache-is-a-file")
    if how == "file-size-limit":  # nothing half-written is left under the export's name
        assert not list((tmp_path / "cache").rglob("*.gguf"))
