"""The CLI through typer's CliRunner: help, errors, a full fake-GPU compare, report and info."""

import csv
import json
import re
import signal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app

runner = CliRunner()
ROOT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ROOT = Path(__file__).resolve().parents[1]
FAST = ["--reps", "2", "--window-s", "0.3", "--warmup-s", "0.05", "--rep-gap-max-s", "0", "--tests", "pp16,tg8"]


@pytest.mark.parametrize(
    "cmd",
    [
        [],
        ["compare"],
        ["bench"],
        ["sweep"],
        ["restore"],
        ["report"],
        ["info"],
        ["model"],
        ["model", "prepare"],
        ["kernel"],
    ],
)
def test_every_command_has_help(cmd):
    result = runner.invoke(app, [*cmd, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert runner.invoke(app, [*cmd, "-h"]).output == result.output  # -h too, as most CLIs take it


def test_the_defaults_the_help_names_are_the_default_configs():
    from luce_bench import config
    from luce_bench.cli.options import RUN_OPTIONS

    cfg = config.load(ROOT_CONFIGS / "default.yaml")
    said = {name: opt.__metadata__[0].help for name, (opt, _) in RUN_OPTIONS.items()}
    assert f"Default (the config's): {','.join(cfg.tests)}." in said["tests"]
    for name in ("reps", "window_s", "warmup_s", "rep_gap_max_s", "gpu"):
        value = cfg.gpu.index if name == "gpu" else getattr(cfg, name)
        assert f"default {value:g})" in said[name], name
    assert f"default {cfg.cooldown.max_s:g})" in said["cooldown_max_s"]
    assert said["device"].startswith(f"{cfg.device} (default)") and f"(default {cfg.model}:" in said["model"]
    import inspect

    from luce_bench.cli.measure import SETTLE_HELP, sweep

    idle_help = inspect.signature(sweep).parameters["idle_s"].annotation.__metadata__[0].help
    assert f"default {cfg.sweep.settle_s:g}," in SETTLE_HELP and f"default {cfg.sweep.idle_s:g})" in idle_help


def test_help_paragraphs_are_wrapped_by_the_terminal_not_by_the_source():
    """The docstring's line breaks are the source's 120 columns: --help joins each paragraph and lets rich wrap it."""
    import typer

    group = typer.main.get_command(app)
    for path in _commands(group):
        cmd = group
        for part in path.split():
            cmd = cmd.commands[part]
        for paragraph in (cmd.help or "").split("\n\n"):
            assert "\n" not in paragraph, (path, paragraph)
    said = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "200"}).output
    assert "Changing limits and locking clocks need root" in said  # one source line ended after "limits and"


def test_no_option_help_is_cut_at_80_columns():
    """Rich cuts a table cell that holds a word longer than its column ("…"): every help reads whole in 80 columns."""
    import typer

    group = typer.main.get_command(app)
    for path in ["", *_commands(group)]:
        said = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "80"}).output
        assert "Usage" in said and "…" not in said, (path, said)


def test_a_flag_that_takes_no_value_shows_no_type_in_help():
    """Typer 0.2x wrote `--clamp <bool>`, and `--clamp true` is then an error: a flag shows no type, a value its own."""
    import typer

    group = typer.main.get_command(app)
    for path in ["", *_commands(group)]:
        said = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "160"}).output
        assert "<bool>" not in said, (path, said)
    said = runner.invoke(app, ["sweep", "--help"], env={"COLUMNS": "160"}).output
    assert "<int>" in said  # (--reps: a value's type is still shown)


def test_no_help_text_is_eaten_as_rich_markup():
    """Rich renders help as markup: "t_us [steps, points, blocks]" lost its brackets' words. Every text reads whole."""
    import typer
    from rich.markup import render

    group = typer.main.get_command(app)
    for path in ["", *_commands(group)]:
        cmd = group
        for part in path.split():
            cmd = cmd.commands[part]
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        for text in texts:
            assert render(text).plain == text, (path, text)


def test_kernel_bench_help_names_every_tune_field():
    import dataclasses

    from luce_bench.kernels.tune import Tune

    said = runner.invoke(app, ["kernel", "bench", "--help"], env={"COLUMNS": "200"}).output
    assert "NAME:MK_A=1,MK_B=2" in said and "NAME=DIR" in said
    for f in dataclasses.fields(Tune):
        assert f.name in said, f.name


