from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.synth.phantom import Phantom, make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.peers.bundles import build_bundle, build_threshold_bundle
from tests.peers.postgres import PostgresServer
from tests.peers.settings import node_settings

faulthandler.register(signal.SIGUSR2, all_threads=True)     # `kill -USR2 <pytest pid>`: every thread's stack


@pytest.fixture(autouse=True)
async def _tasks_on_sigusr1() -> AsyncIterator[None]:
    """`kill -USR1 <pytest pid>` prints every asyncio task's stack: what a hung async test is waiting for."""
    loop = asyncio.get_running_loop()

    def dump() -> None:
        for task in asyncio.all_tasks(loop):
            print(f"--- {task.get_name()}: {task!r}", file=sys.stderr)
            task.print_stack(file=sys.stderr)
    loop.add_signal_handler(signal.SIGUSR1, dump)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGUSR1)


@pytest.fixture(scope="session")
def small_phantom() -> Phantom:
    return make_phantom(slices=24, rows=64, seed=1)


@pytest.fixture
def ct_series(small_phantom: Phantom) -> list[Dataset]:
    """A fresh 24-slice CT series (new UIDs each time)."""
    return phantom_datasets(small_phantom, SeriesIds())


@pytest.fixture
def ct_files(tmp_path: Path, ct_series: list[Dataset]) -> list[Path]:
    return write_datasets(tmp_path / "ct", ct_series)


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    n = Node(node_settings(tmp_path))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture
async def store_node(tmp_path: Path, store_url: str) -> AsyncIterator[Node]:
    """A started Node on each job-store backend in turn (SQLite, PostgreSQL)."""
    n = Node(node_settings(tmp_path, store__url=store_url))
    await n.start()
    try:
        yield n
    finally:
        await n.stop()


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with two bundles the suite builds itself: a trained tiny UNet and a threshold net."""
    root = tmp_path_factory.mktemp("models")
    build_bundle(root / "phantom-unet", steps=60)
    build_threshold_bundle(root / "phantom-threshold")
    return root


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One throw-away PostgreSQL server for the session (each test gets its own database)."""
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The job store's URL, once per backend: SQLite in the test's folder, a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}"
    server: PostgresServer = request.getfixturevalue("postgres")
    return server.new_database()
