from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.peers.node_process import NodeProcess
from tests.peers.orthanc import OrthancProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def start(name: str = "node", config: str | None = None, **settings: str) -> NodeProcess:
        n = NodeProcess(tmp_path / name, config, **settings).start()
        started.append(n)
        return n
    yield start
    for n in started:
        n.stop()


@pytest.fixture
def orthancs(tmp_path: Path) -> Iterator[list[OrthancProcess]]:
    """Orthancs a test creates are appended here and stopped (by PID) at the end."""
    made: list[OrthancProcess] = []
    yield made
    for o in made:
        o.stop()
