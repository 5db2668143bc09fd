"""The job store's single-writer lock, shared by the event loop and association threads."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager


class WriterLock:
    """Writers take turns: SQLite has one writer anyway (two deferred transactions upgrading at once
    fail with "database is locked"), and the instance batcher's intake cache is only right if they do.
    Every write of the job store holds it: the store's own transactions, and whoever commits a batch of
    instance rows (node/jobs/instances.py).

    A thread lock, because on SQLite association threads commit instance rows themselves; the loop side
    waits for it in a worker thread, so the loop never blocks.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._lock.locked()

    @asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Hold the lock from the loop without ever blocking it; a cancelled waiter never keeps it."""
        if not self._lock.acquire(blocking=False):
            waiting = asyncio.ensure_future(asyncio.to_thread(self._lock.acquire))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:     # the thread still gets the lock: hand it straight back
                waiting.add_done_callback(lambda f: f.cancelled() or self._lock.release())
                raise
        try:
            yield
        finally:
            self._lock.release()

    @contextmanager
    def hold_blocking(self, timeout_s: float) -> Iterator[None]:
        """Hold the lock from a non-loop thread; TimeoutError when another writer keeps it for `timeout_s`."""
        if not self._lock.acquire(timeout=timeout_s):
            raise TimeoutError(f"job store busy for {timeout_s:g} s")
        try:
            yield
        finally:
            self._lock.release()
