"""`luce-bench report --check`: the committed results agree with their CSVs, else one line per problem and exit 1.

Most tests work on a copy of this repository's own results/ (real H100 runs) and a README holding the results block;
the first checks the repository itself, as CI does.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from luce_bench.cli import app
from luce_bench.published_tables import BEGIN, END

ROOT = Path(__file__).resolve().parent.parent
RUN = "nvidia-h100-80gb-hbm3/20261124-compare-v10-tagraw"
runner = CliRunner()


def _check(results: Path):
    return runner.invoke(app, ["report", "--check", str(results)])


def _lines(out) -> list[str]:
    return out.output.strip().splitlines()


def _copy_tree(src: Path, dest: Path) -> Path:
    """Copy the results tree `src` (less its runs/) and the README beside it into `dest`; the copy's results/."""
    shutil.copytree(src, dest / "results", ignore=shutil.ignore_patterns("runs"))
    shutil.copy(src.parent / "README.md", dest / "README.md")
    return dest / "results"


@pytest.fixture
def tree(tmp_path):
    """A copy of results/ and a README with the generated block, next to each other."""
    return _copy_tree(ROOT / "results", tmp_path)


def test_the_repository_results_agree_with_their_csvs():
    out = _check(ROOT / "results")
    assert out.exit_code == 0, out.output


def test_a_copy_elsewhere_agrees_once_regenerated(tree):
    out = _check(tree)  # the README's links are relative to where it lives: a copy must be regenerated
    assert out.exit_code == 0, out.output
    (tree.parent / "README.md").write_text(f"# x\n\n{BEGIN}\n{END}\n\nmore\n")
    assert _lines(_check(tree)) == [
        f"{tree.parent / 'README.md'} is stale against the committed CSVs (run `luce-bench publish --results {tree}`)"
    ]
    assert runner.invoke(app, ["publish", "--results", str(tree)]).exit_code == 0
    assert _check(tree).exit_code == 0
    text = (tree.parent / "README.md").read_text()
    assert text.startswith(f"# x\n\n{BEGIN}\n") and text.endswith(f"{END}\n\nmore\n")


@pytest.fixture(scope="module")
def newest_tree(tmp_path_factory):
    """A copy without the later runs of RUN's GPU, tables regenerated: RUN is its GPU's row in both READMEs."""
    results = _copy_tree(ROOT / "results", tmp_path_factory.mktemp("newest"))
    gpu, name = RUN.split("/")
    for later in (p for p in (results / gpu).iterdir() if p.is_dir() and p.name > name):
        shutil.rmtree(later)
    assert runner.invoke(app, ["publish", "--results", str(results)]).exit_code == 0
    assert _check(results).exit_code == 0
    return results


@pytest.fixture
def run_tree(newest_tree, tmp_path):
    """A fresh copy of `newest_tree` for one test to spoil."""
    return _copy_tree(newest_tree, tmp_path)


def _edit_cell(path: Path, row: int, column: str, value: str) -> None:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    rows[row][column] = value
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def test_editing_a_measurement_without_regenerating_fails_until_regenerated(run_tree):
    tree = run_tree
    run = tree / RUN
    with (run / "runs.csv").open(newline="") as f:
        row = list(csv.DictReader(f))[15]
    n_tokens, energy_j = float(row["n_tokens"]), float(row["energy_j"])
    # a llamacpp tg128 window changed by hand (453.797), its window and W changed to match (a row that contradicts
    # itself is refused: test_a_self_contradicting_row_is_refused_by_report_publish_and_check)
    _edit_cell(run / "runs.csv", 15, "avg_ts", "420")
    _edit_cell(run / "runs.csv", 15, "window_s", f"{n_tokens / 420:.6g}")
    _edit_cell(run / "runs.csv", 15, "mean_power_w", f"{energy_j / (n_tokens / 420):.6g}")
    tables = [
        f"{path} is stale against the committed CSVs (run `luce-bench publish --results {tree}`)"
        for path in (tree / "README.md", tree.parent / "README.md")
    ]
    out = _check(tree)
    assert out.exit_code == 1
    assert _lines(out) == [f"{run / 'summary.csv'} is stale against runs.csv (run `luce-bench report {run}`)", *tables]
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0  # the run's summary and report follow the CSV ...
    out = _check(tree)
    assert out.exit_code == 1 and _lines(out) == tables  # ... the published tables not yet
    assert runner.invoke(app, ["publish", "--results", str(tree)]).exit_code == 0
    assert _check(tree).exit_code == 0
    assert "| llamacpp | tg128 | 448.6 |" in (tree / "README.md").read_text()  # (420 + 450.162 + ... + 456.873) / 5


