"""DESIGN.md section 2: ai/ and viewer_api/ never import node/; only node/app.py wires viewer_api in."""

import ast
from pathlib import Path

import pytest

from tests.peers.helpers import REPO


def imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Import):
            names |= {a.name.split(".")[0] for a in n.names}
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.add(n.module.split(".")[0])
    return names


@pytest.mark.parametrize(("package", "forbidden"), [("ai", {"node", "viewer_api"}), ("viewer_api", {"node", "ai"})])
def test_leaf_packages_do_not_import_the_node(package: str, forbidden: set[str]) -> None:
    files = list((REPO / package).rglob("*.py"))
    assert files
    for path in files:
        assert not imported_packages(path) & forbidden, f"{path.relative_to(REPO)} imports {forbidden}"


def test_only_the_composition_root_imports_viewer_api() -> None:
    offenders = [p.relative_to(REPO) for p in (REPO / "node").rglob("*.py")
                 if p.name != "app.py" and "viewer_api" in imported_packages(p)]
    assert offenders == []
