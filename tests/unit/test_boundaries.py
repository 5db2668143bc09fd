"""docs/architecture.md, every arrow: which part of the code may import which.

The node's parts follow the data flow: intake -> jobs <- compute <- results, delivery -> jobs. `jobs` is
the hub the others write through and imports none of them; the common modules (errors, settings,
fsutil, bridge, tcp, security) import no part, except that settings reads the rule and destination types it
validates. ai/ and viewer_api/ import nothing of node/; only node/app.py (the composition root) wires
viewer_api in. bench/ and tests/ share helpers only through tests/peers/, tests/builders/ and tests/support.py.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers.helpers import REPO

COMMON = {"node.errors", "node.fsutil", "node.config_keys", "node.bridge", "node.tcp", "node.security", "node.settings"}
SHARED = {"tests.peers", "tests.builders", "tests.support"}      # what tests/ and bench/ may import of tests/
PARTS = {"node.intake", "node.jobs", "node.compute", "node.results", "node.delivery"}

ALLOWED: dict[str, set[str]] = {
    "ai": set(),
    "viewer_api": set(),
    "node.errors": set(),
    "node.fsutil": set(),
    "node.bridge": set(),
    "node.tcp": set(),
    "node.config_keys": {"node.errors"},
    "node.security": {"node.errors"},
    "node.settings": {"node.errors", "node.config_keys", "node.security", "node.jobs.routing",
                      "node.delivery.destinations"},
    "node.synth": {"node.fsutil"},
    "node.jobs": COMMON,
    "node.intake": COMMON | {"node.jobs"},
    "node.compute": COMMON | {"node.jobs", "ai"},
    "node.results": COMMON | {"node.jobs", "node.compute", "ai"},
    "node.delivery": COMMON | {"node.jobs"},
    "node.service": COMMON | PARTS | {"ai"},
    "node.models_install": COMMON | {"ai"},
    "node.cli": COMMON | {"node.app", "node.synth", "node.models_install", "ai"},
    "node.app": COMMON | PARTS | {"node.service", "ai", "viewer_api"},
}
OURS = ("node", "ai", "viewer_api", "tests", "bench")


def unit_of(module: str) -> str:
    """The unit a dotted module name belongs to: `node.jobs.store` -> node.jobs, `ai.volume` -> ai."""
    parts = module.split(".")
    if parts[0] != "node":
        return parts[0]
    return ".".join(parts[:2])


def module_of(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def imports(path: Path) -> Iterator[str]:
    """Every absolute module this file imports, at the top or inside a function."""
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            yield from (a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            yield n.module
            yield from (f"{n.module}.{a.name}" for a in n.names)    # `from node.jobs import store`


def allowed(source: str, target: str) -> bool:
    if unit_of(target) == unit_of(source):
        return True
    rules = ALLOWED[unit_of(source)]
    return any(target == r or target.startswith(r + ".") for r in rules)


def violations(package: str) -> list[str]:
    out = []
    for path in sorted((REPO / package).rglob("*.py")):
        source = module_of(path)
        for target in imports(path):
            if target.split(".")[0] in OURS[:3] and _is_module(target) and not allowed(source, target):
                out.append(f"{path.relative_to(REPO)} imports {target}")
    return out


def _is_module(name: str) -> bool:
    """`from node.jobs.store import JobStore` yields node.jobs.store.JobStore too; keep only real modules."""
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


@pytest.mark.parametrize("package", ["node", "ai", "viewer_api"])
def test_every_import_follows_an_arrow_of_the_design(package: str) -> None:
    assert violations(package) == []


def test_every_module_of_the_node_belongs_to_a_known_part() -> None:
    units = {unit_of(module_of(p)) for p in (REPO / "node").rglob("*.py")} - {"node"}
    assert units <= set(ALLOWED), f"new part(s) {units - set(ALLOWED)}: add them to ALLOWED with their arrows"


@pytest.mark.parametrize("package", ["tests", "bench"])
def test_tests_and_benchmarks_share_code_only_through_the_shared_test_modules(package: str) -> None:
    offenders = [f"{p.relative_to(REPO)} imports {t}" for p in (REPO / package).rglob("*.py")
                 for t in imports(p) if t.startswith("tests.") and ".".join(t.split(".")[:2]) not in SHARED]
    assert offenders == []


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check itself: an arrow against the flow (jobs -> intake) is reported."""
    assert not allowed("node.jobs.store", "node.intake.door.spool")
    assert not allowed("viewer_api.views", "node.jobs.store")
    assert allowed("node.intake.server.receiver", "node.jobs.store")


# node/intake in layers (docs/architecture.md): the wire knows no other layer; the door speaks the wire's
# statuses; the association server joins the wire to the door; the loop side (ingest, assembly) takes what the
# door recorded. No layer imports the server: STOW-RS and retrieval are to call the same door.
INTAKE_LAYERS: dict[str, set[str]] = {
    "wire": set(),
    "door": {"wire"},
    "server": {"wire", "door"},
    "loop": {"door"},
}


def intake_layer(module: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) >= 3 and parts[2] in INTAKE_LAYERS else "loop"


def test_every_import_inside_intake_follows_a_layer_arrow() -> None:
    offenders = []
    for path in sorted((REPO / "node" / "intake").rglob("*.py")):
        source = module_of(path)
        for target in imports(path):
            if target.startswith("node.intake.") and _is_module(target):
                a, b = intake_layer(source), intake_layer(target)
                if a != b and b not in INTAKE_LAYERS[a]:
                    offenders.append(f"{path.relative_to(REPO)} ({a}) imports {target} ({b})")
    assert offenders == []


def test_the_layer_check_sees_a_forbidden_import() -> None:
    assert intake_layer("node.intake.wire.messages") == "wire"
    assert intake_layer("node.intake.ingest") == "loop"
    assert "server" not in INTAKE_LAYERS["door"] and "door" not in INTAKE_LAYERS["wire"]
