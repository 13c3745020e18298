"""Benchmark configuration: YAML (`configs/default.yaml`) plus CLI overrides, validated by pydantic models.

Unknown keys are refused and every error is one line naming the key and value, e.g.
`config: sweep.limits[2]: expected watts (220) or a share of the default (70%), got 'x'`.

A sweep has up to two axes: `sweep.limits` (power limits) and `sweep.clocks` (locked SM clocks); both given, it is
their grid. A source that names clocks but no limits sweeps the clocks alone: a YAML file with `sweep.clocks` and no
`sweep.limits` (the limits default does not apply), or `--clocks` without `--limits` on the command line.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from luce_bench.config_errors import message
from luce_bench.errors import UserError

MAX_TEST_TOKENS = 131072
_TEST_RE = re.compile(r"^(pp|tg)(\d+)(?:@d(\d+))?$")
_LIMIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|w|W)?\s*$")
_CLOCK_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%|mhz)?\s*$", re.IGNORECASE)
CLOCK_FORMS = "MHz (1600) or a share of the max SM clock (80%)"
_CUDA_INDEX = re.compile(r"^cuda:\d+$")


# meta.json's method.tg_iteration: what one tg<N> iteration runs (luce_bench/measure.py). A resumed sweep must have
# run the same: before 2026-12-06 a seed step ran first, N + 1 steps for N tokens (no such key in its meta.json)
TG_ITERATION = "N one-token steps from a seed token (llama-bench)"
TG_ITERATION_BEFORE = "a seed step, then N steps (before 2026-12-06)"  # what a meta.json without the key ran


@dataclass(frozen=True)
class TestSpec:
    """One llama-bench style test: `pp512` = prompt processing of 512 tokens, `tg128` = 128 generated tokens.

    `depth` is llama-bench's `-d`: `tg128@d4096` decodes 128 tokens after 4096 tokens are already in the context,
    `pp512@d4096` processes 512 prompt tokens after them. The context is prefilled before the measured part and is
    not measured.
    """

    kind: str
    n: int
    depth: int = 0

    @property
    def name(self) -> str:
        """The test's name, e.g. "pp520" or "tg128@d4096" (llama-bench writes "tg128 @ d4096")."""
        return f"{self.kind}{self.n}" + (f"@d{self.depth}" if self.depth else "")

    @property
    def positions(self) -> int:
        """Sequence positions one iteration fills: the context and the measured tokens (a tg's seed is its first)."""
        return self.depth + self.n

    @classmethod
    def parse(cls, text: str) -> TestSpec:
        """Parse "pp520" / "tg128" / "tg128@d4096"."""
        m = _TEST_RE.match(text.strip())
        n = int(m.group(2)) if m else 0
        depth = int(m.group(3)) if m and m.group(3) is not None else 0
        bad_depth = m is not None and m.group(3) is not None and depth < 1
        if not m or not 1 <= n <= MAX_TEST_TOKENS or bad_depth or n + depth > MAX_TEST_TOKENS:
            raise UserError(
                f"bad test {text!r}: expected pp<N> or tg<N>, optionally @d<D> (D >= 1 tokens already in the "
                f"context), N >= 1 and N + D <= {MAX_TEST_TOKENS}, e.g. pp520,tg128,tg128@d4096"
            )
        return cls(m.group(1), n, depth)


def first_repeat(written: Iterable[tuple[str, Hashable]]) -> tuple[str, str, Any] | None:
    """(earlier text, later text, value) of the first value written twice (`written`: (text, value) pairs), or None."""
    seen: dict[Hashable, str] = {}
    for text, value in written:
        if value in seen:
            return seen[value], text, value
        seen[value] = text
    return None


