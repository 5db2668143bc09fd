"""The SQL of one batch of instance rows, run inside its committer's transaction (node/jobs/instances.py):
each row joins its study's open intake job, created if there is none. No locking, no caching: the
caller holds the writer lock and owns the intake map it passes in."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Dialect, Insert, Update, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from node.jobs.engine import one_writer_sync
from node.jobs.models import Instance, Job, JobEventRow, utcnow
from node.jobs.records import InstanceRecord, JobEvent, RecordOutcome
from node.jobs.states import JobState


def new_id() -> str:
    return uuid.uuid4().hex


def write_rows(conn: Connection, recs: Sequence[InstanceRecord],
               intakes: Mapping[str, str]) -> tuple[list[RecordOutcome], dict[str, str]]:
    """Write the rows of `recs` in the caller's transaction, with SQLAlchemy Core (on SQLite, the two
    statements of every row straight on the DB-API connection: _SqliteRows).

    `intakes` maps a study UID to its receiving job as the caller knows it; returned with each row's
    outcome is that map as it will be once this transaction commits (the caller keeps it only then).
    """
    add_instance, count_instances = _statements(conn.dialect.name)
    raw = _sqlite_rows(conn.dialect) if conn.dialect.name == "sqlite" else None
    dbapi = conn.connection.dbapi_connection if raw else None
    one_writer_sync(conn)
    outcomes: list[RecordOutcome] = []
    added: dict[str, int] = {}
    instances = Instance.__table__
    after = dict(intakes)
    for rec in recs:
        events: tuple[JobEvent, ...] = ()
        intake_id = after.get(rec.study_instance_uid) or _open_intake(conn, rec.study_instance_uid)
        if intake_id is None:
            intake_id, events = _new_intake(conn, rec)
        after[rec.study_instance_uid] = intake_id
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
    return outcomes, after


def _open_intake(conn: Connection, study_instance_uid: str) -> str | None:
    jobs = Job.__table__
    return conn.execute(select(jobs.c.id).where(jobs.c.study_instance_uid == study_instance_uid,
                                                jobs.c.state == JobState.RECEIVING.value)
                        .order_by(jobs.c.created_at.desc()).limit(1)).scalar_one_or_none()


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
    the same bind processors SQLAlchemy uses, so the rows are the ones SQLAlchemy would write
    (tests/integration/test_store.py holds them equal)."""

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
