"""The node under test, started in this process (`async with running_node(tmp_path, **overrides) as node:`),
and the fake clock that pure parts are tested with.

It lives here, beside the two packages it is neither of: tests/peers/ holds the real programs the node
talks to (Orthanc, PostgreSQL, DCMTK, Ray, OHIF, Chromium, the node as a subprocess, a pynetdicom SCU)
and tests/builders/ the data the tests build (bundles, settings, records, mutants, reference CTs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from node.app import Node
from tests.builders.settings import node_settings


@asynccontextmanager
async def running_node(tmp_path: Path, config: str | None = None, **env: str) -> AsyncIterator[Node]:
    """A started Node on free loopback ports, its data under `tmp_path` (`config` and `env` as for
    `node_settings`), stopped on the way out. Also when `start()` raises part way: `stop()` closes what was
    opened, so a test of a failed start writes `with pytest.raises(...): async with running_node(...)`."""
    node = Node(node_settings(tmp_path, config, **env))
    try:
        await node.start()
        yield node
    finally:
        await node.stop()


class FakeClock:
    """A clock the test moves: `now=clock` where the code takes one (time.monotonic by default)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s