def refuse_repeats(what: str, unit: str, written: Sequence[tuple[str, float]], where: str = "") -> None:
    """UserError when two values the user wrote resolve to the same one (`written`: (text, value) pairs, in order).

    Values that --clamp or snapping bring together are not passed here: those merge. `where` names a source that is
    not a flag ("sweep.limits in config FILE"); a flag's values need no name.
    """
    if repeat := first_repeat(written):
        earlier, text, value = repeat
        raise UserError(
            f"{what} {value:g} {unit} is given twice ({earlier} and {text}){f' in {where}' if where else ''}: give "
            "each once (--reps repeats a setting)"
        )


def parse_limit(text: str) -> tuple[float, bool]:
    """Parse a power limit: "220" / "220W" -> (220.0, False); "70%" -> (70.0, True)."""
    m = _LIMIT_RE.match(text)
    if not m:
        raise UserError(f"bad power limit {text!r}: expected watts (220) or a share of the default (70%)")
    return float(m.group(1)), m.group(2) == "%"


def parse_clock(text: str) -> tuple[float, bool]:
    """Parse an SM clock: "1600" / "1600MHz" -> (1600.0, False); "80%" -> (80.0, True)."""
    m = _CLOCK_RE.match(text)
    if not m:
        raise UserError(f"bad SM clock {text!r}: expected {CLOCK_FORMS}")
    return float(m.group(1)), m.group(2) == "%"


# --- field types: YAML and CLI values in, the one-line messages users know out --------------------------------------
def _whole(v: Any) -> Any:
    return int(v) if isinstance(v, float) and v.is_integer() else v


def _text(v: Any) -> Any:
    return str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _items(v: Any) -> Any:
    if isinstance(v, str):
        parts = [s.strip() for s in v.split(",")]
        if any(parts) and not all(parts):  # "300,,200": a typo, not a shorter list
            raise ValueError(f"has an empty entry: {v!r}")
        return tuple(s for s in parts if s)
    return tuple(v) if isinstance(v, list) else v


def _not_empty(v: Any) -> Any:
    if not (v.strip() if isinstance(v, str) else v):
        raise ValueError("is empty")
    return v


def _device(v: str) -> str:
    if v not in ("auto", "cpu", "cuda") and not _CUDA_INDEX.match(v):
        raise ValueError(f"= {v!r}; expected one of auto, cpu, cuda or cuda:N (N: a GPU index)")
    return v


def _test(v: str) -> str:
    TestSpec.parse(v)  # raises the UserError users know
    return v


ALL_BACKENDS = "all"  # sweep's backends: the megakernel and every baseline, each skipped where it cannot run
AUTO_LIMITS = "auto"
AUTO_SHARES = ("100%", "75%", "55%", "40%")  # of the card's default limit, clamped to its range


def _limit(v: Any) -> str:
    """A limit as written (before the type check: `true` or `null` in a YAML list is no limit, not "no string")."""
    v = _text(v)
    if isinstance(v, str) and v.strip() == AUTO_LIMITS:
        return AUTO_LIMITS
    if not isinstance(v, str) or not (m := _LIMIT_RE.match(v)):
        raise ValueError(f": expected watts (220) or a share of the default (70%), got {v!r}")
    if float(m.group(1)) <= 0:
        raise ValueError(f": a power limit must be positive, got {v!r}")
    return v


def _clock(v: Any) -> str:
    v = _text(v)
    if not isinstance(v, str) or not (m := _CLOCK_RE.match(v)):
        raise ValueError(f": expected {CLOCK_FORMS}, got {v!r}")
    if float(m.group(1)) <= 0:
        raise ValueError(f": an SM clock must be positive, got {v!r}")
    return v


Int = Annotated[int, BeforeValidator(_whole)]  # 3.0 in YAML is 3
Str = Annotated[str, BeforeValidator(_text)]  # 300 in YAML is "300"


def _one_number(v: Any) -> Any:
    """`limits: 420` in YAML is a list of one, as `limits: "420"` is (lists of numbers: limits, clocks)."""
    return (str(v),) if isinstance(v, int | float) and not isinstance(v, bool) else v