PROBLEMS = {  # what is done to the copy -> the start of the line that must name it
    "summary-edited": "{run}/summary.csv is stale against runs.csv",
    "report-edited": "{run}/report.md: missing or its table is stale",
    "report-note-edited": "{run}/report.md is stale: it differs from what `luce-bench report` writes now (run",
    "index-edited": "{tree}/README.md is stale against the committed CSVs",
    "no-meta": "{run}: no meta.json",
    "unknown-column": "{run}/runs.csv: not in the runs.csv schema: column(s) speedup",
    "bad-cell": "{run}/runs.csv line 3: column avg_ts: could not convert string to float: 'fast'",
    "missing-column": "{run}/summary.csv is not a luce-bench summary.csv (missing columns: n)",
    "no-markers": "{readme} has no <!-- results:begin --> ... <!-- results:end --> block",
    "no-rows": "{run}/runs.csv: no finished repetition",  # a run stopped before its first row
    "index-missing": "{tree}/README.md is missing (run `luce-bench publish",
    "publish-killed": "{tree}/nvidia-h200/.publish-4242-abc: left by a publish that did not finish",
    "row-twice": "{run}/runs.csv: line 4 repeats line 3 (megakernel pp520 at the limit in force, repetition 1)",
    "samples-corrupt": "{run}/samples.csv.gz is not a luce-bench samples.csv: Not a gzipped file",
}


@pytest.mark.tries("bad input", "report --check: stale, schema-breaking or meta-less results trees")
@pytest.mark.parametrize("case", list(PROBLEMS))
def test_each_problem_is_one_line_and_exit_1(case, run_tree):
    tree = run_tree
    run, readme = tree / RUN, tree.parent / "README.md"
    if case == "summary-edited":
        _edit_cell(run / "summary.csv", 0, "avg_ts", "1600")
    elif case == "report-edited":
        text = (run / "report.md").read_text()
        (run / "report.md").write_text(text.replace("1456.76 ± 1.45", "1556.76 ± 1.45"))
    elif case == "report-note-edited":  # outside the table: a line an older luce-bench wrote, or a hand edit
        text = (run / "report.md").read_text()
        assert "- git commit: " in text
        (run / "report.md").write_text(text.replace("- git commit: ", "- git commit (edited): "))
    elif case == "index-edited":
        (tree / "README.md").write_text((tree / "README.md").read_text().replace("1,456.8", "1,556.8"))
    elif case == "no-meta":
        (run / "meta.json").unlink()
    elif case == "unknown-column":
        text = (run / "runs.csv").read_text().splitlines()
        (run / "runs.csv").write_text("\n".join([text[0] + ",speedup", *(r + ",2" for r in text[1:])]) + "\n")
    elif case == "bad-cell":
        _edit_cell(run / "runs.csv", 1, "avg_ts", "fast")
    elif case == "no-rows":
        (run / "runs.csv").write_text((run / "runs.csv").read_text().splitlines()[0] + "\n")
    elif case == "index-missing":
        (tree / "README.md").unlink()
    elif case == "row-twice":  # (a copy of one repetition would be averaged in twice)
        text = (run / "runs.csv").read_text().splitlines()
        (run / "runs.csv").write_text("\n".join([*text[:3], text[2], *text[3:]]) + "\n")
    elif case == "publish-killed":
        (tree / "nvidia-h200" / ".publish-4242-abc" / "20261206-x").mkdir(parents=True)
        from luce_bench.files import host_tag  # a publish running now is not flagged

        (tree / "nvidia-h200" / f".publish-{os.getpid()}-{host_tag()}-x1y2" / "20261206-y").mkdir(parents=True)
    elif case == "samples-corrupt":  # (it went to the write-error handler: exit 4, "cannot write")
        (run / "samples.csv.gz").write_text("garbage\n")
    elif case == "missing-column":
        with (run / "summary.csv").open() as f:
            rows = [r for r in csv.reader(f)]
        i = rows[0].index("n")
        (run / "summary.csv").write_text("\n".join(",".join(r[:i] + r[i + 1 :]) for r in rows) + "\n")
    else:
        readme.write_text("# a README without the block\n")
    out = _check(tree)
    assert out.exit_code == 1
    lines = _lines(out)
    want = PROBLEMS[case].format(run=run, tree=tree, readme=readme)
    assert [ln for ln in lines if ln.startswith(want)], lines
    schema_broken = case in (
        "no-meta",
        "unknown-column",
        "bad-cell",
        "missing-column",
        "no-rows",
        "row-twice",
        "samples-corrupt",
    )
    assert lines[-1].endswith("generated tables not checked until the CSVs above read cleanly") == schema_broken
    assert len(lines) == 1 + schema_broken


