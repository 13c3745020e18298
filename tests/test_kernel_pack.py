"""The megakernel's weight repacking (luce_bench.kernels.pack).

Row order of the fused matrices, the transposed down_proj, and the small-parameter blob offsets, checked on one GDN and
one attention layer of real 0.8B shapes.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from luce_bench.kernels import pack  # noqa: E402


def _layer_sd(layer: int, attn: bool) -> dict:
    g = torch.Generator().manual_seed(layer)
    r = lambda *s: torch.randn(*s, generator=g).to(torch.bfloat16)  # noqa: E731
    p = f"model.layers.{layer}."
    sd = {
        p + "input_layernorm.weight": r(1024),
        p + "post_attention_layernorm.weight": r(1024),
        p + "mlp.gate_proj.weight": r(3584, 1024),
        p + "mlp.up_proj.weight": r(3584, 1024),
        p + "mlp.down_proj.weight": r(1024, 3584),
    }
    if attn:
        a = p + "self_attn."
        sd.update(
            {
                a + "q_proj.weight": r(4096, 1024),
                a + "k_proj.weight": r(512, 1024),
                a + "v_proj.weight": r(512, 1024),
                a + "o_proj.weight": r(1024, 2048),
                a + "q_norm.weight": r(256),
                a + "k_norm.weight": r(256),
            }
        )
    else:
        q = p + "linear_attn."
        sd.update(
            {
                q + "in_proj_qkv.weight": r(6144, 1024),
                q + "in_proj_z.weight": r(2048, 1024),
                q + "in_proj_b.weight": r(16, 1024),
                q + "in_proj_a.weight": r(16, 1024),
                q + "conv1d.weight": r(6144, 1, 4),
                q + "A_log": r(16),
                q + "dt_bias": r(16),
                q + "norm.weight": r(128),
                q + "out_proj.weight": r(1024, 2048),
            }
        )
    return sd


def test_gdn_layer_matrices():
    sd = _layer_sd(0, attn=False)
    proj, outp, gate_up, down_t = pack.layer_matrices(sd, 0)
    p = "model.layers.0."
    assert proj.shape == (8224, 1024) and outp.shape == (2048, 1024)  # split-K layout: row k = input column k
    assert torch.equal(outp[9], sd[p + "linear_attn.out_proj.weight"][:, 9])
    la = p + "linear_attn."
    for h in (0, 5, 15):  # head-major: [q_h | k_h | v_h | z_h | b_h | a_h], 514 rows per head
        blk = proj[514 * h : 514 * (h + 1)]
        assert torch.equal(blk[:128], sd[la + "in_proj_qkv.weight"][128 * h : 128 * (h + 1)])
        assert torch.equal(blk[128:256], sd[la + "in_proj_qkv.weight"][2048 + 128 * h : 2048 + 128 * (h + 1)])
        assert torch.equal(blk[256:384], sd[la + "in_proj_qkv.weight"][4096 + 128 * h : 4096 + 128 * (h + 1)])
        assert torch.equal(blk[384:512], sd[la + "in_proj_z.weight"][128 * h : 128 * (h + 1)])
        assert torch.equal(blk[512], sd[la + "in_proj_b.weight"][h])
        assert torch.equal(blk[513], sd[la + "in_proj_a.weight"][h])
    assert gate_up.shape == (3584, 2048)
    assert torch.equal(gate_up[7, :1024], sd[p + "mlp.gate_proj.weight"][7])
    assert torch.equal(gate_up[7, 1024:], sd[p + "mlp.up_proj.weight"][7])
    assert down_t.shape == (3584, 1024) and torch.equal(down_t[5], sd[p + "mlp.down_proj.weight"][:, 5])


def test_attention_layer_matrices():
    sd = _layer_sd(3, attn=True)
    proj, outp, _, _ = pack.layer_matrices(sd, 3)
    a = "model.layers.3.self_attn."
    assert proj.shape == (5120, 1024)
    for g in range(2):  # by KV group: [q_proj rows of its 4 heads | k_g | v_g]
        blk = proj[2560 * g : 2560 * (g + 1)]
        assert torch.equal(blk[:2048], sd[a + "q_proj.weight"][2048 * g : 2048 * (g + 1)])
        assert torch.equal(blk[2048:2304], sd[a + "k_proj.weight"][256 * g : 256 * (g + 1)])
        assert torch.equal(blk[2304:], sd[a + "v_proj.weight"][256 * g : 256 * (g + 1)])
    assert torch.equal(outp, sd[a + "o_proj.weight"])


def test_small_param_blob():
    class Lay:
        sp_stride = 26784
        sblob_floats = 24 * 26784 + 1024

    sd = {"model.norm.weight": torch.full((1024,), 0.5)}
    for i in range(24):
        sd.update({k: v for k, v in _layer_sd(i, attn=i % 4 == 3).items() if v.dim() != 2 or "conv1d" in k})
    out = pack.pack_small(sd, Lay)
    f = torch.float32
    assert torch.allclose(out[:1024], 1 + sd["model.layers.0.input_layernorm.weight"].to(f))
    g = "model.layers.1.linear_attn."
    base = 26784
    assert torch.allclose(out[base + 2048 : base + 2048 + 4], sd[g + "conv1d.weight"][0, 0].to(f))  # channel 0 taps
    assert torch.allclose(out[base + 26624 : base + 26640], -torch.exp(sd[g + "A_log"].to(f)))
    assert torch.allclose(out[base + 26656 : base + 26784], sd[g + "norm.weight"].to(f))  # plain weight, no +1
    a = "model.layers.3.self_attn."
    assert torch.allclose(out[3 * base + 2304 : 3 * base + 2560], 1 + sd[a + "k_norm.weight"].to(f))
    assert torch.allclose(out[24 * base :], torch.full((1024,), 1.5))


def test_small_param_offsets_come_from_the_abi_header():
    """pack.py reads the offsets from cuda/luce_mk.h: the enum parses to the documented layout."""
    from luce_bench.kernels import abi

    assert abi.small_params() == {
        "LN1": 0,
        "LN2": 1024,
        "CONV": 2048,
        "NEGA": 26624,
        "DTB": 26640,
        "GNW": 26656,
        "QN": 2048,
        "KN": 2304,
        "STRIDE": 26784,
    }
    assert abi.debug_flags() == {"NO_MATH": 1, "NO_MIXING": 2, "NO_BARRIERS": 4, "NO_MLP_ADDS": 8}


def test_small_param_blob_refuses_a_foreign_stride():
    class Lay:
        sp_stride = 26000
        sblob_floats = 24 * 26000 + 1024

    with pytest.raises(AssertionError, match="STRIDE"):
        pack.pack_small({}, Lay)
