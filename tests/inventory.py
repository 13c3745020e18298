"""The table of faults and bad inputs the suite tries, counted from the tests themselves (tests/README.md).

Every such test carries `@pytest.mark.tries(kind, what)`. This collects the suite (nothing runs) and counts, per
(kind, what), the collected test ids and the hypothesis examples they may draw (max_examples of the derandomized
profile, conftest.py). `python tests/inventory.py` prints the table; `--write` replaces it in tests/README.md between
its markers; tests/test_inventory.py fails when the README's table is out of date.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
BEGIN, END = "<!-- inventory:begin -->", "<!-- inventory:end -->"


def collect() -> list[list]:
    """[kind, what, test id, max_examples or None] of every `tries`-marked test (a pytest collection run)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "inventory.json"
        env = {**os.environ, "LUCE_BENCH_INVENTORY": str(out)}
        cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", str(HERE)]
        done = subprocess.run(cmd, env=env, cwd=HERE.parent, capture_output=True, text=True, timeout=600)
        if not out.is_file():
            raise RuntimeError(f"collection failed:\n{done.stdout}\n{done.stderr}")
        return json.loads(out.read_text())


def table(items: list[list]) -> str:
    """The markdown table: kind, what is tried, test ids, hypothesis examples (0 when none)."""
    rows: dict[tuple[str, str], list[int]] = {}
    for kind, what, _test, examples in items:
        counts = rows.setdefault((kind, what), [0, 0])
        counts[0] += 1
        counts[1] += examples or 0
    lines = ["| kind | what the suite tries | tests | hypothesis examples (max_examples) |", "|---|---|---:|---:|"]
    for (kind, what), (tests, examples) in sorted(rows.items()):
        lines.append(f"| {kind} | {what} | {tests} | {examples} |")
    total_tests = sum(c[0] for c in rows.values())
    total_examples = sum(c[1] for c in rows.values())
    lines.append(f"| **total** | {len(rows)} kinds of fault and bad input | **{total_tests}** | **{total_examples}** |")
    return "\n".join(lines)


def readme_table(text: str) -> str:
    """The table between the markers of tests/README.md."""
    return text.split(BEGIN, 1)[1].split(END, 1)[0].strip()


def write(text_table: str) -> None:
    """Replace the table in tests/README.md."""
    text = README.read_text()
    head, rest = text.split(BEGIN, 1)
    README.write_text(f"{head}{BEGIN}\n{text_table}\n{END}{rest.split(END, 1)[1]}")


if __name__ == "__main__":
    generated = table(collect())
    if "--write" in sys.argv:
        write(generated)
    print(generated)
