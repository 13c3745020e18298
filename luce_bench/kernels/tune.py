"""The decode kernel's per-GPU tuning (`LuceMkTune` of cuda/luce_mk.h), chosen at run time from the device.

What depends on a GPU's memory system (how many weight copies each SM keeps in flight, when the producer pauses,
whether waiting warps sleep between polls, what prefetches the stream into L2 and how far ahead) is a launch parameter,
not a build option: one library serves every card, and `luce-bench kernel bench --variant NAME@inflight=2` compares
settings without a rebuild. `for_device` picks the measured values for the GPU by name (cuda/NOTES.md has the
measurements); $LUCE_BENCH_KERNEL_TUNE overrides single fields, e.g. "inflight=2,spin_sleep_ns=64".
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass

from luce_bench.errors import UserError

TUNE_ENV = "LUCE_BENCH_KERNEL_TUNE"
PAUSE_X_LOAD, PAUSE_GDN_ITEM = 4, 8  # LuceMkPauseReasons of luce_mk.h


PREFETCH_FIELDS = ("streamers", "prefetch_lead", "kv_prefetch")  # ABI 11
SM90_FIELDS = ("streamers", "prefetch_lead")


@dataclass(frozen=True)
class Tune:
    """One setting of the decode kernel's run-time tuning (field names and ranges as LuceMkTune)."""

    inflight: int = 1  # weight copies in flight per SM in the layers (0: as many as the ring holds)
    inflight_lm: int = 2  # the same in the LM head
    pause_mask: int = PAUSE_X_LOAD | PAUSE_GDN_ITEM  # stretches during which the producer issues nothing (sm_90)
    spin_sleep_ns: int = 0  # sleep between two polls of global memory
    streamers: int = 0  # blocks that only prefetch the others' weight chunks into L2 (sm_90, ABI 11; 0: none)
    stream_lead: int = 4  # chunks a streamer prefetches ahead of each producer's issued copies
    prefetch_lead: int = 0  # the producer warp prefetches the lines of the chunk this many ahead (sm_90; 0: none)
    kv_prefetch: int = 0  # 1: attention items prefetch their chunk's K/V cache rows into L2 first (any arch)
    stream_lines: int = 0  # 1: streamers prefetch line by line from a warp, not one bulk prefetch per chunk

    LIMITS = {
        "inflight": (0, 64),
        "inflight_lm": (0, 64),
        "spin_sleep_ns": (0, 4096),
        "streamers": (0, 32),
        "stream_lead": (1, 64),
        "prefetch_lead": (0, 16),
        "kv_prefetch": (0, 1),
        "stream_lines": (0, 1),
    }

    def __post_init__(self) -> None:
        for name, (low, top) in self.LIMITS.items():
            v = getattr(self, name)
            if not low <= v <= top:
                raise UserError(f"kernel tune {name}={v}: expected {low}..{top}")
        if self.pause_mask & ~(PAUSE_X_LOAD | PAUSE_GDN_ITEM):
            raise UserError(
                f"kernel tune pause_mask={self.pause_mask}: expected a sum of {PAUSE_X_LOAD} (x loads) and "
                f"{PAUSE_GDN_ITEM} (GDN items)"
            )

    def prefetching(self) -> str:
        """The L2 prefetching this tune asks for (ABI 11), e.g. "streamers=4, prefetch_lead=2"; "": none."""
        return ", ".join(f"{k}={getattr(self, k)}" for k in PREFETCH_FIELDS if getattr(self, k))

    def sm90_prefetching(self) -> str:
        """The part of `prefetching` that is sm_90 code (streamer blocks, the producer's own prefetch)."""
        return ", ".join(f"{k}={getattr(self, k)}" for k in SM90_FIELDS if getattr(self, k))

    def as_dict(self) -> dict[str, int]:
        """{"inflight": 1, ...}: the fields (meta.json, the ctypes struct)."""
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
# values come from its v9 and v10 measurements, the H200's from issue 12's screens, where no other setting won
# (cuda/NOTES.md, "Decode v12 and v13"): both keep the defaults, and an unmeasured GPU starts from them too.
_BY_DEVICE: tuple[tuple[str, Tune], ...] = (
    (r"H200", Tune()),
    (r"H100", Tune()),
    (r"", Tune()),
)


MIN_COMPUTING_BLOCKS = 8  # mk_layout.cuh MIN_GRID: the MLP split (4) and one GDN item per head and block (8)
STREAMED_PER_STREAMER = 32  # mk_layout.cuh: computing blocks one streamer serves (two per warp of 16)


def sm90_refusal(tune: Tune, sm_count: int, capability: tuple[int, int], archs: tuple[str, ...]) -> str | None:
    """Why this device or library cannot run the tune's L2 prefetching (None: it can, or the tune asks for none).

    Streamer blocks (`streamers`) and the producer's own prefetch (`prefetch_lead`) are sm_90 code. The kernel
    refuses such a launch too (LUCE_MK_ERR_ARGS); this says why, before any GPU work. `archs`: the library's ("sm_80",
    "sm_90", ...; empty: unknown); the device runs the newest one not above its own compute capability (an sm_80
    library on an H100 would leave the streamer SMs idle).
    """
    asked = tune.sm90_prefetching()
    if not asked:
        return None
    device = capability[0] * 10 + capability[1]
    if device < 90:
        return f"{asked} needs an sm_90 GPU (L2 prefetch); this one is sm_{device}"
    runs = max((n for n in (int(re.sub(r"\D", "", a)) for a in archs) if n <= device), default=0)
    if archs and runs < 90:  # (a prebuilt library without its ptxas report does not say)
        return f"{asked} needs the kernel built for sm_90; this library has {', '.join(archs)}"
    computing = sm_count - tune.streamers
    if tune.streamers and computing > STREAMED_PER_STREAMER * tune.streamers:
        return (
            f"streamers={tune.streamers} leaves {computing} computing blocks; one streamer serves at most "
            f"{STREAMED_PER_STREAMER} (streamers >= {-(-sm_count // (STREAMED_PER_STREAMER + 1))} here)"
        )
    if tune.streamers and computing < MIN_COMPUTING_BLOCKS:
        return (
            f"streamers={tune.streamers} leaves {computing} of {sm_count} SMs computing; the kernel needs "
            f"{MIN_COMPUTING_BLOCKS}"
        )
    return None


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


def for_device(device_name: str) -> Tune:
    """The measured tune for this GPU (by name), with $LUCE_BENCH_KERNEL_TUNE's fields applied."""
    base = next(t for pattern, t in _BY_DEVICE if re.search(pattern, device_name))
    return base.changed(os.environ.get(TUNE_ENV), TUNE_ENV)
