"""The decode kernel's per-GPU tuning (`LuceMkTune` of cuda/luce_mk.h), chosen at run time from the device.

What depends on a GPU's memory system (how many weight copies each SM keeps in flight, when the producer pauses,
whether waiting warps sleep between polls, how many blocks run) is a launch parameter, not a build option: one
library serves every card, and `luce-bench kernel bench --variant NAME@inflight=2` compares settings without a
rebuild. `for_device` picks the measured values for the GPU by name (cuda/NOTES.md has the measurements);
$LUCE_BENCH_KERNEL_TUNE overrides single fields, e.g. "inflight=2,spin_sleep_ns=64".
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from luce_bench.errors import UserError

TUNE_ENV = "LUCE_BENCH_KERNEL_TUNE"
PAUSE_X_LOAD, PAUSE_GDN_ITEM = 4, 8  # LuceMkPauseReasons of luce_mk.h


@dataclass(frozen=True)
class Tune:
    """One setting of the decode kernel's run-time tuning.

    The field names and ranges are LuceMkTune's, then the grid, the deep phases and pause_ready, which travel in
    LuceMkParams.
    """

    inflight: int = 1  # weight copies in flight per SM in the layers (0: as many as the ring holds)
    inflight_lm: int = 2  # the same in the LM head
    pause_mask: int = PAUSE_X_LOAD | PAUSE_GDN_ITEM  # stretches during which the producer issues nothing (sm_90)
    spin_sleep_ns: int = 0  # sleep between two polls of global memory
    lm_screen: int = 1  # the LM head scores its int8 screening copy and recomputes only the possible argmax rows
    # blocks per launch (LuceMkParams.grid, ABI 11, not LuceMkTune): 0 = one per SM; else MIN_GRID .. the GPU's SM
    # count (the backend checks the upper end), e.g. to run the paths of a smaller GPU (blocks with several work items)
    grid: int = 0
    # layer phases whose copies run at inflight_deep in flight instead of inflight (LuceMkParams, ABI 12; bit k: 0
    # in_proj / qkv, 1 out_proj / o_proj, 2 gate|up, 3 down), e.g. deep_phases=1: two copies in flight in in_proj only
    deep_phases: int = 0
    inflight_deep: int = 2
    # a pause of pause_mask holds only while at least this many of the block's issued copies are not yet consumed
    # (LuceMkParams, ABI 12; 0: always): a paused stretch that starts on a drained ring still gets its next chunks
    pause_ready: int = 0

    LIMITS = {
        "inflight": 64,
        "inflight_lm": 64,
        "spin_sleep_ns": 4096,
        "lm_screen": 1,
        "grid": 1024,
        "deep_phases": 15,
        "inflight_deep": 64,
        "pause_ready": 64,
    }
    MIN_GRID = 8  # the kernel's (cuda/mk_layout.cuh): the MLP split and the GDN items need 8 blocks

    def __post_init__(self) -> None:
        for name, top in self.LIMITS.items():
            v = getattr(self, name)
            if not 0 <= v <= top:
                raise UserError(f"kernel tune {name}={v}: expected 0..{top}")
        if 0 < self.grid < self.MIN_GRID:
            raise UserError(f"kernel tune grid={self.grid}: expected 0 (one block per SM) or {self.MIN_GRID} and more")
        if self.pause_mask & ~(PAUSE_X_LOAD | PAUSE_GDN_ITEM):
            raise UserError(
                f"kernel tune pause_mask={self.pause_mask}: expected a sum of {PAUSE_X_LOAD} (x loads) and "
                f"{PAUSE_GDN_ITEM} (GDN items)"
            )

    def as_dict(self) -> dict[str, int]:
        """{"inflight": 1, ..., "grid": 0, ...}: the fields, as meta.json records them."""
        return dataclasses.asdict(self)

    def changed(self, text: str | None, where: str) -> Tune:
        """This tune with the fields of "name=value,name=value" replaced (empty or None: unchanged)."""
        try:
            return self.changed_by(parse_fields(text, where))
        except UserError as e:
            msg = str(e)
            raise UserError(msg if msg.startswith(f"{where}: ") else f"{where}: {msg}") from None

    def changed_by(self, fields: dict[str, int]) -> Tune:
        """This tune with these fields replaced."""
        return dataclasses.replace(self, **fields)


# Measured defaults per GPU (name pattern, tune); the first match wins, the last entry matches every GPU. The H100's
# values come from its v9 and v10 measurements and v28's screens (pause_ready=3: +0.4 % at position 64, +0.6 % at
# 4000, cuda/NOTES.md "Session 43"); the H200's from issue 12's screens, where no other setting won (cuda/NOTES.md,
# "Decode v12 and v13"; v27 and v28 not yet measured there). An unmeasured GPU starts from the defaults.
_BY_DEVICE: tuple[tuple[str, Tune], ...] = (
    (r"H200", Tune()),
    (r"H100", Tune(pause_ready=3)),
    (r"", Tune()),
)
# LuceMkParams fields that a library of ABI 11 and older lacks, and what such a library does instead
ABI12_FIELDS = {
    "deep_phases": "which keeps tune.inflight copies in flight in every layer phase",
    "pause_ready": "whose pauses always hold",
}


def parse_fields(text: str | None, where: str) -> dict[str, int]:
    """Tune fields from text: "inflight=2, spin_sleep_ns=64" -> {"inflight": 2, "spin_sleep_ns": 64}."""
    names = {f.name for f in dataclasses.fields(Tune)}
    out: dict[str, int] = {}
    for item in filter(None, (t.strip() for t in (text or "").split(","))):
        name, sep, value = (s.strip() for s in item.partition("="))
        if name not in names:
            raise UserError(f"{where}: unknown kernel tune field {name!r}; the kernel reads {', '.join(sorted(names))}")
        if name in out:
            raise UserError(f"{where}: {name} is given twice")
        try:
            if not sep:
                raise ValueError
            out[name] = int(value, 0)
        except ValueError:
            raise UserError(f"{where}: {item!r}: expected {name}=INTEGER") from None
    return out


def _measured(device_name: str) -> Tune:
    return next(t for pattern, t in _BY_DEVICE if re.search(pattern, device_name))


def for_device(device_name: str) -> Tune:
    """The measured tune for this GPU (by name), with $LUCE_BENCH_KERNEL_TUNE's fields applied."""
    return _measured(device_name).changed(os.environ.get(TUNE_ENV), TUNE_ENV)


def for_library(tune: Tune, device_name: str, abi: int) -> Tune:
    """`tune` as a library of ABI `abi` can run it.

    A library older than ABI 12 runs without ABI12_FIELDS, so a field that holds the GPU's measured value (not one
    $LUCE_BENCH_KERNEL_TUNE names) is set back to 0 (its old behaviour) instead of refused. A value asked for, or one
    a kernel-bench variant changes, stays: the backend refuses it with one line.
    """
    if abi >= 12:
        return tune
    measured, asked = _measured(device_name), parse_fields(os.environ.get(TUNE_ENV), TUNE_ENV)
    return tune.changed_by({k: 0 for k in ABI12_FIELDS if k not in asked and getattr(tune, k) == getattr(measured, k)})