def _list(*item_checks: AfterValidator | BeforeValidator, non_empty: bool = True, numbers: bool = False) -> Any:
    """Strings from a YAML list or a comma-separated string (a tuple), each item checked by `item_checks`."""
    item = Annotated[Str, *item_checks] if item_checks else Str
    before = [BeforeValidator(_items), *([BeforeValidator(_one_number)] if numbers else [])]
    return Annotated[tuple[item, ...], *before, *([AfterValidator(_not_empty)] if non_empty else [])]


def _names_once(v: tuple[str, ...]) -> tuple[str, ...]:
    """A backend named twice is measured once: say so rather than record a list that was not run."""
    if repeat := first_repeat((name, name) for name in v):
        raise UserError(f"backend {repeat[1]} is given twice: give each once")
    return v


def _known(v: tuple[str, ...]) -> tuple[str, ...]:
    """Backend names the registry knows (or `all`), refused here so the message names the config key or flag."""
    from luce_bench.backends import REGISTRY, known_backends

    if unknown := [n for n in v if n not in REGISTRY and n != ALL_BACKENDS]:
        raise ValueError(f": unknown backend {unknown[0]!r}; known: {known_backends()}, or {ALL_BACKENDS}")
    return v


Names = Annotated[_list(), AfterValidator(_known), AfterValidator(_names_once)]


def _tests_once(v: tuple[str, ...]) -> tuple[str, ...]:
    """A test named twice would be measured twice and its windows pooled (--reps repeats a test)."""
    if repeat := first_repeat((text, TestSpec.parse(text)) for text in v):
        earlier, text, _ = repeat
        raise UserError(f"test {text} is given twice ({earlier} and {text}): give each once (--reps repeats a test)")
    return v


Tests = Annotated[_list(AfterValidator(_test)), AfterValidator(_tests_once)]
Limits = _list(BeforeValidator(_limit), non_empty=False, numbers=True)
Clocks = _list(BeforeValidator(_clock), non_empty=False, numbers=True)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SamplerConfig(_Section):
    """Background power/clock sampler."""

    period_s: float = Field(0.1, ge=0.01, le=10)


class GpuConfig(_Section):
    """Which GPU, and whether to simulate it (`fake_clock: virtual` runs a simulated GPU in virtual time)."""

    index: Int = Field(0, ge=0, le=63)
    fake: bool = False
    fake_preset: Literal["rtx3090", "h100-sxm", "h200"] = "rtx3090"
    fake_clock: Literal["real", "virtual"] = "real"


class CooldownConfig(_Section):
    """Cool down between tests until within `target_delta_c` of the start temperature, at most `max_s`."""

    max_s: float = Field(30.0, ge=0, le=3600)
    target_delta_c: float = Field(3.0, ge=0, le=100)


class SweepConfig(_Section):
    """Power-limit and SM-clock sweep (`luce-bench sweep`): either axis, or their grid."""

    limits: Limits = (AUTO_LIMITS,)  # AUTO_SHARES of the card's default limit, clamped to its range
    clocks: Clocks = ()
    order: Literal["descending", "ascending", "shuffle"] = "descending"
    shuffle_seed: Int | None = None
    rounds: Int = Field(1, ge=1, le=1000)  # passes over the settings; repetition r is measured in round r % rounds
    clamp: bool = False
    settle_s: float = Field(3.0, ge=0, le=600)
    idle_s: float = Field(10.0, ge=0, le=600)
    sweet_spot_min_speed: float = Field(0.95, ge=0.01, le=1.0)

    @model_validator(mode="after")
    def _seed_needs_shuffle(self) -> SweepConfig:
        """A seed with another order would be recorded in meta.json as if it had ordered the sweep."""
        if self.shuffle_seed is not None and self.order != "shuffle":
            raise UserError(
                f"a shuffle seed ({self.shuffle_seed}: --seed, sweep.shuffle_seed) applies only to a shuffled order "
                f"(--shuffle, sweep.order: shuffle); the order is {self.order}"
            )
        return self

    @model_validator(mode="before")
    @classmethod
    def _clocks_alone(cls, data: Any) -> Any:
        """Clocks named without limits sweep the clocks alone (the limits default does not apply)."""
        if isinstance(data, dict) and data.get("clocks") and "limits" not in data:
            return {**data, "limits": ()}
        return data


