"""The house's rules, read from the import statements (lazy ones included): Ray lives in one
wing (ibray/launch/), and analysis/ never imports ibray."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_only_the_launch_wing_imports_ray():
    importing = {
        path.relative_to(REPO).as_posix()
        for path in modules("ibray") + modules("analysis")
        if any(name == "ray" or name.startswith("ray.") for name in imports(path))
    }
    assert importing  # the wing does
    assert {name for name in importing if not name.startswith("ibray/launch/")} == set()


def test_analysis_never_imports_ibray():
    offenders = [p.name for p in modules("analysis") if any(n == "ibray" or n.startswith("ibray.") for n in imports(p))]
    assert offenders == []
