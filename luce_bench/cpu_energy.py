"""CPU package energy through Linux RAPL (/sys/class/powercap/intel-rapl:*), where readable.

Each package domain has a cumulative `energy_uj` counter that wraps at `max_energy_range_uj`; `delta_uj` undoes one
wrap. Since Linux 5.10 (CVE-2020-8694) `energy_uj` is root-only on most distributions, so `available()` usually
says why not for a normal user.
"""

from __future__ import annotations

from pathlib import Path

POWERCAP = Path("/sys/class/powercap")


def _package_domains(root: Path) -> list[Path]:
    # top-level package domains look like intel-rapl:0 (sub-domains intel-rapl:0:0 are cores/uncore/dram)
    return sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1 and (p / "energy_uj").exists())


class Rapl:
    """Sum of the package-domain energy counters."""

    def __init__(self, root: Path = POWERCAP) -> None:
        """Find the package domains under `root`; ValueError if there are none or they are unreadable."""
        reason = self.available(root)
        if reason is not None:
            raise ValueError(reason)
        self.domains = _package_domains(root)
        self.max_range_uj = [int((d / "max_energy_range_uj").read_text()) for d in self.domains]

    @classmethod
    def available(cls, root: Path = POWERCAP) -> str | None:
        """None if RAPL package energy can be read here, else the reason why not."""
        if not root.is_dir():
            return f"{root} does not exist (no powercap driver, or not Linux)"
        domains = _package_domains(root)
        if not domains:
            return f"no RAPL package domains under {root} (not an Intel/AMD RAPL CPU, or in a VM)"
        try:
            for d in domains:
                int((d / "energy_uj").read_text())
                int((d / "max_energy_range_uj").read_text())
        except PermissionError:
            return f"{domains[0] / 'energy_uj'} is readable only by root (Linux >= 5.10)"
        except (OSError, ValueError) as exc:
            return f"cannot read RAPL counters: {exc}"
        return None

    @property
    def max_energy_range_uj(self) -> int:
        """Wrap range of `energy_uj()` for one package; with several packages prefer `read_uj()` + `delta_uj()`."""
        return sum(self.max_range_uj)

    def read_uj(self) -> list[int]:
        """Raw counters, one per package. Units: µJ."""
        return [int((d / "energy_uj").read_text()) for d in self.domains]

    def energy_uj(self) -> int:
        """Sum of the raw package counters (for display; use `delta_uj` across a window). Units: µJ."""
        return sum(self.read_uj())

    def delta_uj(self, start: list[int], end: list[int]) -> int:
        """Energy between two `read_uj()` results, undoing at most one wraparound per package. Units: µJ."""
        return sum(wrap_delta(a, b, m) for a, b, m in zip(start, end, self.max_range_uj, strict=False))


def wrap_delta(start_uj: int, end_uj: int, max_range_uj: int) -> int:
    """Counter difference with one wraparound at `max_range_uj` undone. Units: µJ."""
    return end_uj - start_uj if end_uj >= start_uj else end_uj + (max_range_uj - start_uj)