@pytest.mark.tries("bad input", "report, publish, --check: impossible or self-contradicting runs.csv values")
@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("avg_ts", "-1594.51", "avg_ts = -1594.51 is negative"),
        ("tok_per_j", "nan", "column tok_per_j: 'nan' is not a finite number"),
        # the window's energy changed by hand: its tok/J no longer follows
        ("energy_j", "2000", "tok_per_j = 2.86186 is not n_tokens / energy_j"),
        ("window_s", "0", "window_s = 0 is not positive"),
        ("mean_power_w", "409.656", "mean_power_w = 409.656 is not energy_j / window_s = 509.65"),
        ("j_per_tok", "0.249423", "j_per_tok = 0.249423 is not energy_j / n_tokens = 0.349423"),
        ("verdict", "banana", "verdict 'banana': 'banana' is not a window's flag"),
        ("verdict", "temp-drift", "verdict 'temp-drift': temp-drift without a drift of 3 C"),  # 61 -> 64 C
        ("verdict", "ok;power-disagree", "power-disagree without counter vs sampled -0.547 %"),
    ],
)
def test_a_self_contradicting_row_is_refused_by_report_publish_and_check(run_tree, column, value, message):
    tree = run_tree
    run = tree / RUN
    _edit_cell(run / "runs.csv", 0, column, value)
    out = _check(tree)
    assert out.exit_code == 1 and any("runs.csv line 2: " in ln and message in ln for ln in _lines(out)), _lines(out)
    for args in (["report", str(run)], ["publish", "--results", str(tree)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and message in res.output, (args, res.output)
    assert "1,456.8" in (tree / "README.md").read_text()  # the published table was not rewritten


def test_a_repetition_there_twice_is_refused_by_report_and_publish(run_tree):
    run = run_tree / RUN
    text = (run / "runs.csv").read_text().splitlines()
    (run / "runs.csv").write_text("\n".join([*text, text[1]]) + "\n")
    for args in (["report", str(run)], ["publish", str(run), "--results", str(run_tree.parent / "elsewhere")]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and f"line {len(text) + 1} repeats line 2" in res.output, (args, res.output)


def test_a_missing_plot_is_named_with_the_command_that_makes_it(run_tree):
    # before, only the README was "stale": publishing dropped the plot's link for good
    run = run_tree / RUN
    (run / "tok_s.png").unlink()
    lines = _lines(_check(run_tree))
    assert f"{run / 'tok_s.png'}: missing, shown by report.md (run `luce-bench report {run}`)" in lines, lines
    assert not [t for t in lines if "report.md is stale" in t], lines  # report would write the same text: not stale
    assert runner.invoke(app, ["report", str(run)]).exit_code == 0
    assert (run / "tok_s.png").is_file() and _check(run_tree).exit_code == 0


@pytest.mark.tries("bad input", "report --check: committed runs that publish refuses (sweep, other GPU's folder)")
def test_a_committed_run_that_publish_would_refuse_is_flagged(run_tree):
    run = run_tree / RUN
    moved = run_tree / "nvidia-h200" / "20261124-moved"
    shutil.copytree(run, moved)
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "sweep": {"limits_w": [300]}}))
    (run / "status.json").write_text(json.dumps({"format": 1, "state": "finished", "exit_code": 0, "rows": 99}))
    lines = _lines(_check(run_tree))
    h100 = "nvidia-h100-80gb-hbm3"
    assert f"{moved}: in the folder of GPU 'nvidia-h200', but measured on '{h100}' (meta.json)" in lines, lines
    assert f"{run}: not a publishable run: it is a sweep; published tables hold runs at the limit in force " in "".join(
        lines
    ), lines
    rows = len((run / "runs.csv").read_text().splitlines()) - 1
    assert f"{run / 'runs.csv'}: holds {rows} rows where its status.json counted 99 measured" in lines, lines
    (run / "status.json").write_text("{")  # unreadable: one line for it, and the check goes on with the others
    out = _check(run_tree)
    assert out.exit_code == 1 and any(ln.startswith(f"{run / 'status.json'}") for ln in _lines(out)), out.output
    assert f"{moved}: in the folder of GPU 'nvidia-h200', but measured on '{h100}' (meta.json)" in _lines(out)


