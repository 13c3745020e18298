"""Qwen3.5 text-model configuration: the exact 0.8B shapes and a tiny test size.

The values follow `qwen35.md` §1.1. `Qwen3_5TextConfig()` with no arguments is a much larger model (the "defaults
trap"), so `to_hf_dict()` always writes every field explicitly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


def _layer_types(num_layers: int, interval: int) -> tuple[str, ...]:
    # layer i is full attention iff (i + 1) % interval == 0 (transformers' derivation)
    return tuple("full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(num_layers))


@dataclass(frozen=True)
class TextConfig:
    """Shapes and constants of one Qwen3.5 text model (the fields of HF's `text_config`)."""

    hidden_size: int = 1024
    num_hidden_layers: int = 24
    intermediate_size: int = 3584
    vocab_size: int = 248320
    num_attention_heads: int = 8
    num_key_value_heads: int = 2
    head_dim: int = 256
    linear_num_key_heads: int = 16
    linear_num_value_heads: int = 16
    linear_key_head_dim: int = 128
    linear_value_head_dim: int = 128
    linear_conv_kernel_dim: int = 4
    full_attention_interval: int = 4
    rope_theta: float = 1e7
    partial_rotary_factor: float = 0.25
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 262144
    tie_word_embeddings: bool = True
    layer_types: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.layer_types:
            object.__setattr__(self, "layer_types", _layer_types(self.num_hidden_layers, self.full_attention_interval))
        if len(self.layer_types) != self.num_hidden_layers:
            raise ValueError("layer_types must have one entry per layer")

    @property
    def rotary_dim(self) -> int:
        """Number of rotated dims per attention head (partial RoPE)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def full_attention_layers(self) -> list[int]:
        """Indices of the gated full-attention layers."""
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    @property
    def conv_dim(self) -> int:
        """Channels of the GDN depthwise conv: q, k and v of every head."""
        return (
            2 * self.linear_num_key_heads * self.linear_key_head_dim
            + self.linear_num_value_heads * self.linear_value_head_dim
        )

    def num_params(self) -> int:
        """Parameter count of the text model, tied embedding counted once (752,393,024 for 0.8B)."""
        h, i = self.hidden_size, self.intermediate_size
        mlp = 3 * h * i
        norms = 2 * h
        attn = (
            h * 2 * self.num_attention_heads * self.head_dim
            + 2 * h * self.num_key_value_heads * self.head_dim
            + self.num_attention_heads * self.head_dim * h
            + 2 * self.head_dim
        )
        vdim = self.linear_num_value_heads * self.linear_value_head_dim
        gdn = (
            h * self.conv_dim
            + h * vdim
            + 2 * h * self.linear_num_value_heads
            + self.conv_dim * self.linear_conv_kernel_dim
            + 2 * self.linear_num_value_heads
            + self.linear_value_head_dim
            + vdim * h
        )
        n_full = len(self.full_attention_layers)
        n_lin = self.num_hidden_layers - n_full
        embed = self.vocab_size * h
        lm_head = 0 if self.tie_word_embeddings else embed
        return n_full * (attn + mlp + norms) + n_lin * (gdn + mlp + norms) + embed + lm_head + h

    def to_hf_dict(self) -> dict[str, Any]:
        """A complete `config.json` for `Qwen3_5ForCausalLM` (text-only, model_type `qwen3_5_text`)."""
        d = asdict(self)
        d["layer_types"] = list(self.layer_types)
        theta = d.pop("rope_theta")
        prf = d.pop("partial_rotary_factor")
        d.update(
            architectures=["Qwen3_5ForCausalLM"],
            model_type="qwen3_5_text",
            hidden_act="silu",
            attention_bias=False,
            attention_dropout=0.0,
            attn_output_gate=True,
            initializer_range=0.02,
            dtype="bfloat16",
            use_cache=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": theta,
                "partial_rotary_factor": prf,
                "mrope_section": [11, 11, 10],
                "mrope_interleaved": True,
            },
        )
        return d

    @classmethod
    def from_hf_dict(cls, cfg: dict[str, Any]) -> TextConfig:
        """Read a `config.json` dict: a text config, or the multimodal wrapper holding `text_config`."""
        if "text_config" in cfg and isinstance(cfg["text_config"], dict):
            cfg = cfg["text_config"]
        rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
        kw: dict[str, Any] = {}
        for name in cls.__dataclass_fields__:
            if name in cfg and name not in ("rope_theta", "partial_rotary_factor", "layer_types"):
                kw[name] = cfg[name]
        kw["rope_theta"] = float(rope.get("rope_theta", cfg.get("rope_theta", 1e7)))
        kw["partial_rotary_factor"] = float(rope.get("partial_rotary_factor", cfg.get("partial_rotary_factor", 0.25)))
        if cfg.get("layer_types"):
            kw["layer_types"] = tuple(cfg["layer_types"])
        return cls(**kw)


QWEN35_08B = TextConfig()

# Same architecture, tiny shapes: 4 layers (3 GDN + 1 full attention), for CPU tests and CI.
TINY = TextConfig(
    hidden_size=128,
    num_hidden_layers=4,
    intermediate_size=256,
    vocab_size=1024,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    linear_num_key_heads=4,
    linear_num_value_heads=4,
    linear_key_head_dim=32,
    linear_value_head_dim=32,
    max_position_embeddings=4096,
)

SIZES: dict[str, TextConfig] = {"synthetic-0.8b": QWEN35_08B, "tiny": TINY}