@pytest.mark.parametrize("cmd", [["sweep"], ["kernel", "bench"]])
def test_a_root_option_after_the_command_says_where_it_goes(cmd):
    said = runner.invoke(app, [*cmd, "--debug"])
    assert said.exit_code == 2
    assert f"--debug: it is luce-bench's own option, given before the command (luce-bench --debug {' '.join(cmd)})" in (
        " ".join(said.output.split())
    )


def test_version_prints_the_package_version():
    from luce_bench import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output == f"luce-bench {__version__}\n"
    pyproject = (ROOT_CONFIGS.parent / "pyproject.toml").read_text()
    assert f'\nversion = "{__version__}"\n' in pyproject  # the package's version is the one --version prints


def _commands(group) -> list[str]:
    """Every command path under the click group `group`, e.g. ["compare", ..., "kernel info", "model prepare"]."""
    out = []
    for name, cmd in group.commands.items():
        out += [f"{name} {sub}" for sub in _commands(cmd)] if hasattr(cmd, "commands") else [name]
    return out


def test_help_names_what_the_tool_and_the_kernel_group_do():
    import typer

    said = " ".join(runner.invoke(app, ["--help"]).output.split())
    assert "DVFS sweeps (power limits and/or locked SM clocks)" in said
    kernel = typer.main.get_command(app).commands["kernel"]
    assert sorted(kernel.commands) == ["bench", "build", "info", "trace"]
    assert all(name in kernel.help for name in kernel.commands), kernel.help  # not just "Build the CUDA megakernel."


def test_the_readme_command_table_lists_every_command():
    import typer

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [c for c in _commands(typer.main.get_command(app)) if f"| `luce-bench {c}" not in readme]
    assert missing == []


@pytest.fixture(scope="module")
def compare_run(tmp_path_factory, tiny_model):
    """One fake-GPU compare run with the HF baseline on the tiny model; the GPU's setters are watched."""
    from luce_bench.gpu.fake import FakeGPU

    out = tmp_path_factory.mktemp("runs")
    calls = []
    original = FakeGPU.set_power_limit_mw
    FakeGPU.set_power_limit_mw = lambda self, mw: calls.append(mw)  # any call at all is a failure below
    try:
        result = runner.invoke(
            app,
            [
                "compare",
                "--baselines",
                "hf",
                "--model",
                "tiny",
                "--fake-gpu",
                "--out",
                str(out),
                *FAST,
                "-c",
                str(_quick_config(out)),
            ],
        )
    finally:
        FakeGPU.set_power_limit_mw = original
    run_dirs = list(out.glob("*-compare"))
    return result, run_dirs, calls


def _quick_config(tmp):
    p = tmp / "quick.yaml"
    p.write_text("cooldown:\n  max_s: 0\n")
    return p


def test_compare_writes_every_file(compare_run):
    result, run_dirs, _ = compare_run
    assert result.exit_code == 0, result.output
    assert len(run_dirs) == 1
    d = run_dirs[0]
    for name in (
        "runs.csv",
        "summary.csv",
        "samples.csv",
        "meta.json",
        "report.md",
        "tok_s.png",
        "tok_j.png",
        "timeline.png",
    ):
        assert (d / name).is_file() and (d / name).stat().st_size > 0, name
    runs = list(csv.DictReader((d / "runs.csv").open()))
    assert [(r["backend"], r["test"]) for r in runs] == [("hf", "pp16")] * 2 + [("hf", "tg8")] * 2
    for r in runs:
        tokens, window, energy = float(r["n_tokens"]), float(r["window_s"]), float(r["energy_j"])
        assert float(r["avg_ts"]) == pytest.approx(tokens / window, rel=1e-4)
        assert float(r["tok_per_j"]) == pytest.approx(tokens / energy, rel=1e-4)
        assert r["gpu_simulated"] == "True"
    summary = list(csv.DictReader((d / "summary.csv").open()))
    assert [(s["backend"], s["test"], s["n"]) for s in summary] == [("hf", "pp16", "2"), ("hf", "tg8", "2")]
    meta = json.loads((d / "meta.json").read_text())
    assert meta["gpu"]["power_limit_max_w"] == 420.0 and meta["energy"]["simulated"] is True  # rtx3090 preset
    assert meta["backends"]["megakernel"].get("skipped")
    assert meta["backends"]["hf"]["gdn_path"]
    assert list(csv.DictReader((d / "samples.csv").open()))
    report = (d / "report.md").read_text()
    assert "SIMULATED GPU" in report
    assert f"hf: {meta['backends']['hf']['setup']}" in report and "hf: eager transformers" in report
    assert f"megakernel: skipped: {meta['backends']['megakernel']['skipped']}" in report


