"""The simulated GPU's physics: presets and the DVFS model behind `FakeGPU` (gpu/fake.py). Pure functions, no state.

Model, with s = f / f_max the SM clock as a share of the top clock:
* Voltage: flat at the floor `vfloor_share`**((alpha - 1) / 2) below the knee s = `vfloor_share`, and rising as
  V(s) / V_max = s**((alpha - 1) / 2) above it (DVFS raises the voltage with the clock; alpha = 2.5 gives
  V ~ s**0.75).
* Power: P(s) = idle_w + (load_w - idle_w) * (s * V(s)**2) / (1 * V_max**2), the C f V**2 law on top of the idle
  draw. Above the knee s * V**2 = s**alpha; below it the voltage is flat and power grows only linearly with f.
  `load_w` is the draw of the work at the top clock: decode's, or `prefill_load_w` for compute-bound prefill.
* Power limit: when P(1) exceeds the limit, the clock falls to the s where P(s) = limit (the inverse of the above,
  SwPowerCap set); a locked clock caps s at the lock (min of the two; the lock's reason is ClocksSetting when it is
  the one holding the clock down). Not below `min_sm_mhz`.
* Throughput (the sim backend's speed): time per token = a memory-bound part that does not depend on the SM clock
  (share m at the top clock) + an SM-bound part proportional to 1 / s, so throughput / throughput(s=1) =
  1 / (m + (1 - m) / s). Memory-bound decode (m = 0.7) saturates with the clock: near the top a 10 % lower clock
  costs ~3 % of speed; compute-bound prefill (m = 0.2) is nearly proportional to the clock.
* Idle: `idle_w` at the idle clock `idle_sm_mhz`. A lock whose minimum is above the idle clock holds the idle card
  there; its idle draw then rises with the same f V**2 shape towards `idle_clocked_w` at the top clock.

Calibration:
* rtx3090: fitted to the published RTX 3090 megakernel DVFS table (Luce megakernel RESULTS.md: 420 W stock ->
  1980 MHz, 314 W, 433 tok/s; 300 W -> 1935 MHz, 299 W, 432; 220 W -> 1635 MHz, 220 W, 411 (1.87 tok/J); 150 W ->
  405 MHz, 150 W, 194). The model gives 220 W -> 1624 MHz and 300 W -> 1870 MHz; the decode memory-bound share
  m = 0.7 fits the table's speed against clock (411/433 at 1635/1980 MHz gives m = 0.75, 194/433 at 405/1980 gives
  m = 0.68). Known deviation, kept because the golden sweep pins these numbers: at 150 W the table's card collapses
  to 405 MHz (its busy GDDR6X draws ~120 W at any SM clock), the model's only to 1090 MHz (its busy floor is the
  idle draw), so it is ~1.8x too fast there. The stock draw is 330 W (table: 314 W); the top clock 1950 MHz.
  `idle_clocked_w` is an assumption (not measured).
* h200: NVML facts of the team's H200 (h200.md): 200-700 W, default 700 W, SM 1980 MHz, memory 3201 MHz, idle
  ~80 W. Decode draws 529 W at the top clock (our megakernel's tg128 at the stock limit: 1,636 tok/s at 529 W, the
  sim backend's stock rate), prefill 364 W (llama.cpp's pp520: 43,694 tok/s at 120 tok/J). So a power-limit sweep is
  flat for decode down to 529 W, while a locked clock saves energy at once: 1590 MHz (a supported clock just above
  the knee) draws 340 W, saving 31 % of decode energy at 7 % of speed, close to the published H200 DVFS finding (up
  to ~32 % at a small speed cost); 1695 MHz saves 24 % at 5 %. Clock range 345-1980 MHz in 15 MHz steps is assumed
  like the H100's.
* h100-sxm: 200-700 W, idle 72 W (measurement.md); the draw under load is a rough figure.
"""

from __future__ import annotations

from dataclasses import dataclass

from luce_bench.gpu.base import GPUUnavailable

DEFAULT_PRESET = "rtx3090"


@dataclass(frozen=True)
class FakePreset:
    """Static facts and model constants of one simulated card (see the module docstring)."""

    name: str
    product: str
    min_limit_mw: int
    max_limit_mw: int
    default_limit_mw: int
    idle_w: float
    load_w: float  # draw of decode (memory-bound work) at the top clock
    max_sm_mhz: int
    idle_sm_mhz: int
    min_sm_mhz: int
    mem_mhz: int
    mem_bus_bits: int  # with mem_mhz: the peak memory bandwidth luce-bench records (provenance.peak_bandwidth_gb_s)
    compute_capability: tuple[int, int]
    alpha: float = 2.5  # dynamic power ~ s**alpha above the voltage knee
    vfloor_share: float = 0.8  # the knee: below this clock share the voltage stays at its floor
    ambient_c: float = 28.0
    c_per_w: float = 0.13
    tau_s: float = 10.0
    prefill_load_w: float | None = None  # draw of compute-bound prefill at the top clock (None: load_w)
    idle_clocked_w: float | None = None  # idle draw with the SM clock held at the top (None: idle_w)
    sm_step_mhz: int = 15  # spacing of the supported SM clocks

    def load_of(self, compute_bound: bool) -> float:
        """The work's draw at the top clock. Units: W."""
        return self.prefill_load_w if compute_bound and self.prefill_load_w is not None else self.load_w


