"""The HF backend on the tiny synthetic model, on CPU: greedy tokens equal transformers' own generate()."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from luce_bench.backends.hf_paths import helpers_for  # noqa: E402 - after the skips

PROMPT = [11, 22, 33, 44, 55, 66, 77, 88, 99, 5]


def test_greedy_tokens_equal_generate(hf_tiny):
    hf_tiny.reset()
    first = hf_tiny.prefill(PROMPT)
    rest = hf_tiny.decode(31)
    ours = list(first.tokens + rest.tokens)
    with helpers_for(hf_tiny._model, "cpu"):
        ref = hf_tiny._model.generate(torch.tensor([PROMPT]), max_new_tokens=32, do_sample=False, min_new_tokens=32)
    assert ours == ref[0, len(PROMPT) :].tolist()
    assert len(set(ours)) > 8, "synthetic weights must not give degenerate (constant) greedy output"
    assert first.elapsed_s > 0 and rest.elapsed_s > 0


def test_generate_from_a_seed_token_equals_transformers_generate(hf_tiny):
    """A tg iteration's steps (Backend.generate's default: prefill of the seed, then decode): n tokens from one id."""
    hf_tiny.reset()
    got = hf_tiny.generate(PROMPT[0], 12)
    with helpers_for(hf_tiny._model, "cpu"):
        ref = hf_tiny._model.generate(torch.tensor([PROMPT[:1]]), max_new_tokens=12, do_sample=False, min_new_tokens=12)
    assert list(got.tokens) == ref[0, 1:].tolist() and got.elapsed_s > 0
    hf_tiny.reset()
    assert hf_tiny.generate(PROMPT[0], 1).tokens == got.tokens[:1]


def test_logits_and_teacher_forcing(hf_tiny):
    hf_tiny.reset()
    first = hf_tiny.prefill(PROMPT, logits=True)
    free = hf_tiny.decode(8, logits=True)
    assert first.logits.shape == (1, 1024) and free.logits.shape == (8, 1024)
    assert first.tokens[0] == int(first.logits[0].argmax())
    assert list(free.tokens) == [int(i) for i in free.logits.argmax(axis=1)]
    # feeding the model its own greedy tokens reproduces the free-running logits exactly
    hf_tiny.reset()
    hf_tiny.prefill(PROMPT)
    forced = hf_tiny.decode(8, logits=True, inputs=[first.tokens[0], *free.tokens[:7]])
    np.testing.assert_array_equal(forced.logits, free.logits)
    # a full forward pass over prompt + continuation gives the same last logits (cache is right)
    seq = torch.tensor([PROMPT + [first.tokens[0], *free.tokens[:7]]])
    with helpers_for(hf_tiny._model, "cpu"):
        full = hf_tiny._model(seq).logits[0, -1].float().detach().numpy()
    np.testing.assert_allclose(full, free.logits[-1], rtol=0, atol=0.05)


def test_reset_starts_a_new_sequence(hf_tiny):
    hf_tiny.reset()
    a = hf_tiny.prefill(PROMPT).tokens + hf_tiny.decode(4).tokens
    hf_tiny.reset()
    b = hf_tiny.prefill(PROMPT).tokens + hf_tiny.decode(4).tokens
    assert a == b


def test_info_records_the_gdn_path(hf_tiny):
    info = hf_tiny.info()
    assert info["gdn_path"] in ("pure-torch fallback", "fla kernels")
    assert info["conv1d_path"] in ("pure-torch fallback", "causal-conv1d kernels")
    assert info["device"] == "cpu" and info["dtype"] == "bfloat16"
    assert info["setup"].startswith("eager transformers")


def test_kernel_paths_are_read_from_transformers_binding(hf_tiny):
    """A kernel is bound to its fast package exactly when that package imports (transformers' fallback rule)."""
    import importlib.util

    from luce_bench.backends.hf_paths import bound_kernels, paths

    bound = bound_kernels(hf_tiny._model)
    assert set(bound) == {
        "chunk_gated_delta_rule",
        "fused_recurrent_gated_delta_rule",
        "causal_conv1d_fn",
        "causal_conv1d_update",
    }
    for kernel, package in [("chunk_gated_delta_rule", "fla"), ("causal_conv1d_update", "causal_conv1d")]:
        assert (bound[kernel] == "torch") == (importlib.util.find_spec(package) is None), bound
        if bound[kernel] != "torch":
            assert bound[kernel].startswith(package)
    info = paths(hf_tiny._model, set())  # nothing logged: a second model in a process sees no warning
    assert info["kernel_paths_source"] == "bound at import"
    assert (info["gdn_path"] == "pure-torch fallback") == (bound["chunk_gated_delta_rule"] == "torch")
    assert sorted(k for k, v in bound.items() if v == "torch") == info["torch_fallbacks"]


def test_a_cpu_model_runs_the_torch_fallbacks_of_helpers_bound_to_a_cuda_only_package(monkeypatch):
    """As on a GPU machine with fla installed: transformers binds its Triton kernel, which fails for CPU tensors."""
    import sys
    import types

    from transformers.integrations import use_kernel_func_from_hub_with_fallback

    from luce_bench.backends.hf_paths import paths

    fast = types.ModuleType("fake_fla")

    def chunk_gated_delta_rule(x, g=None):
        raise ValueError("Pointer argument (at 0) cannot be accessed from Triton (cpu tensor?)")

    fast.chunk_gated_delta_rule = chunk_gated_delta_rule
    monkeypatch.setitem(sys.modules, "fake_fla", fast)
    modeling = types.ModuleType("fake_modeling")
    monkeypatch.setitem(sys.modules, "fake_modeling", modeling)

    def torch_chunk_gated_delta_rule(x, g=None):
        return ("torch", x, g)

    helper = use_kernel_func_from_hub_with_fallback("chunk_gated_delta_rule", "fake_fla")(torch_chunk_gated_delta_rule)
    modeling.torch_chunk_gated_delta_rule = helper
    model = type("FakeModel", (), {"__module__": "fake_modeling"})()

    with pytest.raises(ValueError, match="Triton"):
        modeling.torch_chunk_gated_delta_rule(1, g=2)
    with helpers_for(model, "cuda"):
        assert modeling.torch_chunk_gated_delta_rule is helper
    with helpers_for(model, "cpu"):  # the keyword the fallback does not take is dropped, as transformers does
        assert modeling.torch_chunk_gated_delta_rule(1, g=2, cu_seqlens=None) == ("torch", 1, 2)
    assert modeling.torch_chunk_gated_delta_rule is helper  # put back
    cpu = paths(model, set(), "cpu")  # what meta.json says a CPU model ran
    assert (cpu["gdn_path"], cpu["conv1d_path"]) == ("pure-torch fallback", "pure-torch fallback")


def test_kernel_paths_fall_back_to_the_log_when_the_binding_is_unreadable():
    from luce_bench.backends.hf_paths import paths

    info = paths(object(), {"chunk_gated_delta_rule"})
    assert info["kernel_paths_source"] == "from transformers' log" and "kernel_modules" not in info
    assert (info["gdn_path"], info["conv1d_path"]) == ("pure-torch fallback", "causal-conv1d kernels")
    assert info["torch_fallbacks"] == ["chunk_gated_delta_rule"]


def test_a_fallback_warning_names_only_the_packages_that_are_missing():
    from luce_bench.backends.hf_paths import packages_for

    # the H100 run of 2026-12-05: fla-core installed, causal-conv1d not (it needs a CUDA build)
    assert packages_for(["causal_conv1d_fn", "causal_conv1d_update"]) == ["causal-conv1d"]
    assert packages_for({"fused_recurrent_gated_delta_rule"}) == ["fla-core"]
    assert packages_for(["chunk_gated_delta_rule", "causal_conv1d_fn"]) == ["fla-core", "causal-conv1d"]
    assert packages_for([]) == []
    from luce_bench.backends.hf_paths import fallback_warning

    assert fallback_warning(["causal_conv1d_fn", "causal_conv1d_update"]) == (  # not "GDN layers ran on ...": fla ran
        "the GDN layers' short convolution ran on transformers' pure-torch fallbacks (causal_conv1d_fn, "
        "causal_conv1d_update): install causal-conv1d for the fast path"
    )
    assert fallback_warning(["chunk_gated_delta_rule"]).startswith("the GDN layers' delta rule ran on")
    assert fallback_warning(["chunk_gated_delta_rule", "causal_conv1d_fn"]).startswith(
        "the GDN layers (delta rule and short convolution) ran on"
    )