class BenchConfig(_Section):
    """Everything a compare/bench/sweep run needs."""

    model: Annotated[Str, AfterValidator(_not_empty)] = "auto"
    model_seed: Int = Field(0, ge=-(2**63), le=2**64 - 1)  # what torch's generator takes
    device: Annotated[Str, AfterValidator(_device)] = "auto"
    backends: Names = (ALL_BACKENDS,)
    tests: Tests = ("pp520", "tg128")
    reps: Int = Field(5, ge=1, le=1000)
    warmup_s: float = Field(3.0, ge=0, le=3600)
    window_s: float = Field(10.0, ge=0.001, le=3600)
    rep_gap_max_s: float = Field(1.0, ge=0, le=60)
    test_timeout_s: float = Field(0.0, ge=0, le=86400)  # 0: auto (`test_deadline_s`)
    prompt_seed: Int = 1234
    output_dir: Annotated[Str, AfterValidator(_not_empty)] = "results/runs"
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)
    gpu: GpuConfig = Field(default_factory=GpuConfig)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)
    sweep: SweepConfig = Field(default_factory=SweepConfig)

    @model_validator(mode="after")
    def _timeout_fits_the_plan(self) -> BenchConfig:
        """A test timeout below one test's own warm-up and windows could only fail every backend."""
        planned_s = self.warmup_s + self.reps * self.window_s
        if 0 < self.test_timeout_s < planned_s:
            raise UserError(
                f"test_timeout_s = {self.test_timeout_s:g} s is shorter than one test's plan (warm-up "
                f"{self.warmup_s:g} s + {self.reps} x {self.window_s:g} s windows = {planned_s:g} s): raise it, or "
                "give 0 for the automatic deadline"
            )
        return self

    @property
    def test_deadline_s(self) -> float:
        """How long one test (warm-up and every repetition) may take: `test_timeout_s`, or 60 s plus 3x its plan.

        The automatic deadline also grows by 3x the first iteration per window once that iteration is timed
        (measure.py), so a slow backend is not taken for a hung one.
        """
        if self.test_timeout_s > 0:
            return self.test_timeout_s
        return 60.0 + 3.0 * (self.warmup_s + self.reps * (self.window_s + self.rep_gap_max_s))

    @property
    def test_specs(self) -> list[TestSpec]:
        """Parsed `tests`."""
        return [TestSpec.parse(t) for t in self.tests]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for meta.json)."""
        return self.model_dump(mode="json")


def _set(data: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted `key` in nested `data`; refuses keys the config does not have."""
    parts = key.split(".")
    cls: Any = BenchConfig
    for part in parts:
        if not (isinstance(cls, type) and issubclass(cls, BaseModel) and part in cls.model_fields):
            raise UserError(f"unknown setting {key!r}")
        cls = cls.model_fields[part].annotation
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {}) if isinstance(node.get(part, {}), dict) else {}
    node[parts[-1]] = value


MAX_CONFIG_BYTES = 1 << 20