PRESETS: dict[str, FakePreset] = {
    "rtx3090": FakePreset(
        "rtx3090",
        "NVIDIA GeForce RTX 3090 (simulated)",
        100_000,
        420_000,
        420_000,
        idle_w=30.0,
        load_w=330.0,
        max_sm_mhz=1950,
        idle_sm_mhz=210,
        min_sm_mhz=210,
        mem_mhz=9751,
        mem_bus_bits=384,
        compute_capability=(8, 6),
        idle_clocked_w=55.0,
    ),
    "h100-sxm": FakePreset(
        "h100-sxm",
        "NVIDIA H100 80GB HBM3 (simulated)",
        200_000,
        700_000,
        700_000,
        idle_w=72.0,
        load_w=520.0,
        max_sm_mhz=1980,
        idle_sm_mhz=345,
        min_sm_mhz=345,
        mem_mhz=2619,
        mem_bus_bits=5120,
        compute_capability=(9, 0),
        c_per_w=0.07,
        tau_s=12.0,
        idle_clocked_w=110.0,
    ),
    "h200": FakePreset(
        "h200",
        "NVIDIA H200 (simulated)",
        200_000,
        700_000,
        700_000,
        idle_w=80.0,
        load_w=529.0,
        max_sm_mhz=1980,
        idle_sm_mhz=345,
        min_sm_mhz=345,
        mem_mhz=3201,
        mem_bus_bits=6144,
        compute_capability=(9, 0),
        c_per_w=0.07,
        tau_s=12.0,
        prefill_load_w=364.0,
        idle_clocked_w=120.0,
    ),
}


def preset(name: str) -> FakePreset:
    """The preset called `name`; GPUUnavailable lists the known ones."""
    if name not in PRESETS:
        raise GPUUnavailable(f"unknown fake GPU preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[name]


def voltage_share(p: FakePreset, s: float) -> float:
    """Core voltage at clock share `s`, as a share of the voltage at the top clock."""
    return max(s, p.vfloor_share) ** ((p.alpha - 1.0) / 2.0)


def dynamic_share(p: FakePreset, s: float) -> float:
    """Dynamic power at clock share `s` over the one at the top clock: s * V(s)**2, in closed form."""
    if s >= p.vfloor_share:
        return s**p.alpha
    return (p.vfloor_share**p.alpha) * s / p.vfloor_share


def busy_power_w(p: FakePreset, s: float, load_w: float) -> float:
    """Draw of work whose top-clock draw is `load_w`, running at clock share `s`. Units: W."""
    return p.idle_w + (load_w - p.idle_w) * dynamic_share(p, s)


def capped_share(p: FakePreset, limit_w: float, load_w: float) -> float:
    """The clock share at which work drawing `load_w` at the top clock fits under `limit_w` (1.0 if it fits)."""
    g = (limit_w - p.idle_w) / (load_w - p.idle_w)
    if g >= 1.0:
        return 1.0
    g_floor = p.vfloor_share**p.alpha
    share = g ** (1.0 / p.alpha) if g >= g_floor else p.vfloor_share * max(g, 0.0) / g_floor
    return max(share, p.min_sm_mhz / p.max_sm_mhz)


def throughput_share(s: float, mem_bound_share: float) -> float:
    """Throughput at clock share `s` over the one at the top clock, for work `mem_bound_share` memory-bound."""
    return 1.0 / (mem_bound_share + (1.0 - mem_bound_share) / s)


def idle_power_w(p: FakePreset, idle_mhz: float) -> float:
    """Idle draw with the SM clock held at `idle_mhz` (a lock's minimum above the idle clock). Units: W."""
    if idle_mhz <= p.idle_sm_mhz or p.idle_clocked_w is None:
        return p.idle_w
    base = dynamic_share(p, p.idle_sm_mhz / p.max_sm_mhz)
    rise = (dynamic_share(p, idle_mhz / p.max_sm_mhz) - base) / (1.0 - base)
    return p.idle_w + (p.idle_clocked_w - p.idle_w) * rise


def supported_sm_clocks_mhz(p: FakePreset) -> list[int]:
    """The top clock down to the minimum in `sm_step_mhz` steps, highest first. Units: MHz."""
    clocks = list(range(p.max_sm_mhz, p.min_sm_mhz - 1, -p.sm_step_mhz))
    return clocks if clocks[-1] == p.min_sm_mhz else [*clocks, p.min_sm_mhz]
