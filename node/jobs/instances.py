"""The instance write path: one batcher commits the row of every received instance, together with the
rows waiting at the same moment (group commit), and owns the cache of each study's open intake job."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from node.bridge import LoopBridge
from node.errors import SegnodeError
from node.jobs.engine import sqlite_pragmas
from node.jobs.records import InstanceRecord, RecordOutcome
from node.jobs.rows import write_rows
from node.jobs.writelock import WriterLock


class RecordFailed(SegnodeError):
    """An instance row that was not committed: the transaction of its batch failed (the cause is chained)."""


@dataclass(frozen=True, slots=True)
class GroupCommitStats:
    """How the batcher has committed so far: `rows / transactions` is the mean batch size."""

    transactions: int           # batches committed
    rows: int                   # rows in them, duplicates included
    waiting: int                # rows queued for the writer lock now


@dataclass(eq=False, slots=True)
class _Row:
    """One caller's instance, queued until a holder of the writer lock commits it."""

    rec: InstanceRecord
    woken: asyncio.Future[None] | None = None     # a loop caller's (the loop commits); a thread waits on the lock
    outcome: RecordOutcome | None = None
    error: BaseException | None = None

    @property
    def settled(self) -> bool:
        return self.outcome is not None or self.error is not None

    def result(self) -> RecordOutcome:
        if self.error is not None:
            raise RecordFailed(f"the instance row was not committed ({type(self.error).__name__})") from self.error
        assert self.outcome is not None
        return self.outcome


class InstanceBatcher:
    """The one writer of instance rows (and of the intake jobs they open), for the loop and for threads.

    The rule: a row is written only by a holder of the writer lock, who takes every row queued at that
    moment and commits them in one transaction; each caller then reads its own outcome. A caller that gets
    the lock finds its row settled, or commits the queue itself. The intake cache (study UID -> its
    receiving job) is read and replaced under the same lock, and only after a commit.

    Who commits depends on the engine. SQLite (`in_thread`): the waiting threads themselves, on a
    synchronous sqlite3 engine, with no hop through the loop; the loop's entry waits in a worker thread
    like any other. PostgreSQL (asyncpg has no blocking API), or SQLite without `in_thread`: a flush task
    on the loop, on the async engine; a thread's entry reaches it through the bridge.
    """

    def __init__(self, engine: AsyncEngine, lock: WriterLock, bridge: LoopBridge, *, timeout_s: float,
                 in_thread: bool) -> None:
        self._engine = engine
        self._lock = lock
        self._bridge = bridge
        self._timeout_s = timeout_s
        self._queue: list[_Row] = []
        self._queue_lock = threading.Lock()
        self._intakes: dict[str, str] = {}
        self._transactions = 0
        self._rows = 0
        self._flusher: asyncio.Task[None] | None = None
        self._sync: Engine | None = None
        if in_thread and engine.dialect.name == "sqlite":
            self._sync = create_engine(engine.url.set(drivername="sqlite"), poolclass=StaticPool,
                                       connect_args={"check_same_thread": False})
            event.listen(self._sync, "connect", sqlite_pragmas)

    # -- the two entries ------------------------------------------------------------------------
    def record_blocking(self, rec: InstanceRecord) -> RecordOutcome:
        """From a thread that is not the loop's (an association): add `rec` to its study's open intake job
        (created if none) and return once the row has committed. Idempotent per SOP Instance UID.

        Raises TimeoutError when the writer lock (or, committing on the loop, the loop) stays busy for
        `timeout_s`, RecordFailed when the transaction fails: in both cases the row is not acknowledged.
        """
        if self._sync is None:
            return self._bridge.call(self.record, rec)
        row = _Row(rec)
        with self._queue_lock:
            self._queue.append(row)
        try:
            with self._lock.hold_blocking(self._timeout_s):
                if not row.settled:
                    self._commit_in_thread(self._take())
        except TimeoutError:
            if not self._withdraw(row) and row.settled:    # committed by another holder just in time
                return row.result()
            raise
        return row.result()

    async def record(self, rec: InstanceRecord) -> RecordOutcome:
        """`record_blocking` for the loop. Raises RecordFailed when the transaction fails."""
        if self._sync is not None:
            return await asyncio.to_thread(self.record_blocking, rec)
        row = _Row(rec, asyncio.get_running_loop().create_future())
        with self._queue_lock:
            self._queue.append(row)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="instance-rows")
        try:
            await row.woken
        except asyncio.CancelledError:           # e.g. the bridge's timeout: not committed unless already taken
            self._withdraw(row)
            raise
        return row.result()

    # -- for the store's state changes ----------------------------------------------------------
    def intake_closed(self, study_instance_uid: str, job_id: str) -> None:
        """Job `job_id` left `receiving`: the study's next instance opens a new intake job. Call it holding
        the writer lock (JobStore._move does), so no batch is being written meanwhile."""
        if self._intakes.get(study_instance_uid) == job_id:
            del self._intakes[study_instance_uid]

    def stats(self) -> GroupCommitStats:
        with self._queue_lock:
            waiting = len(self._queue)
        return GroupCommitStats(self._transactions, self._rows, waiting)

    async def close(self) -> None:
        """Let the rows queued on the loop finish, then close the synchronous engine."""
        if self._flusher is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        if self._sync is not None:
            self._sync.dispose()

    # -- committing (the caller holds the writer lock) ------------------------------------------
    def _take(self) -> list[_Row]:
        with self._queue_lock:
            batch, self._queue = self._queue, []
        return batch

    def _withdraw(self, row: _Row) -> bool:
        """Take back a row nobody has taken to commit yet; False if one has."""
        with self._queue_lock:
            if row in self._queue:
                self._queue.remove(row)
                return True
        return False

    def _commit_in_thread(self, batch: Sequence[_Row]) -> None:
        assert self._sync is not None
        try:
            with self._sync.begin() as conn:
                outcomes, intakes = write_rows(conn, [r.rec for r in batch], self._intakes)
        except BaseException as exc:
            self._settle_failed(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._settle(batch, outcomes, intakes)

    async def _flush(self) -> None:
        """The loop's committer: while rows wait, hold the lock, take them all, commit them together."""
        while self._queue:
            async with self._lock.hold():
                batch = self._take()
                if not batch:
                    continue
                try:
                    async with self._engine.begin() as conn:
                        outcomes, intakes = await conn.run_sync(write_rows, [r.rec for r in batch], self._intakes)
                except BaseException as exc:     # every waiter hears of it, none is acknowledged
                    self._settle_failed(batch, exc)
                    if not isinstance(exc, Exception):
                        raise
                else:
                    self._settle(batch, outcomes, intakes)
                finally:
                    for row in batch:
                        if row.woken is not None and not row.woken.done():
                            row.woken.set_result(None)

    def _settle(self, batch: Sequence[_Row], outcomes: Sequence[RecordOutcome], intakes: dict[str, str]) -> None:
        self._intakes = intakes                  # the batch committed: its intake jobs exist
        self._transactions += 1
        self._rows += len(batch)
        for row, outcome in zip(batch, outcomes, strict=True):
            row.outcome = outcome

    @staticmethod
    def _settle_failed(batch: Sequence[_Row], exc: BaseException) -> None:
        for row in batch:
            row.error = exc
