"""Benchmark configuration: YAML (`configs/default.yaml`) validated into frozen dataclasses, then CLI overrides.

Every error names the offending key and value, e.g. `config: sweep.limits[2]: expected watts or a percentage, got 'x'`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from luce_bench.errors import UserError

_TEST_RE = re.compile(r"^(pp|tg)(\d+)$")
_LIMIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|w|W)?\s*$")


@dataclass(frozen=True)
class TestSpec:
    """One llama-bench style test: `pp512` = prompt processing of 512 tokens, `tg128` = 128 generated tokens."""

    kind: str
    n: int

    @property
    def name(self) -> str:
        """llama-bench's name of the test, e.g. "pp520"."""
        return f"{self.kind}{self.n}"

    @classmethod
    def parse(cls, text: str) -> TestSpec:
        """Parse "pp520" / "tg128"."""
        m = _TEST_RE.match(text.strip())
        if not m or not 1 <= int(m.group(2)) <= 131072:
            raise UserError(f"bad test {text!r}: expected pp<N> or tg<N> with 1 <= N <= 131072, e.g. pp520,tg128")
        return cls(m.group(1), int(m.group(2)))


@dataclass(frozen=True)
class SamplerConfig:
    """Background power/clock sampler."""

    period_s: float = 0.1


@dataclass(frozen=True)
class GpuConfig:
    """Which GPU, and whether to simulate it."""

    index: int = 0
    fake: bool = False
    fake_preset: str = "rtx3090"


@dataclass(frozen=True)
class CooldownConfig:
    """Cool down between tests until within `target_delta_c` of the start temperature, at most `max_s`."""

    max_s: float = 30.0
    target_delta_c: float = 3.0


@dataclass(frozen=True)
class SweepConfig:
    """Power-limit sweep (`luce-bench sweep`)."""

    limits: tuple[str, ...] = ("420", "300", "220", "150")
    order: str = "descending"
    shuffle_seed: int | None = None
    clamp: bool = False
    settle_s: float = 3.0
    idle_s: float = 10.0
    sweet_spot_min_speed: float = 0.95


@dataclass(frozen=True)
class BenchConfig:
    """Everything a compare/bench/sweep run needs."""

    model: str = "auto"
    model_seed: int = 0
    device: str = "auto"
    backends: tuple[str, ...] = ("hf",)
    tests: tuple[str, ...] = ("pp520", "tg128")
    reps: int = 5
    warmup_s: float = 3.0
    window_s: float = 10.0
    rep_gap_max_s: float = 1.0
    prompt_seed: int = 1234
    output_dir: str = "results/runs"
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    gpu: GpuConfig = field(default_factory=GpuConfig)
    cooldown: CooldownConfig = field(default_factory=CooldownConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def test_specs(self) -> list[TestSpec]:
        """Parsed `tests`."""
        return [TestSpec.parse(t) for t in self.tests]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for meta.json)."""
        return dataclasses.asdict(self)


_RANGES: dict[str, tuple[float, float]] = {
    "reps": (1, 1000), "warmup_s": (0, 3600), "window_s": (0.001, 3600), "rep_gap_max_s": (0, 60),
    "sampler.period_s": (0.01, 10), "gpu.index": (0, 63), "cooldown.max_s": (0, 3600),
    "cooldown.target_delta_c": (0, 100), "sweep.settle_s": (0, 600), "sweep.idle_s": (0, 600),
    "sweep.sweet_spot_min_speed": (0.01, 1.0),
}
_CHOICES: dict[str, tuple[str, ...]] = {"sweep.order": ("descending", "ascending", "shuffle"),
                                        "device": ("auto", "cpu", "cuda"), "gpu.fake_preset": ("rtx3090", "h100-sxm")}
_CUDA_INDEX = re.compile(r"^cuda:\d+$")


def _coerce(path: str, value: Any, hint: Any) -> Any:
    origin = get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path + ".")
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config: {path}: expected a list, got {value!r}")
        return tuple(_coerce(f"{path}[{i}]", v, str) for i, v in enumerate(value))
    args = [a for a in get_args(hint) if a is not type(None)]
    if value is None and type(None) in get_args(hint):
        return None
    target = args[0] if args else hint
    if target is bool:
        if not isinstance(value, bool):
            raise UserError(f"config: {path}: expected true or false, got {value!r}")
        return value
    if target is str:
        if isinstance(value, (dict, list)):
            raise UserError(f"config: {path}: expected a string, got {value!r}")
        return str(value)
    if target in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (target is int and not float(value).is_integer()):
            raise UserError(f"config: {path}: expected {'an integer' if target is int else 'a number'}, got {value!r}")
        return target(value)
    return value


def _build(cls: Any, data: Any, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise UserError(f"config: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    for key in data:
        if key not in names:
            raise UserError(f"config: unknown key '{prefix}{key}'; known: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(prefix + k, v, hints[k]) for k, v in data.items()}
    return cls(**kwargs)


def validate(cfg: BenchConfig) -> BenchConfig:
    """Range and choice checks; returns `cfg` unchanged or raises UserError naming the key."""
    flat = _flatten(cfg)
    for key, (lo, hi) in _RANGES.items():
        v = flat[key]
        if not lo <= v <= hi:
            raise UserError(f"config: {key} = {v} is out of range [{lo:g}, {hi:g}]")
    for key, options in _CHOICES.items():
        if flat[key] not in options and not (key == "device" and _CUDA_INDEX.match(str(flat[key]))):
            raise UserError(f"config: {key} = {flat[key]!r}; expected one of {', '.join(options)}")
    if not cfg.model.strip():
        raise UserError("config: model is empty")
    if not cfg.backends:
        raise UserError("config: backends is empty")
    if not cfg.tests:
        raise UserError("config: tests is empty")
    for t in cfg.tests:
        TestSpec.parse(t)
    for i, lim in enumerate(cfg.sweep.limits):
        if not _LIMIT_RE.match(lim):
            raise UserError(f"config: sweep.limits[{i}]: expected watts (220) or a share of the default (70%), got {lim!r}")
    return cfg


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v):
            out.update(_flatten(v, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = v
    return out


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read YAML at `path` (defaults only if None), apply dotted `overrides` (None values ignored), validate."""
    import yaml

    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config {p}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    cfg = _build(BenchConfig, data)
    for key, value in (overrides or {}).items():
        if value is not None:
            cfg = _override(cfg, key.split("."), value, key)
    return validate(cfg)


def _override(obj: Any, parts: list[str], value: Any, full: str) -> Any:
    hints = get_type_hints(type(obj))
    if parts[0] not in hints:
        raise UserError(f"unknown setting {full!r}")
    if len(parts) == 1:
        return replace(obj, **{parts[0]: _coerce(full, value, hints[parts[0]])})
    return replace(obj, **{parts[0]: _override(getattr(obj, parts[0]), parts[1:], value, full)})


def parse_limit(text: str) -> tuple[float, bool]:
    """"220" / "220W" -> (220.0, False); "70%" -> (70.0, True)."""
    m = _LIMIT_RE.match(text)
    if not m:
        raise UserError(f"bad power limit {text!r}: expected watts (220) or a share of the default (70%)")
    return float(m.group(1)), m.group(2) == "%"
