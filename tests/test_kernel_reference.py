"""The fp32 token-by-token reference (the megakernel's oracle) agrees with HF.

luce_bench.kernels.reference agrees with HF transformers in fp32 on the tiny synthetic Qwen3.5 (3 GDN + 1 attention
layer), at every position.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


def test_reference_matches_transformers_fp32(tmp_path):
    from transformers import AutoModelForCausalLM

    from luce_bench.backends.hf_paths import helpers_for
    from luce_bench.kernels.reference import Reference
    from luce_bench.model.spec import TINY
    from luce_bench.model.synthetic import generate
    from luce_bench.model.weights import load_text_weights

    generate(TINY, tmp_path, seed=3)
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    ids = torch.randint(0, TINY.vocab_size, (1, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad(), helpers_for(model, "cpu"):  # fla's kernels, where installed, run on CUDA only
        want = model(ids).logits[0]
    ref = Reference(load_text_weights(tmp_path), TINY)
    got = torch.stack([ref.step(int(t)) for t in ids[0]])
    rel = (got - want).norm(dim=-1) / want.norm(dim=-1)
    assert rel.max().item() < 1e-4, rel
    assert torch.equal(got.argmax(-1), want.argmax(-1))
