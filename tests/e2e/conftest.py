from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.node_process import NodeProcess

pytestmark = pytest.mark.e2e


@pytest.fixture
def start_node(tmp_path: Path) -> Iterator[Callable[..., NodeProcess]]:
    started: list[NodeProcess] = []

    def start(name: str = "node", **settings: str) -> NodeProcess:
        n = NodeProcess(tmp_path / name, **settings).start()
        started.append(n)
        return n
    yield start
    for n in started:
        n.stop()