def test_the_console_summary_gives_mean_and_sample_std_as_report_md_does(compare_run):
    from rich.console import Console

    from luce_bench.records import RunRecord, read_csv
    from luce_bench.report import _summary_table
    from luce_bench.summary import summarize

    result, run_dirs, _ = compare_run
    assert "luce-bench summary (mean ± sample std over repetitions, as in report.md)" in " ".join(result.output.split())
    summary = summarize(read_csv(run_dirs[0] / "runs.csv", RunRecord))
    wide = Console(width=400, record=True)  # (every cell whole: the run's own console may fold a long one)
    wide.print(_summary_table(summary))
    said = wide.export_text()
    for r in summary:  # tok/s to 1 digit, tok/J to 3, each ± its sample std, not ± a CI half-width
        assert f"{r.avg_ts:.1f} ± {r.stddev_ts:.1f}" in said, said
        assert f"{r.tok_per_j:.3f} ± {r.tok_per_j_std:.3f}" in said, said


def test_a_report_without_a_gpu_says_none_not_n_a_watts():
    from luce_bench.report import _gpu_line

    assert _gpu_line({}) == "- GPU: none"
    assert _gpu_line({"name": "X", "driver": "580", "power_limit_w": 700.0}) == "- GPU: X (driver 580, limit 700 W)"


def test_compare_never_sets_a_power_limit(compare_run):
    _, _, calls = compare_run
    assert calls == []


def test_report_rebuilds_from_csvs(compare_run):
    _, run_dirs, _ = compare_run
    d = run_dirs[0]
    (d / "summary.csv").unlink()
    (d / "tok_s.png").unlink()
    result = runner.invoke(app, ["report", str(d), "--llama-bench"])
    assert result.exit_code == 0, result.output
    assert (d / "summary.csv").is_file() and (d / "tok_s.png").is_file()
    assert "| model | size | params | backend | test | t/s |" in result.output


@pytest.mark.parametrize("given", [".", "./", "../run/."])
def test_a_report_of_the_current_folder_is_titled_with_its_name(compare_run, tmp_path, monkeypatch, given):
    """`report .` once wrote "# luce-bench report: " (an empty name), which `report --check` then called stale."""
    import shutil

    _, run_dirs, _ = compare_run
    d = shutil.copytree(run_dirs[0], tmp_path / "run")
    monkeypatch.chdir(d)
    result = runner.invoke(app, ["report", given])
    assert result.exit_code == 0, result.output
    assert (d / "report.md").read_text().splitlines()[0] == "# luce-bench report: run"


def test_a_report_rebuilt_without_meta_json_says_what_it_lacks(compare_run, tmp_path):
    import shutil

    _, run_dirs, _ = compare_run
    d = shutil.copytree(run_dirs[0], tmp_path / "run")
    (d / "meta.json").unlink()
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert f"no meta.json in {d}: the model, the GPU and the run's settings are unknown here" in said
    report = (d / "report.md").read_text()
    assert "- GPU: unknown here (no meta.json)" in report and "- GPU: none" not in report  # (not "no GPU")


def test_a_model_name_with_a_line_break_stays_on_its_report_line(compare_run, tmp_path):
    import shutil

    _, run_dirs, _ = compare_run
    d = shutil.copytree(run_dirs[0], tmp_path / "run")
    meta = json.loads((d / "meta.json").read_text())
    meta["model"]["name"] = "/tmp/we,ird\nname"
    (d / "meta.json").write_text(json.dumps(meta))
    assert runner.invoke(app, ["report", str(d)]).exit_code == 0
    lines = (d / "report.md").read_text().splitlines()
    assert f"- model: /tmp/we,ird name ({meta['model']['n_params']} params)" in lines


