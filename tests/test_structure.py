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


def module_graph() -> dict[str, set[str]]:
    """ibray's and analysis' modules and the project modules each imports."""
    names = {}
    for path in modules("ibray") + modules("analysis"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        names[name] = path
    graph = {}
    for name, path in names.items():
        targets = set()
        for imported in imports(path):
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and imported not in ("ibray", "analysis"):
                targets.add(imported)
        graph[name] = targets
    return graph


def test_no_import_circle():
    graph = module_graph()
    state, circles = {}, []

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                circles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert circles == []


def test_verify_and_the_sweep_loader_start_without_torch():
    import subprocess
    import sys

    code = "import sys, ibray.verify, ibray.sweep, ibray.config; print(sorted(m for m in ('torch', 'ray') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"


def test_the_sweep_driver_starts_without_torch():
    # the driver runs no trial: torch (seconds of import) is for the trial workers, and for a
    # driver only where a sweep asks for GPUs (to count them before an embedded Ray starts)
    import subprocess
    import sys

    code = (
        "import sys, ibray.cli, ibray.launch.launcher, ibray.launch.trainable; "
        "print(sorted(m for m in ('torch', 'ibray.run', 'ibray.trainer', 'ray.tune') if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "['ray.tune']"  # the launcher's own, and nothing of training


def test_a_mistyped_trial_command_fails_before_torch_is_imported(tmp_path):
    # `ibray trial` checks its flags, data file and --out first: a mistake costs no torch import
    import subprocess
    import sys

    (tmp_path / "afile").write_text("")
    cases = [
        ["trial", "--learning-rate", "inf", "--out", str(tmp_path / "a")],
        ["trial", "--out", str(tmp_path / "afile")],
        ["trial", "--dataset", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "b")],
    ]
    code = (
        "import contextlib, io, sys; from ibray.cli import main\n"
        f"for argv in {cases!r}:\n"
        "    with contextlib.redirect_stderr(io.StringIO()):\n"
        "        print(main(argv), 'torch' in sys.modules)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert run.stdout.split("\n")[:3] == ["2 False"] * 3, run.stdout + run.stderr
