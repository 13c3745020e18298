"""tests/README.md's table of faults and bad inputs is the one the suite's markers give today (tests/inventory.py)."""

from __future__ import annotations

import inventory


def test_the_readme_table_counts_what_the_suite_tries():
    items = inventory.collect()
    assert items and {kind for kind, *_ in items} == {"bad input", "fault"}
    assert inventory.readme_table(inventory.README.read_text()) == inventory.table(items), (
        "tests/README.md is out of date: run `python tests/inventory.py --write`"
    )
