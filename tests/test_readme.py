"""The README's reliability table names tests that exist: a promise whose test was renamed or
removed would otherwise stand unchecked."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_test_the_reliability_table_names_exists():
    text = (REPO / "README.md").read_text()
    table = text[text.index("## Reliability") : text.index("\n## ", text.index("## Reliability") + 3)]
    named = []
    for cell in re.findall(r"\| ([^|]*`[^|]*) \|\n", table):
        current = None
        for file, test in re.findall(r"`(test_\w+\.py)?::(test_\w+)`", cell):
            current = file or current  # `::name` continues the file named before it
            named.append((current, test))
    assert len(named) >= 15
    missing = [f"{file}::{test}" for file, test in named if f"def {test}(" not in (REPO / "tests" / file).read_text()]
    assert not missing
