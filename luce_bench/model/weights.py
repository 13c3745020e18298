"""Read text-model weights from an HF-layout checkpoint (safetensors), with canonical key names.

Canonical keys are those of transformers' `Qwen3_5ForCausalLM` state dict (`model.embed_tokens.weight`,
`model.layers.{i}.…`, `model.norm.weight`). Hub checkpoints of Qwen3.5 are the multimodal wrapper whose text weights
carry `model.language_model.`; vision (`model.visual.`) and MTP (`mtp.`) weights are skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_PREFIXES = ("model.language_model.", "language_model.model.", "language_model.")
_SKIP = ("model.visual.", "visual.", "mtp.")


def canonical_key(key: str) -> str | None:
    """Map a stored key to its canonical text-model key, or None for weights the text model does not use."""
    if key.startswith(_SKIP):
        return None
    for p in _PREFIXES:
        if key.startswith(p):
            return "model." + key[len(p) :]
    if key.startswith("model.") or key == "lm_head.weight":
        return key
    return None


def safetensors_files(path: Path) -> list[Path]:
    """The safetensors shards of a checkpoint directory, in index order."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [path / n for n in names]
    single = path / "model.safetensors"
    if single.is_file():
        return [single]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        from luce_bench.errors import UserError

        raise UserError(f"no .safetensors weights in {path}")
    return files


def load_text_weights(path: Path) -> dict[str, Any]:
    """All text-model tensors of the checkpoint at `path` as CPU torch tensors, keyed canonically.

    `lm_head.weight` is present only if the checkpoint stores an untied head.
    """
    from safetensors import safe_open

    out: dict[str, Any] = {}
    for f in safetensors_files(Path(path)):
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                name = canonical_key(key)
                if name is not None:
                    out[name] = st.get_tensor(key)
    return out
