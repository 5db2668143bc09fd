"""JobStore: the only writer of jobs, instances and job events. The database is the queue."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.pool import StaticPool

from node.errors import InvalidTransition, JobNotFound
from node.jobs.models import AuditRow, Instance, Job, JobEventRow, utcnow
from node.jobs.schema import upgrade as upgrade_schema
from node.jobs.states import ALLOWED, JobState
from node.routing import RoutingOutcome, SeriesInfo


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo else at.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class JobEvent:
    seq: int
    job_id: str
    study_instance_uid: str
    state: str
    progress: float | None
    detail: str
    at: datetime
    data: dict[str, Any] | None = field(default=None, compare=False)   # e.g. "delivered" on `done`

    @classmethod
    def of(cls, row: JobEventRow) -> JobEvent:
        return cls(row.seq, row.job_id, row.study_instance_uid, row.state, row.progress, row.detail,
                   _aware(row.at), row.data)

    def as_message(self) -> dict[str, Any]:
        return {"seq": self.seq, "job_id": self.job_id, "study_instance_uid": self.study_instance_uid,
                "state": self.state, "progress": self.progress, "detail": self.detail,
                "at": self.at.isoformat(), **(self.data or {})}


@dataclass(frozen=True, slots=True)
class JobView:
    id: str
    study_instance_uid: str
    intake_id: str
    state: str
    detail: str
    progress: float | None
    rule: str
    model: str
    destinations: tuple[str, ...]
    series_instance_uids: tuple[str, ...]
    calling_ae: str
    modality: str
    series_description: str
    instance_count: int
    attempts: int
    results: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    patient_name: str = ""
    patient_id: str = ""

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.study_instance_uid, job.intake_id, job.state, job.detail, job.progress,
                   job.rule, job.model, tuple(job.destinations or ()), tuple(job.series_instance_uids or ()),
                   job.calling_ae, job.modality, job.series_description, job.instance_count, job.attempts,
                   dict(job.results or {}), _aware(job.created_at), _aware(job.updated_at),
                   job.patient_name or "", job.patient_id or "")

    def as_dict(self, *, phi: bool = False) -> dict[str, Any]:
        """JSON view; patient name and ID only when `phi` (the admin role)."""
        out = self._public()
        if phi:
            out.update(patient_name=self.patient_name, patient_id=self.patient_id)
        return out

    def _public(self) -> dict[str, Any]:
        return {"id": self.id, "study_instance_uid": self.study_instance_uid, "state": self.state,
                "detail": self.detail, "progress": self.progress, "rule": self.rule, "model": self.model,
                "destinations": list(self.destinations), "series_instance_uids": list(self.series_instance_uids),
                "calling_ae": self.calling_ae, "modality": self.modality,
                "series_description": self.series_description, "instance_count": self.instance_count,
                "attempts": self.attempts, "results": self.results,
                "created_at": self.created_at.isoformat(), "updated_at": self.updated_at.isoformat()}


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size: int
    calling_ae: str
    modality: str = ""
    body_part_examined: str = ""
    series_description: str = ""
    patient_name: str = ""       # PHI: kept on the job for the admin view only, never logged
    patient_id: str = ""

    def instance_values(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__ if not k.startswith("patient_")}


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    intake_id: str
    duplicate: bool
    events: tuple[JobEvent, ...] = field(default=())


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL survives a process crash; after a power cut the spool files (fsynced before
    # the row) are reconciled into the store at start-up.
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def new_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Async store over SQLAlchemy 2. SQLite (WAL) by default; PostgreSQL by URL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        # Writers take turns: SQLite has one writer anyway (and two deferred transactions upgrading at
        # once fail with "database is locked"), and the intake cache below is only right if they do.
        # A thread lock, because association threads record instances directly (record_instance_blocking).
        self._write_lock = threading.Lock()
        self._pending: list[tuple[InstanceRecord, asyncio.Future[RecordOutcome]]] = []
        self._flusher: asyncio.Task[None] | None = None
        self._ingest_engine: Engine | None = None
        self._next_intakes: dict[str, str] = {}
        self._intakes: dict[str, str] = {}       # study UID -> its receiving job; kept by this store only

    @asynccontextmanager
    async def _write_guard(self) -> AsyncIterator[None]:
        """Hold the writer lock from the loop without ever blocking it."""
        if not self._write_lock.acquire(blocking=False):
            waiting = asyncio.ensure_future(asyncio.to_thread(self._write_lock.acquire))
            try:
                await asyncio.shield(waiting)
            except asyncio.CancelledError:     # the thread still gets the lock: hand it straight back
                waiting.add_done_callback(lambda f: f.cancelled() or self._write_lock.release())
                raise
        try:
            yield
        finally:
            self._write_lock.release()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        async with self._write_guard(), self._session() as s, s.begin():
            yield s

    @property
    def records_in_thread(self) -> bool:
        """True when record_instance_blocking is available (SQLite): association threads commit directly."""
        return self._ingest_engine is not None

    def record_instance_blocking(self, rec: InstanceRecord, timeout_s: float) -> RecordOutcome:
        """record_instance for a non-loop thread (a pynetdicom association): commit the row in this thread,
        with no hop through the event loop. Raises TimeoutError when the store stays busy for `timeout_s`."""
        assert self._ingest_engine is not None, "record_instance_blocking needs the SQLite ingest engine"
        if not self._write_lock.acquire(timeout=timeout_s):
            raise TimeoutError(f"job store busy for {timeout_s:g} s")
        try:
            return self._commit_records([rec])[0]
        finally:
            self._write_lock.release()

    @classmethod
    async def open(cls, url: str) -> JobStore:
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        async with engine.begin() as conn:
            await conn.run_sync(upgrade_schema)
        store = cls(engine)
        if engine.dialect.name == "sqlite":
            store._ingest_engine = create_engine(engine.url.set(drivername="sqlite"), poolclass=StaticPool,
                                                 connect_args={"check_same_thread": False})
            event.listen(store._ingest_engine, "connect", _sqlite_pragmas)
        return store

    async def close(self) -> None:
        if self._ingest_engine is not None:
            self._ingest_engine.dispose()
        await self.engine.dispose()

    # -- writers --------------------------------------------------------------------------------
    @staticmethod
    def _event(s: AsyncSession, job: Job, detail: str, progress: float | None = None,
               data: dict[str, Any] | None = None) -> JobEventRow:
        row = JobEventRow(job_id=job.id, study_instance_uid=job.study_instance_uid, state=job.state,
                          progress=progress, detail=detail[:2000], at=utcnow(), data=data)
        s.add(row)
        return row

    async def record_instance(self, rec: InstanceRecord) -> RecordOutcome:
        """Add a received instance to its study's open intake job (created if none). Idempotent per SOP UID.

        Calls that arrive while a write is in flight are committed together in the next transaction
        (group commit), so parallel associations share one commit instead of queueing for one each.
        """
        future: asyncio.Future[RecordOutcome] = asyncio.get_running_loop().create_future()
        self._pending.append((rec, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_records(), name="record-flush")
        return await future

    async def _flush_records(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                outcomes = await self._write_records([rec for rec, _ in batch])
            except Exception as exc:            # every waiter hears of the failure; none is acknowledged
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), outcome in zip(batch, outcomes, strict=True):
                if not fut.done():
                    fut.set_result(outcome)

    async def _write_records(self, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        async with self._write_guard():
            if self._ingest_engine is not None:
                # SQLite: the whole batch in one thread hop on a plain sqlite3 connection; an aiosqlite
                # round trip per statement costs more than the SQL itself.
                return await asyncio.to_thread(self._commit_records, recs)
            async with self.engine.begin() as conn:
                outcomes = await conn.run_sync(self._write_records_in, recs)
            self._intakes = self._next_intakes          # the batch committed: its intakes are real
            return outcomes

    def _commit_records(self, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        """SQLite: commit `recs` on the ingest connection; the caller holds the writer lock."""
        assert self._ingest_engine is not None
        with self._ingest_engine.begin() as conn:
            outcomes = self._write_records_in(conn, recs)
        self._intakes = self._next_intakes              # the batch committed: its intakes are real
        return outcomes

    def _write_records_in(self, conn: Connection, recs: Sequence[InstanceRecord]) -> list[RecordOutcome]:
        """The hot path of ingest, in SQLAlchemy Core within the caller's transaction."""
        insert = sqlite_insert if conn.dialect.name == "sqlite" else pg_insert
        outcomes: list[RecordOutcome] = []
        added: dict[str, int] = {}
        jobs, instances = Job.__table__, Instance.__table__
        intakes = dict(self._intakes)          # published only after the commit succeeds
        for rec in recs:
            events: tuple[JobEvent, ...] = ()
            intake_id = intakes.get(rec.study_instance_uid)
            if intake_id is None:
                intake_id = conn.execute(
                    select(jobs.c.id).where(jobs.c.study_instance_uid == rec.study_instance_uid,
                                            jobs.c.state == JobState.RECEIVING.value)
                    .order_by(jobs.c.created_at.desc()).limit(1)).scalar_one_or_none()
                if intake_id is None:
                    intake_id, events = self._new_intake(conn, rec)
                intakes[rec.study_instance_uid] = intake_id
            values = rec.instance_values()
            result = conn.execute(insert(instances).values(intake_id=intake_id, received_at=utcnow(), **values)
                                  .on_conflict_do_nothing(index_elements=["sop_instance_uid"]))
            if result.rowcount == 1:
                added[intake_id] = added.get(intake_id, 0) + 1
                outcomes.append(RecordOutcome(intake_id, duplicate=False, events=events))
            else:
                first = conn.execute(select(instances.c.intake_id).where(
                    instances.c.sop_instance_uid == rec.sop_instance_uid)).scalar_one()
                outcomes.append(RecordOutcome(first, duplicate=True, events=events))
        now = utcnow()
        for intake_id, n in added.items():
            conn.execute(update(jobs).where(jobs.c.id == intake_id)
                         .values(instance_count=jobs.c.instance_count + n, updated_at=now))
        self._next_intakes = intakes
        return outcomes

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

    async def transition(self, job_id: str, to: JobState | str, *, detail: str = "",
                         progress: float | None = None, data: dict[str, Any] | None = None) -> JobEvent:
        """The only writer of `Job.state`: check ALLOWED, update the job and append its event, atomically.
        `data` adds keys to the event's message (the `done` event's "delivered")."""
        to = JobState(to)
        async with self._write() as s:
            job = await s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            row = self._move(s, job, to, detail, progress, data)
            await s.flush()                      # the event's seq is assigned here
            return JobEvent.of(row)

    def _move(self, s: AsyncSession, job: Job, to: JobState, detail: str, progress: float | None,
              data: dict[str, Any] | None = None) -> JobEventRow:
        src = JobState(job.state)
        if to not in ALLOWED[src]:
            raise InvalidTransition(f"job {job.id} is {src.value}; it cannot become {to.value}")
        if src is JobState.RECEIVING and self._intakes.get(job.study_instance_uid) == job.id:
            del self._intakes[job.study_instance_uid]      # later instances of the study start a new intake
        job.state = to.value
        job.detail = detail[:2000]
        job.progress = progress
        job.updated_at = utcnow()
        return self._event(s, job, detail, progress, data)

    async def progress(self, job_id: str, progress: float | None, detail: str) -> JobEvent:
        """Append a progress event without changing the state."""
        async with self._write() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            job.progress, job.detail, job.updated_at = progress, detail[:2000], utcnow()
            row = self._event(s, job, detail, progress)
            await s.flush()
            return JobEvent.of(row)

    async def route_intake(self, intake_id: str, outcome: RoutingOutcome,
                           series: Sequence[SeriesInfo]) -> list[JobEvent]:
        """Turn a stable intake job into queued job(s) per routing decision, or ignored with the reason."""
        by_uid = {x.series_instance_uid: x for x in series}
        async with self._write() as s:
            intake = await s.get(Job, intake_id, with_for_update=True)
            if intake is None:
                raise JobNotFound(f"no job {intake_id}")
            if intake.state != JobState.RECEIVING.value:
                return []
            rows: list[JobEventRow] = []
            if not outcome.decisions:
                rows.append(self._move(s, intake, JobState.IGNORED, outcome.ignored_reason(), None))
            for i, d in enumerate(outcome.decisions):
                picked = [by_uid[u] for u in d.series_instance_uids]
                job = intake if i == 0 else Job(
                    id=new_id(), intake_id=intake.id, study_instance_uid=intake.study_instance_uid,
                    state=JobState.RECEIVING.value, calling_ae=intake.calling_ae, results={})
                if i:
                    s.add(job)
                    await s.flush()
                job.rule, job.model, job.destinations = d.rule, d.model, list(d.destinations)
                job.series_instance_uids = list(d.series_instance_uids)
                job.instance_count = sum(p.instance_count for p in picked)
                job.modality = picked[0].modality
                job.series_description = picked[0].series_description
                note = f"rule {d.rule}: {len(picked)} series, {job.instance_count} instances -> {d.model}"
                if outcome.ignored:
                    note += f" ({len(outcome.ignored)} series not taken)"
                rows.append(self._move(s, job, JobState.QUEUED, note, None))
            await s.flush()
            return [JobEvent.of(r) for r in rows]

    async def requeue_interrupted(self) -> list[JobEvent]:
        """At start-up: jobs left running by a crash or stop go back to the queue."""
        async with self._write() as s:
            jobs = (await s.execute(select(Job).where(Job.state == JobState.RUNNING.value))).scalars().all()
            rows = [self._move(s, j, JobState.QUEUED, "requeued: the node stopped while it was running", None)
                    for j in jobs]
            await s.flush()
            return [JobEvent.of(r) for r in rows]

    async def claim_next(self) -> tuple[JobView, JobEvent] | None:
        """Move the oldest queued job to running; return it with its event (None when the queue is empty)."""
        async with self._write() as s:
            job = (await s.execute(select(Job).where(Job.state == JobState.QUEUED.value)
                                   .order_by(Job.updated_at).limit(1).with_for_update(skip_locked=True))
                   ).scalar_one_or_none()
            if job is None:
                return None
            job.attempts += 1
            row = self._move(s, job, JobState.RUNNING, f"claimed by a worker (attempt {job.attempts})", 0.0)
            await s.flush()
            return JobView.of(job), JobEvent.of(row)

    # -- readers --------------------------------------------------------------------------------
    async def get(self, job_id: str) -> JobView:
        async with self._session() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return JobView.of(job)

    async def list_jobs(self, *, state: str | None = None, study_instance_uid: str | None = None,
                        limit: int = 100, offset: int = 0) -> list[JobView]:
        q = select(Job).order_by(Job.created_at.desc()).limit(limit).offset(offset)
        if state:
            q = q.where(Job.state == JobState(state).value)
        if study_instance_uid:
            q = q.where(Job.study_instance_uid == study_instance_uid)
        async with self._session() as s:
            return [JobView.of(j) for j in (await s.execute(q)).scalars().all()]

    async def events(self, job_id: str | None = None, *, since: int = 0, limit: int = 10000) -> list[JobEvent]:
        q = select(JobEventRow).where(JobEventRow.seq > since).order_by(JobEventRow.seq).limit(limit)
        if job_id:
            q = q.where(JobEventRow.job_id == job_id)
        async with self._session() as s:
            return [JobEvent.of(r) for r in (await s.execute(q)).scalars().all()]

    async def max_seq(self) -> int:
        async with self._session() as s:
            return int((await s.execute(select(func.max(JobEventRow.seq)))).scalar_one() or 0)

    async def audit(self, actor: str, role: str, action: str, job_id: str = "", study_instance_uid: str = "",
                    remote: str = "") -> None:
        async with self._write() as s:
            s.add(AuditRow(actor=actor[:64], role=role[:16], action=action[:64], job_id=job_id,
                           study_instance_uid=study_instance_uid, remote=remote[:64], at=utcnow()))

    async def audit_log(self, limit: int = 200) -> list[dict[str, Any]]:
        async with self._session() as s:
            rows = (await s.execute(select(AuditRow).order_by(AuditRow.id.desc()).limit(limit))).scalars().all()
            return [{"id": r.id, "at": _aware(r.at).isoformat(), "actor": r.actor, "role": r.role,
                     "action": r.action, "job_id": r.job_id, "study_instance_uid": r.study_instance_uid,
                     "remote": r.remote} for r in rows]

    async def counts_by_state(self) -> dict[str, int]:
        async with self._session() as s:
            rows = (await s.execute(select(Job.state, func.count()).group_by(Job.state))).all()
            return {state: n for state, n in rows}

    async def receiving(self) -> list[tuple[str, str]]:
        """(intake job id, study UID) of every job still receiving."""
        async with self._session() as s:
            rows = (await s.execute(select(Job.id, Job.study_instance_uid)
                                    .where(Job.state == JobState.RECEIVING.value))).all()
            return [(r[0], r[1]) for r in rows]

    async def series_of_intake(self, intake_id: str) -> list[SeriesInfo]:
        q = (select(Instance.series_instance_uid, func.min(Instance.modality), func.min(Instance.body_part_examined),
                    func.min(Instance.series_description), func.min(Instance.calling_ae), func.count())
             .where(Instance.intake_id == intake_id).group_by(Instance.series_instance_uid)
             .order_by(func.min(Instance.received_at)))
        async with self._session() as s:
            return [SeriesInfo(series_instance_uid=r[0], modality=r[1] or "", body_part_examined=r[2] or "",
                               series_description=r[3] or "", calling_ae=r[4] or "", instance_count=r[5])
                    for r in (await s.execute(q)).all()]

    async def instance_paths(self, intake_id: str, series_instance_uid: str) -> list[str]:
        async with self._session() as s:
            q = select(Instance.path).where(Instance.intake_id == intake_id,
                                            Instance.series_instance_uid == series_instance_uid)
            return list((await s.execute(q)).scalars().all())

    async def known_paths(self) -> set[str]:
        async with self._session() as s:
            return set((await s.execute(select(Instance.path))).scalars().all())

    async def instance_count(self) -> int:
        async with self._session() as s:
            return int((await s.execute(select(func.count()).select_from(Instance))).scalar_one())

    async def update_results(self, job_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Merge top-level keys into Job.results, atomically; return the new results."""
        async with self._write() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            job.results = {**(job.results or {}), **changes}
            job.updated_at = utcnow()
            return dict(job.results)

    async def set_results(self, job_id: str, results: dict[str, Any]) -> None:
        async with self._write() as s:
            await s.execute(update(Job).where(Job.id == job_id).values(results=results, updated_at=utcnow()))
