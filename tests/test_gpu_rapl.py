"""RAPL CPU package energy from a fake powercap tree: discovery, reasons, wraparound."""

from __future__ import annotations

from luce_bench.cpu_energy import Rapl, wrap_delta


def _tree(tmp_path, values):
    for i, v in enumerate(values):
        d = tmp_path / f"intel-rapl:{i}"
        d.mkdir()
        (d / "energy_uj").write_text(f"{v}\n")
        (d / "max_energy_range_uj").write_text("1000000\n")
        sub = tmp_path / f"intel-rapl:{i}:0"  # a core sub-domain: must not be double counted
        sub.mkdir()
        (sub / "energy_uj").write_text("5\n")
    return tmp_path


def test_reads_packages_only(tmp_path):
    rapl = Rapl(_tree(tmp_path, [100, 200]))
    assert rapl.energy_uj() == 300
    assert len(rapl.domains) == 2


def test_wraparound():
    assert wrap_delta(999_000, 1_000, 1_000_000) == 2_000
    assert wrap_delta(10, 30, 1_000_000) == 20


def test_delta_across_a_wrap(tmp_path):
    root = _tree(tmp_path, [999_500, 10])
    rapl = Rapl(root)
    start = rapl.read_uj()
    (root / "intel-rapl:0" / "energy_uj").write_text("500\n")
    (root / "intel-rapl:1" / "energy_uj").write_text("40\n")
    assert rapl.delta_uj(start, rapl.read_uj()) == 1_000 + 30


def test_unavailable_reasons(tmp_path):
    assert "does not exist" in Rapl.available(tmp_path / "nope")
    assert "no RAPL package domains" in Rapl.available(tmp_path)