def test_a_missing_results_tree_is_bad_input(tmp_path):
    out = _check(tmp_path / "nope")
    assert out.exit_code == 2 and _lines(out) == [f"error: results directory not found: {tmp_path / 'nope'}"]
    (tmp_path / "a-file").write_text("x")
    out = _check(tmp_path / "a-file")
    assert out.exit_code == 2 and _lines(out) == [f"error: results directory {tmp_path / 'a-file'} is not a directory"]


def test_a_folder_without_published_runs_is_bad_input(tmp_path):
    """An empty folder, or the ad-hoc runs folder, is not a results tree: one line, not a README 'stale' to publish."""
    (tmp_path / "runs" / "20260101T000000Z-sweep").mkdir(parents=True)
    (tmp_path / "runs" / "20260101T000000Z-sweep" / "runs.csv").write_text("x\n")
    for folder in (tmp_path, tmp_path / "runs"):
        out = _check(folder)
        assert out.exit_code == 2, out.output
        assert _lines(out) == [
            f"error: {folder} is not a results tree: no <gpu>/<run>/ folder in it holds a run's files (give the "
            "folder that holds the published runs, e.g. results/)"
        ]
    one = tmp_path / "runs" / "20260101T000000Z-sweep"  # one run: named as one, with the command that fits it
    assert _lines(_check(one)) == [
        f"error: {one} is not a results tree: no <gpu>/<run>/ folder in it holds a run's files; it is one run "
        f"(luce-bench report {one} rebuilds its report)"
    ]


def test_meta_without_bandwidth_says_so_in_the_cell_and_a_recorded_one_gives_the_floor(tree):
    from luce_bench.published import load_run
    from luce_bench.published_tables import headline_rows

    run = tree / RUN
    rows = {(r[0], r[1]): r for r in headline_rows(load_run(run))}
    assert rows[("megakernel", "tg128")][9] == "n/a: no bandwidth in meta.json"
    assert rows[("megakernel", "pp520")][9] == "– (prefill)"
    meta = json.loads((run / "meta.json").read_text())
    meta["gpu"]["memory_bandwidth_gb_s"] = 3352.3  # what NVML gives on this H100: 5120 bits x 2619 MHz x 2
    (run / "meta.json").write_text(json.dumps(meta))
    rows = {(r[0], r[1]): r for r in headline_rows(load_run(run))}
    # 1456.76 tok/s of 3352.3e9 B/s / 1,504,786,048 B per token (no KV bytes recorded: weights only) = 2227.8
    assert rows[("megakernel", "tg128")][9] == "65 % of 2,228"
    assert rows[("llamacpp", "tg128")][9] == "20 % of 2,228"
