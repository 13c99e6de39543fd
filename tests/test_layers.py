"""The package's layers import one way: workflow -> plan/qa -> science -> io -> core.

Each module's folder is its layer; a module may import only the layers listed for it. This
test reads every module's imports (including those inside functions) from its source.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kpfmasters"
ALLOWED = {
    "core": {"core"},
    "io": {"core", "io"},
    "db": {"core", "io", "db"},
    "science": {"core", "io", "science"},
    "sim": {"core", "io", "science", "sim"},
    "plan": {"core", "io", "science", "db", "plan"},
    "qa": {"core", "io", "science", "qa"},
    "workflow": {"core", "io", "science", "db", "plan", "qa", "sim", "workflow"},
    "commands": {"core", "io", "science", "db", "plan", "qa", "sim", "workflow", "commands"},
}


def imported_layers(path: Path) -> set[str]:
    """Layers (first package level under kpfmasters) that the module at ``path`` imports."""
    layers = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "kpfmasters" and len(parts) > 1 and parts[1] in ALLOWED:
                layers.add(parts[1])
    return layers


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.parent != PACKAGE)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_the_layers_below_it(path):
    layer = path.relative_to(PACKAGE).parts[0]
    assert layer in ALLOWED, f"{path}: folder {layer!r} is not a known layer"
    wrong = imported_layers(path) - ALLOWED[layer]
    assert not wrong, f"{path.relative_to(PACKAGE)} ({layer}) imports {sorted(wrong)}"


def test_no_relative_imports_hide_a_layer():
    """Relative imports would escape the check above: the package uses absolute ones."""
    relative = [
        f"{p.relative_to(PACKAGE)}:{n.lineno}"
        for p in MODULES
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, ast.ImportFrom) and n.level > 0
    ]
    assert not relative, relative
