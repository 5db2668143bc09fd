from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from node.app import Node
from node.synth.phantom import Phantom, make_phantom
from node.synth.series import SeriesIds, phantom_datasets, write_datasets
from tests.builders.bundles import build_bundle, build_threshold_bundle
from tests.builders.certs import TestPKI, make_pki
from tests.peers.postgres import PostgresServer
from tests.support import running_node

# Diagnostics for a hung run (pytest captures fd 2, so they go to a file): `kill -USR2 <pytest pid>` writes
# every thread's stack, `kill -USR1` every asyncio task's, to $TMPDIR/segnode-pytest-stacks.txt (one file,
# appended to, so runs leave no litter; each USR1 dump starts with the pid).
STACKS = open(Path(tempfile.gettempdir()) / "segnode-pytest-stacks.txt", "a")  # noqa: SIM115
faulthandler.register(signal.SIGUSR2, file=STACKS, all_threads=True)


def _dump_tasks(_signum: int, _frame: object) -> None:
    """Every asyncio task's stack: what a hung async test is waiting for. A plain signal handler: it runs
    on the main thread, where the tests' event loop runs."""
    print(f"=== pytest pid {os.getpid()}: asyncio tasks", file=STACKS)
    try:
        tasks = asyncio.all_tasks()
    except RuntimeError:
        print("SIGUSR1: no event loop is running", file=STACKS)
        return
    for task in tasks:
        print(f"--- {task.get_name()}: {task!r}", file=STACKS)
        task.print_stack(file=STACKS)
    STACKS.flush()


signal.signal(signal.SIGUSR1, _dump_tasks)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """A test PKI made once per session with the openssl CLI (tests/builders/certs.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))


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
    async with running_node(tmp_path) as n:
        yield n


@pytest.fixture
async def store_node(tmp_path: Path, store_url: str) -> AsyncIterator[Node]:
    """A started Node on each job-store backend in turn (SQLite, PostgreSQL)."""
    async with running_node(tmp_path, store__url=store_url) as n:
        yield n


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
