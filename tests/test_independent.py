"""`luce-bench report RUN --independent LOG`: the run's window energies against an independent reader's log.

The run is a simulated one in virtual time; the "independent" log is made from its own samples (the counter and the
wall-clock anchor), so the expected differences are known: ~0 for the same counter, +5 % for a counter 5 % higher.
The published H200 run (results/nvidia-h200/20261203-compare-v5-prefill) keeps a real reader's log: publishing it
again gives the committed independent.md and the tables' line, and a changed log makes `report --check` fail.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
from conftest import simulated_compare
from typer.testing import CliRunner

from luce_bench.cli import app

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent
H200_RUN = ROOT / "results" / "nvidia-h200" / "20261203-compare-v5-prefill"


@pytest.fixture(scope="module")
def sim_run(tmp_path_factory) -> Path:
    config = "gpu:\n  fake_clock: virtual\ntests: [tg16, pp64]\nreps: 2\nwarmup_s: 0.5\nwindow_s: 10.0\n"
    return simulated_compare(tmp_path_factory.mktemp("independent"), config)


def _log_from_samples(
    run: Path, out: Path, scale: float = 1.0, shift_s: float = 0.0, until_s: float = math.inf
) -> Path:
    origin = json.loads((run / "meta.json").read_text())["sampler"]["origin_unix_s"]
    with (run / "samples.csv").open() as f:
        samples = [r for r in csv.DictReader(f) if float(r["t_s"]) < until_s]
    rows = [(origin + float(r["t_s"]) + shift_s, float(r["energy_mj"]), float(r["power_w"])) for r in samples]
    t, e_mj, p_w = rows[-1]
    rows.append((t + 1.0, e_mj + p_w * 1000.0, p_w))  # the reader outlives the run by a second, as it does in use
    body = "".join(f"{t:.4f},{e * scale:.0f},{p * 1000:.0f}\n" for t, e, p in rows)
    out.write_text("unix_s,energy_mj,power_mw\n" + body)
    return out


def _overall_median(output: str) -> float:
    (line,) = [ln for ln in output.splitlines() if ln.startswith("All 4 windows")]
    return float(line.split("median ")[1].split(" %")[0])


def test_the_same_counter_agrees_and_a_counter_5_percent_high_reads_plus_5(sim_run, tmp_path):
    log = _log_from_samples(sim_run, tmp_path / "a")
    same = runner.invoke(app, ["report", str(sim_run), "--independent", str(log)])
    assert same.exit_code == 0, same.output
    assert "| sim | tg16 | current | 2 |" in same.output
    assert abs(_overall_median(same.output)) < 0.3, same.output  # 10 s windows: edges interpolated within a 0.1 s tick
    high = _log_from_samples(sim_run, tmp_path / "b", scale=1.05)
    out = runner.invoke(app, ["report", str(sim_run), "--independent", str(high)])
    assert out.exit_code == 0 and 4.7 < _overall_median(out.output) < 5.3, out.output
    text = (sim_run / "independent.md").read_text()
    assert text.startswith("# Energy against an independent reader")
    assert "\n> SIMULATED GPU (--fake-gpu): the run's energy comes from a model" in text  # a simulated run says so
    kept = (sim_run / "independent_log.csv.gz").read_bytes()
    assert gzip.decompress(kept) == high.read_bytes()  # the last log compared is kept in the run, gzipped
    assert runner.invoke(app, ["report", str(sim_run), "--independent", str(high)]).exit_code == 0
    assert (sim_run / "independent_log.csv.gz").read_bytes() == kept  # no name or time in the gzip header


def test_a_window_the_log_does_not_cover_is_counted_in_words(sim_run, tmp_path):
    with (sim_run / "runs.csv").open() as f:
        last_start_s = max(float(r["t_start_s"]) for r in csv.DictReader(f))
    log = _log_from_samples(sim_run, tmp_path / "short", until_s=last_start_s)  # stops as the last window begins
    out = runner.invoke(app, ["report", str(sim_run), "--independent", str(log)])
    assert out.exit_code == 0, out.output
    assert "; 1 window lies outside the log" in " ".join(out.output.split())


@pytest.mark.tries(
    "bad input",
    "report --independent: a missing log, one that is not a log (or a broken gzip, a nan, a counter going "
    "backwards or rising faster than any GPU draws), another run's, a run without GPU energy",
)
@pytest.mark.parametrize(
    "case",
    [
        "missing",
        "not-a-log",
        "broken-gzip",
        "nan",
        "backwards",
        "just-above-5-kw",
        "implausible",
        "other-run",
        "no-energy",
    ],
)
def test_bad_logs_are_one_line(sim_run, tmp_path, case):
    log = tmp_path / "log.csv"
    run = sim_run
    if case == "no-energy":  # a run on a machine without a GPU counter (make run on a CPU): nothing to compare
        run = tmp_path / "run"
        shutil.copytree(sim_run, run)
        with (run / "runs.csv").open() as f:
            rows = list(csv.DictReader(f))
        with (run / "runs.csv").open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows({**r, "energy_j": "", "tok_per_j": "", "j_per_tok": ""} for r in rows)
        _log_from_samples(sim_run, log)
        message = "the run measured no GPU energy"
    elif case == "not-a-log":
        log.write_text("time,watts\n1,2\n")
        message = "not an energy log"
    elif case == "broken-gzip":
        log = tmp_path / "log.csv.gz"
        log.write_bytes(gzip.compress(b"unix_s,energy_mj,power_mw\n" * 50)[:12] + b"\xff" * 40)
        message = "not an energy log"
    elif case == "nan":
        log.write_text("unix_s,energy_mj,power_mw\n1.0,5,1\nnan,6,1\n2.0,7,1\n")
        message = "not an energy log"
    elif case == "backwards":
        log.write_text("unix_s,energy_mj,power_mw\n1.0,5000,1\n2.0,7000,1\n3.0,6500,1\n4.0,9000,1\n")
        message = "log.csv line 4: the energy counter goes backwards (6500 mJ after 7000): a counter reset"
    elif case == "just-above-5-kw":  # 6 kW on average: refused; 1.2 kW (the largest boards) reads below
        log.write_text("unix_s,energy_mj,power_mw\n1.0,0,1\n2.0,6000000,1\n")
        message = "log.csv: the counter rises by 6,000 W on average over the log"
    elif case == "implausible":  # (a log in another unit, or scaled: 1e30 mJ)
        log.write_text("unix_s,energy_mj,power_mw\n1.0,5000,1\n2.0,7000,1\n3.0,1e30,1\n")
        message = "log.csv: the counter rises by 5.00e+26 W on average over the log, more than any one GPU draws (5,000"
    elif case == "other-run":
        _log_from_samples(sim_run, log, shift_s=1e6)
        message = "the log covers none of the run's windows"
    else:
        message = "no such file"
    before = sorted(p.name for p in run.iterdir())
    out = runner.invoke(app, ["report", str(run), "--independent", str(log)])
    assert out.exit_code == 2 and message in " ".join(out.output.split()), out.output
    assert len(out.output.strip().splitlines()) == 1, out.output
    assert sorted(p.name for p in run.iterdir()) == before  # no report, no copy of the log


def _h200_run(tmp_path: Path) -> Path:
    """The published H200 run as it came from the GPU machine, with the reader's log it kept."""
    run = tmp_path / "20261203T165850Z-compare"
    run.mkdir()
    for name in ("runs.csv", "meta.json", "independent_log.csv.gz"):
        shutil.copy(H200_RUN / name, run / name)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "published_with_failures"}))
    (run / "samples.csv").write_bytes(gzip.decompress((H200_RUN / "samples.csv.gz").read_bytes()))
    return run