def _read_text(path: Path) -> str:
    """The config file's text; UserError when it is missing, a directory, too large, unreadable, not UTF-8 or empty."""
    if path.is_dir():
        raise UserError(f"config {path} is a directory, not a YAML file")
    if not path.exists():
        raise UserError(f"config file not found: {path}")
    try:  # (a pipe works too: `-c <(sed ... base.yaml)`; reading stops after the size limit)
        with path.open("rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise UserError(f"config {path} is larger than {MAX_CONFIG_BYTES >> 20} MiB: not a luce-bench config")
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config {path}: cannot read it ({exc})") from None
    if not text.strip():
        raise UserError(f"config {path} is empty (omit --config to use the defaults)")
    return text


def _read_yaml(path: Path) -> Any:
    import yaml

    text = _read_text(path)
    try:
        data = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader that refuses duplicate keys
    except yaml.MarkedYAMLError as exc:
        where = exc.problem_mark or exc.context_mark
        at = f"line {where.line + 1}, column {where.column + 1}: " if where is not None else ""
        what = exc.problem or exc.context or str(exc).splitlines()[0]
        raise UserError(f"config {path}: invalid YAML at {at}{what}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config {path}: invalid YAML ({str(exc).splitlines()[0]})") from None
    except (ValueError, TypeError) as exc:  # a scalar YAML accepts but cannot build, e.g. the date 2017-13-45
        raise UserError(f"config {path}: invalid YAML value ({exc})") from None
    except RecursionError:
        raise UserError(f"config {path}: invalid YAML (nested too deeply)") from None
    if data is None:
        raise UserError(f"config {path} has no settings, only comments (omit --config to use the defaults)")
    return data


@functools.cache
def _loader() -> Any:
    """yaml.SafeLoader with two changes: a key given twice in one mapping is refused, and 1e3 is a number.

    PyYAML keeps the last of two equal keys silently; and it reads YAML 1.1, where a float needs a dot (1.0e3) and
    1e3 is a string, where YAML 1.2 reads 1e3 and 2E-5 as numbers.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        def compose_mapping_node(self, anchor: Any) -> Any:
            # checked as written, before construction: merging (`<<`) rewrites a mapping's keys in place later
            node = super().compose_mapping_node(anchor)
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    key = (key_node.tag, key_node.value)
                    if key in seen:
                        raise yaml.composer.ComposerError(
                            None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                        )
                    seen.add(key)
            return node

    exponent = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent, list("-+.0123456789"))
    return Loader


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Read YAML at `path` (defaults only if None), apply dotted `overrides` (None values ignored), validate.

    The file is validated on its own first: a broken value in it is bad input even where a flag overrides it.
    """
    if path is None:
        return from_mapping({}, overrides)
    data = _read_yaml(Path(path))
    if not isinstance(data, dict):
        raise UserError(f"config {path}: top level: expected a mapping of settings, got {data!r}"[:300])
    file_says = _refuse_broken_values(data, path)
    try:
        return from_mapping(data, overrides)
    except UserError as exc:
        if str(exc) != file_says:  # (a flag's value, or one a flag made wrong: the CLI names the flag)
            raise
        raise UserError(f"config {path}: {exc}") from None  # (the file's own value: name the file)


def _refuse_broken_values(data: dict[str, Any], path: str | Path) -> str | None:
    """UserError naming `path` when a value in the file is wrong by itself (a type, a range, an unknown key).

    Checks between fields (a test timeout against the plan's windows) and validators' own refusals wait for the
    flags: they run on the merged settings, where a flag may change the value. Returns what such a check says of the
    file alone (None: nothing), so that the same refusal of the merged settings can name the file.
    """
    try:
        BenchConfig.model_validate(copy.deepcopy(data))
    except ValidationError as exc:
        if any(e.get("loc") for e in exc.errors()):  # a field's own error, not the whole model's
            raise UserError(f"config {path}: {message(exc, BenchConfig).removeprefix('config: ')}") from None
        return message(exc, BenchConfig)
    except UserError as exc:
        return str(exc)
    return None


def from_mapping(data: Any, overrides: dict[str, Any] | None = None) -> BenchConfig:
    """Validate the config `data` (a mapping, as YAML or meta.json give it) with dotted `overrides` applied."""
    if not isinstance(data, dict):
        raise UserError(f"config: top level: expected a mapping, got {data!r}")
    data = copy.deepcopy(data)
    for key, value in (overrides or {}).items():
        if value is not None:
            _set(data, key, value)
    try:
        return BenchConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(message(exc, BenchConfig)) from None
