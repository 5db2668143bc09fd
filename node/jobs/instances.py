"""The instance write path: every received instance becomes a row of its study's open intake job."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Engine, Insert, Update, bindparam, create_engine, event, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import StaticPool

from node.jobs.engine import one_writer_sync, sqlite_pragmas
from node.jobs.models import Instance, Job, JobEventRow, utcnow
from node.jobs.records import InstanceRecord, JobEvent, RecordOutcome
from node.jobs.states import JobState
from node.jobs.writelock import WriterLock


def new_id() -> str:
    return uuid.uuid4().hex


class InstanceWriter:
    """Owns the hot path of intake: group commits from the loop, direct commits from association threads
    (SQLite only, on a second, synchronous engine), and the cache of each study's open intake job.

    Callers hold the store's WriterLock around `commit_blocking`; `record` takes it itself.
    """

    def __init__(self, engine: AsyncEngine, lock: WriterLock, *, in_thread: bool) -> None:
        self._engine = engine
        self._lock = lock
        self._pending: list[tuple[InstanceRecord, asyncio.Future[RecordOutcome]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._next_intakes: dict[str, str] = {}
        self._intakes: dict[str, str] = {}       # study UID -> its receiving job; kept by this writer only
        self._sync: Engine | None = None
        if in_thread and engine.dialect.name == "sqlite":
            self._sync = create_engine(engine.url.set(drivername="sqlite"), poolclass=StaticPool,
                                       connect_args={"check_same_thread": False})
            event.listen(self._sync, "connect", sqlite_pragmas)

    @property
    def in_thread(self) -> bool:
        """True when a non-loop thread may commit rows itself (SQLite); else writes go through the loop."""
        return self._sync is not None

    def close(self) -> None:
        if self._sync is not None:
            self._sync.dispose()

    def forget_intake(self, study_instance_uid: str, job_id: str) -> None:
        """The intake job left `receiving`: later instances of the study start a new intake."""
        if self._intakes.get(study_instance_uid) == job_id:
            del self._intakes[study_instance_uid]

    async def record(self, rec: InstanceRecord) -> RecordOutcome:
        """Add an instance to its study's open intake job (created if none). Idempotent per SOP UID.

        Calls that arrive while a write is in flight are committed together in the next transaction
        (group commit), so parallel associations share one commit instead of queueing for one each.
        """
        future: asyncio.Future[RecordOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((rec, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="record-flush")
        return await future

    def commit_blocking(self, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        """Commit `recs` on the synchronous engine, in this thread; the caller holds the writer lock."""
        assert self._sync is not None, "commit_blocking needs the SQLite engine (in_thread)"
        with self._sync.begin() as conn:
            outcomes = self._write(conn, recs)
        self._intakes = self._next_intakes              # the batch committed: its intakes are real
        return outcomes

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._commit([rec for rec, _ in batch])
            except Exception as exc:            # every waiter hears of the failure; none is acknowledged
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)

    async def _commit(self, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        async with self._lock.hold():
            if self._sync is not None:
                # SQLite: the whole batch in one thread hop on a plain sqlite3 connection; an aiosqlite
                # round trip per statement costs more than the SQL itself.
                return await asyncio.to_thread(self.commit_blocking, recs)
            async with self._engine.begin() as conn:
                outcomes = await conn.run_sync(self._write, recs)
            self._intakes = self._next_intakes          # the batch committed: its intakes are real
            return outcomes

    def _write(self, conn: Connection, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        """The rows of one batch within the caller's transaction: SQLAlchemy Core, but the two statements of
        every row straight on the DB-API connection with SQLite (_SqliteRows)."""
        add_instance, count_instances = _statements(conn.dialect.name)
        raw = _sqlite_rows(conn.dialect) if conn.dialect.name == "sqlite" else None
        dbapi = conn.connection.dbapi_connection if raw else None
        one_writer_sync(conn)
        outcomes: list[RecordOutcome] = []
        added: dict[str, int] = {}
        instances = Instance.__table__
        intakes = dict(self._intakes)          # published only after the commit succeeds
        for rec in recs:
            events: tuple[JobEvent, ...] = ()
            intake_id = intakes.get(rec.study_instance_uid) or self._open_intake(conn, rec.study_instance_uid)
            if intake_id is None:
                intake_id, events = self._new_intake(conn, rec)
            intakes[rec.study_instance_uid] = intake_id
            values = {"intake_id": intake_id, "received_at": utcnow(), **rec.instance_values()}
            added_row = raw.insert(dbapi, values) if raw else conn.execute(add_instance, values).rowcount == 1
            if added_row:
                added[intake_id] = added.get(intake_id, 0) + 1
                outcomes.append(RecordOutcome(intake_id, duplicate=False, events=events))
            else:
                first = conn.execute(select(instances.c.intake_id).where(
                    instances.c.sop_instance_uid == rec.sop_instance_uid)).scalar_one()
                outcomes.append(RecordOutcome(first, duplicate=True, events=events))
        now = utcnow()
        for intake_id, n in added.items():
            if raw:
                raw.count(dbapi, intake_id, n, now)
            else:
                conn.execute(count_instances, {"intake": intake_id, "n": n, "now": now})
        self._next_intakes = intakes
        return outcomes

    @staticmethod
    def _open_intake(conn: Connection, study_instance_uid: str) -> str | None:
        jobs = Job.__table__
        return conn.execute(select(jobs.c.id).where(jobs.c.study_instance_uid == study_instance_uid,
                                                    jobs.c.state == JobState.RECEIVING.value)
                            .order_by(jobs.c.created_at.desc()).limit(1)).scalar_one_or_none()

    @staticmethod
    def _new_intake(conn: Connection, rec: InstanceRecord) -> tuple[str, tuple[JobEvent, ...]]:
        job_id, now = new_id(), utcnow()
        detail = f"first instance from {rec.calling_ae}"
        conn.execute(Job.__table__.insert().values(
            id=job_id, intake_id=job_id, study_instance_uid=rec.study_instance_uid, state=JobState.RECEIVING.value,
            detail=detail, progress=None, rule="", model="", destinations=[], series_instance_uids=[],
            calling_ae=rec.calling_ae, modality=rec.modality, series_description=rec.series_description,
            patient_name=rec.patient_name, patient_id=rec.patient_id,
            instance_count=0, attempts=0, results={}, created_at=now, updated_at=now))
        result = conn.execute(JobEventRow.__table__.insert().values(
            job_id=job_id, study_instance_uid=rec.study_instance_uid, state=JobState.RECEIVING.value,
            progress=None, detail=detail, at=now))
        seq = int(result.inserted_primary_key[0])
        return job_id, (JobEvent(seq, job_id, rec.study_instance_uid, JobState.RECEIVING.value, None, detail, now),)


@functools.cache
def _statements(dialect: str) -> tuple[Insert, Update]:
    """The two statements of every instance row, built once per dialect: building a statement per row
    (and its cache key) cost more than the SQL itself."""
    insert = sqlite_insert if dialect == "sqlite" else pg_insert
    jobs = Job.__table__
    add = insert(Instance.__table__).on_conflict_do_nothing(index_elements=["sop_instance_uid"])
    count = (update(jobs).where(jobs.c.id == bindparam("intake"))
             .values(instance_count=jobs.c.instance_count + bindparam("n"), updated_at=bindparam("now")))
    return add, count


class _SqliteRows:
    """The two statements of every instance row, on SQLite straight through the DB-API connection of the
    caller's transaction: SQLAlchemy's execution context cost more than the SQL itself. Values go through
    the same bind processors SQLAlchemy uses, so the rows are the same (tests/integration/test_store.py)."""

    def __init__(self, dialect: Dialect) -> None:
        table = Instance.__table__
        self._columns = [c.name for c in table.columns]
        self._insert = (f"INSERT INTO {table.name} ({', '.join(self._columns)}) "
                        f"VALUES ({', '.join('?' * len(self._columns))}) ON CONFLICT (sop_instance_uid) DO NOTHING")
        self._update = (f"UPDATE {Job.__tablename__} SET instance_count = instance_count + ?, updated_at = ? "
                        f"WHERE id = ?")
        self._processors = {c.name: c.type.dialect_impl(dialect).bind_processor(dialect) for c in table.columns}
        self._when = Job.__table__.c.updated_at.type.dialect_impl(dialect).bind_processor(dialect)

    def insert(self, dbapi: Any, values: dict[str, Any]) -> bool:
        """True when the row was added (False: the SOP instance was already there)."""
        params = [values[c] if (f := self._processors[c]) is None else f(values[c]) for c in self._columns]
        cursor = dbapi.cursor()
        try:
            cursor.execute(self._insert, params)
            return int(cursor.rowcount) == 1
        finally:
            cursor.close()

    def count(self, dbapi: Any, intake_id: str, n: int, now: datetime) -> None:
        cursor = dbapi.cursor()
        try:
            cursor.execute(self._update, (n, now if self._when is None else self._when(now), intake_id))
        finally:
            cursor.close()


@functools.cache
def _sqlite_rows(dialect: Dialect) -> _SqliteRows:
    return _SqliteRows(dialect)