@pytest.mark.tries("bad input", "CLI: unknown backend, bad test/size/device, missing model/config/run dir")
@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(
            ["compare", "--baselines", "nope", "--fake-gpu"],
            "unknown baseline 'nope'; known: llamacpp, hf, hf-compiled, sim (sim with --fake-gpu)",  # no megakernel
            id="baseline",
        ),
        pytest.param(["compare", "--tests", "pp0"], "bad test 'pp0'", id="test"),
        pytest.param(["compare", "--reps", "0"], "reps = 0 is out of range", id="reps"),
        pytest.param(["report", "/no/such/dir"], "run directory not found", id="report"),
        pytest.param(
            ["bench", "hf", "--model", "/no/such/model"], "--model /no/such/model: no such directory", id="model"
        ),
        pytest.param(["compare", "-c", "/no/such.yaml"], "config file not found", id="config"),
        pytest.param(["model", "prepare", "--size", "huge"], "unknown synthetic size", id="size"),
        pytest.param(["model", "prepare", "--model", "Qwen/Qwen3.5-0.8B"], "needs no preparing", id="prepare-hub"),
        pytest.param(["model", "prepare", "--model", "auto"], "'auto' is a run's choice", id="prepare-auto"),
        pytest.param(["bench", "hf", "--tests", "pp99999999999"], "bad test 'pp99999999999'", id="huge-test"),
        pytest.param(["bench", "hf", "--device", "cuda:x"], "device = 'cuda:x'", id="device"),
        pytest.param(["bench", "hf", "--model", ""], "model is empty", id="empty-model"),
        pytest.param(["bench", ""], "BACKEND is empty: name one of megakernel", id="empty-backend"),
        pytest.param(["bench", "hf,llamacpp"], "bench measures one backend", id="two-backends"),
        pytest.param(["bench", "nope"], "unknown backend 'nope'; known: megakernel, llamacpp, hf", id="bench-unknown"),
        pytest.param(["bench", "all"], "unknown backend 'all'", id="bench-all"),  # (a sweep's word)
        pytest.param(["kernel", "info", "--arch", ""], "--arch is empty", id="kernel-empty-arch"),
        pytest.param(["kernel", "build", "--arch", " , "], "--arch is empty", id="kernel-build-empty-arch"),
        pytest.param(["kernel", "info", "--arch", "foo"], "bad CUDA arch 'foo'", id="kernel-arch"),
        pytest.param(
            ["report", "results", "--check", "--independent", "x.csv"], "do different things", id="check-indep"
        ),
        pytest.param(["report", "results/x", "--readme", "README.md"], "--readme applies to --check", id="readme"),
        pytest.param(
            ["compare", "--fake-gpu", "--no-megakernel", "--baselines", "megakernel,sim"],
            "--baselines names the megakernel, which is no baseline",
            id="megakernel-baseline",
        ),
        pytest.param(["kernel", "info", "--arch", "sm_10"], "'sm_10' is older than the kernels need", id="old-arch"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, message):
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len([ln for ln in result.output.splitlines() if ln.startswith("error:")]) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["publish", "--results", ""],
        ["publish", ""],
        ["report", ""],
        ["report", "results", "--independent", ""],
        ["report", "results", "--readme", ""],
        ["sweep", "--fake-gpu", "--resume", ""],
        ["compare", "--fake-gpu", "-c", ""],
        ["kernel", "bench", "--json", ""],
        ["kernel", "build", "--out", " "],
    ],
    ids=lambda a: "-".join(x.strip("-") for x in a if x.strip()),
)
def test_an_empty_path_is_bad_input_not_the_working_directory(args, tmp_path, monkeypatch):
    # Path("") is "."; `publish --results ""` once wrote the results tree's README over the project's own
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "is empty: name a path" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_debug_shows_the_traceback_and_keeps_the_exit_code():
    plain = runner.invoke(app, ["report", "/no/such/dir"])
    result = runner.invoke(app, ["--debug", "report", "/no/such/dir"])
    assert plain.exit_code == result.exit_code == 2, result.output
    assert "Traceback (most recent call last)" in result.output and "UserError" in result.output
    assert result.output.splitlines()[-1] == plain.output.splitlines()[-1]  # the same one line, after the traceback


def test_info_is_clean_without_a_gpu():
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    assert "Backends" in result.output and "hf" in result.output


def test_info_with_fake_gpu_shows_limits():
    result = runner.invoke(app, ["info", "--fake-gpu"])
    assert result.exit_code == 0, result.output
    assert "SIMULATED" in result.output
    rows = {" ".join(line.strip("│ ").split()) for line in result.output.splitlines()}
    for row in ("power limit max │ 420 W", "compute capability │ 8.6", "persistence mode │ off"):
        assert row in rows, row  # words and units, not Python values such as (8, 6) or False


GPU_LESS_KERNEL = {  # kernels.build_info() on a machine without a GPU
    "nvcc": "Build cuda_13.0",
    "arch": None,
    "cache": None,
    "built": False,
    "error": "cannot tell the CUDA arch: no GPU visible to torch or NVML; pass --arch (e.g. sm_90) or set X",
}
NO_GPU_BACKENDS = {"megakernel": "no CUDA GPU visible", "llamacpp": "not installed", "sim": "runs only with --fake-gpu"}