def test_a_published_run_carries_its_reader_and_check_catches_a_changed_log(tmp_path):
    results = tmp_path / "results"
    args = ["publish", str(_h200_run(tmp_path)), "--results", str(results), "--name", "again", "--allow-failures"]
    out = runner.invoke(app, args)
    assert out.exit_code == 0, out.output
    dest = results / "nvidia-h200" / "20261203-again"
    assert (dest / "independent.md").read_text() == (H200_RUN / "independent.md").read_text()
    assert "| megakernel | tg128 | current | 5 | -0.09 % | -0.80 % |" in (dest / "independent.md").read_text()
    line = "median difference +0.07 %, largest 0.96 % over 75 windows"
    assert line in (results / "README.md").read_text()  # the repository's own README is checked by `make check-results`
    assert runner.invoke(app, ["report", "--check", str(results)]).exit_code == 0

    log = gzip.decompress((dest / "independent_log.csv.gz").read_bytes()).decode().splitlines()
    head, rows = log[0], [r.split(",") for r in log[1:]]
    scaled = [f"{t},{float(e) * 1.05:.0f},{p}" for t, e, p in rows]  # a reader 5 % high
    (dest / "independent_log.csv.gz").write_bytes(gzip.compress("\n".join([head, *scaled, ""]).encode()))
    check = runner.invoke(app, ["report", "--check", str(results)])
    assert check.exit_code == 1 and "independent.md: missing or stale against independent_log.csv.gz" in check.output


def _logger():
    """scripts/nvml_energy_log.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("nvml_energy_log", ROOT / "scripts" / "nvml_energy_log.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.tries("bad input", "the independent reader: no NVML counter, an output file it cannot write")
@pytest.mark.parametrize("case", ["unwritable", "no-nvml"])
def test_the_reader_refuses_in_one_line_creates_nothing_and_shuts_nvml_down(tmp_path, monkeypatch, capsys, case):
    from unittest import mock

    nvml = mock.Mock()
    nvml.nvmlDeviceGetTotalEnergyConsumption.return_value = 123456
    if case == "no-nvml":
        nvml.nvmlInit.side_effect = RuntimeError("NVML Shared Library Not Found")
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    out = tmp_path / ("no-such-dir/log.csv" if case == "unwritable" else "log.csv")
    assert _logger().main([str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        f"error: cannot write {out}: No such file or directory"
        if case == "unwritable"
        else "error: no NVML energy counter on GPU 0: NVML Shared Library Not Found"
    )
    assert err == [expected]
    assert not any(tmp_path.iterdir())  # no log, no folder
    assert nvml.nvmlShutdown.call_count == (1 if case == "unwritable" else 0)  # shut down once it was started
