"""Turn `--model` (a synthetic size, a local HF directory or a hub id) into a local, checked `ModelSpec`.

Every checkpoint is checked before a run uses it (model/check.py): config.json's fields and the safetensors headers.
A broken one is a UserError naming the file, before a run directory exists and before any GPU setting changes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from luce_bench.backends.base import ModelSpec
from luce_bench.errors import UserError
from luce_bench.model.check import check_text_config, check_weights
from luce_bench.model.spec import SIZES, TextConfig
from luce_bench.model.synthetic import DEFAULT_SEED, ensure_synthetic

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def read_config(path: Path) -> TextConfig:
    """The text config of the checkpoint directory `path`; refuses models that are not Qwen3.5."""
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise UserError(f"{path} has no config.json: not an HF checkpoint directory")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"cannot read {cfg_file} ({exc})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{cfg_file} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{cfg_file} is not an HF config (expected a JSON object)")
    text = raw.get("text_config", raw) if isinstance(raw.get("text_config"), dict) else raw
    model_type = text.get("model_type", raw.get("model_type", ""))
    if not str(model_type).startswith("qwen3_5"):
        raise UserError(f"{path}: model_type {model_type!r} is not Qwen3.5 (qwen3_5 / qwen3_5_text)")
    check_text_config(raw, cfg_file)
    try:
        return TextConfig.from_hf_dict(raw)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{cfg_file}: not a valid Qwen3.5 text config ({exc})") from None


def resolve_model(name: str, seed: int = DEFAULT_SEED, progress: bool = True) -> ModelSpec:
    """Resolve `name`: "synthetic-0.8b" / "tiny" (generated once), a local directory, or a hub id."""
    if name in SIZES:
        path = ensure_synthetic(name, seed, progress=progress)
        try:
            check_weights(path, SIZES[name])
        except UserError as exc:
            raise UserError(f"{exc} (a damaged cached checkpoint: delete {path} and it is generated again)") from None
        return ModelSpec(name=name, path=path, config=SIZES[name], synthetic=True, seed=seed)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise UserError(f"--model {name}: expected a checkpoint directory, got a file")
        spec = ModelSpec(name=name, path=local.resolve(), config=read_config(local))
    elif _HUB_ID.match(name) and not name.startswith(("./", "../", "~")):
        path = _download(name)
        spec = ModelSpec(name=name, path=path, config=read_config(path))
    elif name.startswith(("/", "./", "../", "~")) or name.endswith("/"):
        raise UserError(f"--model {name}: no such directory")
    else:
        raise UserError(
            f"--model {name!r}: not a synthetic size ({', '.join(SIZES)}), an existing directory, or a hub id"
        )
    check_weights(spec.path, spec.config)
    return spec


def _download(repo_id: str) -> Path:
    """Fetch (or find in the HF cache) the config and safetensors of `repo_id`; honours HF_HUB_OFFLINE."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise UserError("a hub id needs huggingface_hub: pip install huggingface_hub") from exc
    try:
        return Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors"]))
    except Exception as exc:  # offline, missing repo, auth: one clear line
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"cannot get model {repo_id!r} from the hub ({type(exc).__name__}: {reason})") from exc