def test_info_says_what_a_gpu_less_machine_lacks_in_words(monkeypatch):
    from luce_bench import info
    from luce_bench.gpu import GPUUnavailable

    monkeypatch.setattr("luce_bench.kernels.build_info", lambda: GPU_LESS_KERNEL)
    monkeypatch.setattr(info, "setup_gaps", lambda: [])  # `make setup` has nothing to add
    monkeypatch.setattr(info, "available", lambda simulated_gpu: dict(NO_GPU_BACKENDS))

    def no_gpu(*args, **kwargs):
        raise GPUUnavailable("NVML could not start")

    monkeypatch.setattr("luce_bench.gpu.open_gpu", no_gpu)
    result = runner.invoke(app, ["info"])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    for text in ("arch │ none (no GPU)", "cache │ none (no arch to build for)", "built │ no"):
        assert text in said, text
    assert "missing: nothing (" not in said  # not under a table of backends marked no
    assert "missing: nothing `make setup` can add; megakernel, llamacpp cannot run on this machine" in said


def test_info_kernel_rows_are_words_and_point_to_the_command_with_arch():
    from luce_bench.info_text import kernel_rows

    assert kernel_rows(GPU_LESS_KERNEL, gpu_visible=False) == [
        ("nvcc", "Build cuda_13.0"),
        ("arch", "none (no GPU)"),
        ("cache", "none (no arch to build for)"),
        ("built", "no"),
        ("error", "cannot tell the CUDA arch: no GPU visible to torch or NVML; build for one with "
                  "`luce-bench kernel build --arch sm_90` or set X"),
    ]  # fmt: skip
    built = {"nvcc": "Build cuda_13.0", "arch": "sm_90", "cache": "/c/k", "built": True, "options": {"MK_SLOT_KB": 16}}
    built["kernels"] = [
        {"function": "mk", "arch": "sm_90", "registers": 128, "stack_bytes": 0, "spill_stores": 0, "spill_loads": 4}
    ]
    assert kernel_rows(built, gpu_visible=True)[3:] == [
        ("built", "yes"),
        ("options", "MK_SLOT_KB=16"),
        ("kernels", "mk (sm_90): 128 registers, 0 B stack, 0 B spill stores, 4 B spill loads"),
    ]


@pytest.mark.parametrize("flag", ["--size", "--model"])
def test_model_prepare_writes_the_tiny_checkpoint(tiny_model, flag):
    result = runner.invoke(app, ["model", "prepare", flag, "tiny"])
    assert result.exit_code == 0, result.output
    assert "910,200 params" in result.output


def test_bad_output_dir_and_unavailable_backend_leave_nothing(tmp_path, tiny_model):
    afile = tmp_path / "afile"
    afile.write_text("x")
    result = runner.invoke(app, ["bench", "hf", "--model", "tiny", "--out", str(afile), *FAST])
    assert result.exit_code == 2 and "is not a directory" in result.output, result.output
    out = tmp_path / "runs"
    result = runner.invoke(app, ["bench", "sim", "--model", "tiny", "--out", str(out), *FAST])
    assert result.exit_code == 2 and "backend sim cannot run here" in result.output, result.output
    assert not out.exists() or not list(out.iterdir())


def test_test_longer_than_the_model_is_refused(tiny_model, tmp_path):
    result = runner.invoke(app, ["bench", "hf", "--model", "tiny", "--tests", "pp5000", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "allows at most 4096" in result.output, result.output


def test_rows_record_the_limit_in_force(compare_run):
    _, run_dirs, _ = compare_run
    runs = list(csv.DictReader((run_dirs[0] / "runs.csv").open()))
    assert {r["power_limit_w"] for r in runs} == {"420"}  # the rtx3090 preset's current limit


@pytest.mark.tries("bad input", "report: foreign or corrupt run files")
def test_report_refuses_foreign_or_corrupt_files_and_survives_missing_meta(compare_run, tmp_path):
    import shutil

    _, run_dirs, _ = compare_run
    d = tmp_path / "copy"
    shutil.copytree(run_dirs[0], d)
    (d / "meta.json").unlink()
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 0 and "SIMULATED GPU" in (d / "report.md").read_text()
    (d / "meta.json").write_text("{bad")
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 2 and "meta.json is not valid JSON" in result.output
    (d / "meta.json").unlink()
    (d / "runs.csv").write_text("a,b\n1,2\n")
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 2 and "not a luce-bench runs.csv" in result.output
    (d / "runs.csv").write_bytes(b"backend,\x81\xfe\n")  # (not UTF-8: a one-line refusal, not a traceback)
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 2 and "runs.csv: not UTF-8 text" in result.output, result.output


def test_report_of_a_run_without_a_finished_repetition_says_so_instead_of_an_empty_table(compare_run, tmp_path):
    import shutil

    _, run_dirs, _ = compare_run
    d = tmp_path / "copy"
    shutil.copytree(run_dirs[0], d)
    (d / "runs.csv").write_text((d / "runs.csv").read_text().splitlines()[0] + "\n")  # the header alone
    result = runner.invoke(app, ["report", str(d)])
    assert result.exit_code == 0, result.output
    assert "No repetition finished in this run" in result.output
    assert "luce-bench summary (mean ± sample std" not in result.output
    md = (d / "report.md").read_text()
    assert "No repetition finished in this run" in md and "## Summary" not in md
    assert "![timeline](timeline.png)" in md and (d / "timeline.png").is_file()  # what the samples show stays
    assert not (d / "summary.csv").exists()  # the copied run's summary no longer agreed with its runs.csv


@pytest.mark.parametrize("cmd", [["sweep"], ["compare"], ["bench", "sim"]])
def test_a_second_config_file_is_refused_not_silently_used_alone(tmp_path, cmd):
    # before, `-c smoke.yaml -c reps.yaml` measured with reps.yaml alone: the defaults' real-time windows, no fake GPU
    (tmp_path / "reps.yaml").write_text("reps: 2\n")
    smoke = str(ROOT_CONFIGS / "smoke.yaml")
    result = runner.invoke(app, [*cmd, "-c", smoke, "--config", str(tmp_path / "reps.yaml"), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert f"'--config' / '-c': given 2 times ({smoke}, {tmp_path / 'reps.yaml'})" in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()
    assert runner.invoke(app, ["info", "-c", smoke]).exit_code == 0  # once is as before


def test_unknown_fake_preset_in_yaml_is_a_config_error(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gpu:\n  fake_preset: foo\n")
    result = runner.invoke(app, ["bench", "hf", "--fake-gpu", "-c", str(cfg)])
    assert result.exit_code == 2 and "gpu.fake_preset = 'foo'" in result.output


def test_smoke_config_sweeps_the_simulated_gpu_in_virtual_time(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_STATE", raising=False)
    result = runner.invoke(app, ["sweep", "-c", str(ROOT_CONFIGS / "smoke.yaml"), "-o", str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    (d,) = (tmp_path / "runs").iterdir()
    runs = list(csv.DictReader((d / "runs.csv").open()))
    assert len(runs) == 3 * 2 * 3  # limits x tests x reps
    assert {r["power_limit_req_w"] for r in runs} == {"420", "294", "210"}  # 100 %, 70 %, 50 % of the rtx3090's 420 W
    for name in ("summary.csv", "samples.csv", "sweet_spot.csv", "sweet_spot.json", "tok_s.png", "sweep_pareto.png"):
        assert (d / name).is_file(), name
    md = (d / "report.md").read_text()
    assert "## Power-limit sweep" in md and "original limit 420 W restored" in md and "limit 420 W)" in md  # not 420.0
    assert json.loads((d / "meta.json").read_text())["energy"]["virtual_time"] is True
    spots = [ln for ln in result.output.splitlines() if "sweet spot" in ln]
    again = runner.invoke(app, ["report", str(d)])  # the sweep's console lines, sweet spots included
    assert again.exit_code == 0 and spots and all(ln in again.output for ln in spots), again.output
    meta = (d / "meta.json").read_bytes()
    (d / "meta.json").unlink()  # a report rebuilt without it has no sweep section, and cannot rebuild the sweep's files
    rebuilt = runner.invoke(app, ["report", str(d)])
    assert rebuilt.exit_code == 0, rebuilt.output
    md = (d / "report.md").read_text()
    assert "## Power-limit sweep" not in md and "sweet_spot.csv, sweet_spot.json, sweep_pareto.png" in md
    assert "from an earlier report; the sweep section needs meta.json to be rebuilt" in md  # kept, and said so
    assert (d / "sweet_spot.json").is_file() and (d / "sweep_tok_j.png").is_file()
    sweep_meta = json.loads(meta)
    del sweep_meta["sweep"]  # a run that is not a sweep: sweep files from an earlier render contradict it
    (d / "meta.json").write_text(json.dumps(sweep_meta))
    assert runner.invoke(app, ["report", str(d)]).exit_code == 0
    assert not [p.name for p in d.iterdir() if p.name.startswith(("sweet_spot.", "sweep_"))]
    assert (d / "tok_s.png").is_file() and (d / "summary.csv").is_file()


def test_a_shuffle_without_a_seed_draws_one_says_it_and_records_it(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LUCE_BENCH_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("LUCE_BENCH_FAKE_GPU_STATE", raising=False)
    args = ["sweep", "-c", str(ROOT_CONFIGS / "smoke.yaml"), "--shuffle", "-o", str(tmp_path / "runs")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    seed = int(re.search(r"shuffled with seed (\d+) \(--shuffle --seed \1 repeats it\)", result.output).group(1))
    (d,) = (tmp_path / "runs").iterdir()
    assert json.loads((d / "meta.json").read_text())["config"]["sweep"]["shuffle_seed"] == seed  # --resume replays it
    order = list(dict.fromkeys(r["power_limit_req_w"] for r in csv.DictReader((d / "runs.csv").open())))
    again = runner.invoke(app, [*args[:-1], str(tmp_path / "again"), "--seed", str(seed)])
    assert again.exit_code == 0 and "shuffled with seed" not in again.output
    (d2,) = (tmp_path / "again").iterdir()
    assert list(dict.fromkeys(r["power_limit_req_w"] for r in csv.DictReader((d2 / "runs.csv").open()))) == order


@pytest.mark.parametrize(
    "yaml_text,flags,refused",
    [
        ("sweep: {shuffle_seed: 5}\n", [], "a shuffle seed (5: --seed, sweep.shuffle_seed) applies only to a shuffled"),
        ("", ["--seed", "5"], "applies only to a shuffled order (--shuffle, sweep.order: shuffle); the order is desc"),
        ("", ["--seed", "5", "--order", "ascending"], "the order is ascending"),
        ("sweep: {order: shuffle}\n", ["--seed", "5"], None),  # the file shuffles: the flag's seed orders it
        ("sweep: {shuffle_seed: 5}\n", ["--shuffle"], None),
    ],
)
def test_a_shuffle_seed_is_refused_wherever_nothing_is_shuffled(tmp_path, tiny_model, yaml_text, flags, refused):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml_text + "gpu: {fake: true, fake_clock: virtual}\nbackends: [sim]\ntests: [tg8]\nreps: 1\n")
    args = ["sweep", "-c", str(cfg), "--limits", "300,220", "--idle-s", "0", "--settle-s", "0", "--warmup-s", "0"]
    result = runner.invoke(app, [*args, *flags, "-o", str(tmp_path / "runs")])
    if refused:
        assert result.exit_code == 2 and refused in result.output and not (tmp_path / "runs").exists(), result.output
    else:
        assert result.exit_code == 0, result.output
        (d,) = (tmp_path / "runs").iterdir()
        assert json.loads((d / "meta.json").read_text())["config"]["sweep"]["shuffle_seed"] == 5


def test_fake_preset_flag_picks_the_simulated_card(tmp_path, tiny_model):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("gpu: {fake_clock: virtual}\ntests: [tg8]\nreps: 1\nwindow_s: 0.5\nwarmup_s: 0\n")
    result = runner.invoke(
        app, ["bench", "sim", "--fake-gpu", "--fake-preset", "h100-sxm", "-c", str(cfg), "-o", str(tmp_path / "runs")]
    )
    assert result.exit_code == 0, result.output
    (d,) = (tmp_path / "runs").iterdir()
    assert d.name.endswith("-bench-sim")
    assert json.loads((d / "meta.json").read_text())["gpu"]["power_limit_max_w"] == 700.0


def test_info_with_fake_gpu_lists_the_sim_backend_as_available():
    result = runner.invoke(app, ["info", "--fake-gpu"])
    assert result.exit_code == 0, result.output
    sim = next(line for line in result.output.splitlines() if line.strip("│ ").startswith("sim "))
    assert "yes" in sim


@pytest.mark.tries("bad input", "CLI: report/publish paths: a file for a directory, a missing tree or --readme")
def test_report_and_publish_refuse_bad_paths_in_one_line(tmp_path):
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    cases = [
        (["report", str(a_file)], f"run directory {a_file} is not a directory"),
        (["publish", "--results", str(a_file)], f"results tree (--results) {a_file} is not a directory"),
        (["publish", "--results", str(tmp_path / "nope")], "results tree (--results) not found"),
        (["publish", "--readme", str(tmp_path / "no.md")], "no.md: no such file"),
        (["report", "--check", "results", "--readme", str(tmp_path / "no.md")], "no.md: no such file"),
        # a folder of runs where one run is meant: a run in it is named, and --check where it is a results tree
        (["report", str(ROOT / "results")], "results holds run directories, not a run: pass one of them, e.g. "),
        (["report", str(ROOT / "results")], "(a results tree: luce-bench report --check checks all of it)"),
        (["report", str(ROOT / "results" / "nvidia-h200")], "/nvidia-h200/2026"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert [ln for ln in result.output.splitlines() if ln.strip()] == [
            ln for ln in result.output.splitlines() if ln.startswith("error:")
        ]
    assert not (tmp_path / "nope").exists()
    ad_hoc = tmp_path / "res" / "runs" / "20270101T000000Z-sweep"  # ad-hoc runs only: no results tree to --check
    ad_hoc.mkdir(parents=True)
    (ad_hoc / "runs.csv").write_text("backend\n")
    result = runner.invoke(app, ["report", str(tmp_path / "res")])
    assert result.exit_code == 2 and f"pass one of them, e.g. {ad_hoc}" in result.output, result.output
    assert "--check" not in result.output


def test_publish_without_a_run_refuses_a_folder_that_is_no_results_tree(tmp_path):
    # a folder's results/ of ad-hoc runs: regenerating would write a README of 'no committed runs' into it
    adhoc = tmp_path / "results" / "runs" / "20261207-compare"
    adhoc.mkdir(parents=True)
    (adhoc / "runs.csv").write_text("x\n")
    result = runner.invoke(app, ["publish", "--results", str(tmp_path / "results")])
    assert result.exit_code == 2, result.output
    assert "is not a results tree" in result.output and "luce-bench publish RUN_DIR" in result.output
    assert sorted(p.name for p in (tmp_path / "results").iterdir()) == ["runs"]


def test_a_ctrl_c_while_the_cli_loads_is_interrupted_not_a_traceback():
    # a finder that raises KeyboardInterrupt when luce_bench.cli is imported stands for a Ctrl-C during the import
    import subprocess
    import sys

    code = (
        "import sys\n"
        "class CtrlC:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'luce_bench.cli':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, CtrlC())\n"
        "from luce_bench.entry import main\n"
        "main()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (130, "interrupted\n")


def test_a_ctrl_c_while_options_are_read_is_interrupted_not_a_traceback(monkeypatch, capsys):
    import luce_bench.cli as cli

    def ctrl_c() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "app", ctrl_c)
    handler = signal.getsignal(signal.SIGINT)  # main() leaves SIGINT at its default on the way out
    try:
        with pytest.raises(SystemExit) as exc:
            cli.main()
    finally:
        signal.signal(signal.SIGINT, handler)
    assert exc.value.code == 130 and capsys.readouterr().err == "interrupted\n"


def test_a_simulated_backends_pseudo_tokens_are_compared_with_nothing(tmp_path):
    args = ["compare", "--fake-gpu", "--no-megakernel", "--baselines", "sim,hf", "--model", "tiny"]
    args += ["--out", str(tmp_path), *FAST[:-1], "tg8", "-c", str(_quick_config(tmp_path))]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (run,) = tmp_path.glob("*-compare")
    meta = json.loads((run / "meta.json").read_text())
    assert {r["backend"] for r in csv.DictReader((run / "runs.csv").open())} == {"sim", "hf"}
    assert not meta.get("token_agreement") and "leading tokens" not in result.output


def test_in_a_pipe_a_long_line_stays_one_line_and_tables_keep_their_width(capsys, monkeypatch):
    """A log cut notes mid-sentence at 140 columns (grep then missed them); a table still fits PIPE_COLUMNS."""
    from rich.table import Table

    from luce_bench.cli.options import PIPE_COLUMNS, console

    monkeypatch.delenv("COLUMNS", raising=False)
    out = console()
    note = "note: " + " ".join(f"word{i}" for i in range(60))  # ~400 characters
    out.print(note, markup=False)
    table = Table("backend", "verdict")
    table.add_row("sim", "x " * 120)
    out.print(table)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == note
    assert all(len(line) <= PIPE_COLUMNS for line in lines[1:])
