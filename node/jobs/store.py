"""JobStore: the only writer of jobs, instances and job events. The database is the queue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from node.errors import InvalidTransition, JobNotFound
from node.jobs.models import Base, Instance, Job, JobEventRow, utcnow
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

    @classmethod
    def of(cls, row: JobEventRow) -> JobEvent:
        return cls(row.seq, row.job_id, row.study_instance_uid, row.state, row.progress, row.detail,
                   _aware(row.at))

    def as_message(self) -> dict[str, Any]:
        return {"seq": self.seq, "job_id": self.job_id, "study_instance_uid": self.study_instance_uid,
                "state": self.state, "progress": self.progress, "detail": self.detail,
                "at": self.at.isoformat()}


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

    @classmethod
    def of(cls, job: Job) -> JobView:
        return cls(job.id, job.study_instance_uid, job.intake_id, job.state, job.detail, job.progress,
                   job.rule, job.model, tuple(job.destinations or ()), tuple(job.series_instance_uids or ()),
                   job.calling_ae, job.modality, job.series_description, job.instance_count, job.attempts,
                   dict(job.results or {}), _aware(job.created_at), _aware(job.updated_at))

    def as_dict(self) -> dict[str, Any]:
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


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    intake_id: str
    duplicate: bool
    events: tuple[JobEvent, ...] = field(default=())


def new_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Async store over SQLAlchemy 2. SQLite (WAL) by default; PostgreSQL by URL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer; taking turns here avoids "database is locked" when two deferred
        # transactions both try to upgrade to writers. PostgreSQL needs no such lock.
        self._write_lock = asyncio.Lock() if engine.dialect.name == "sqlite" else None

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        if self._write_lock is None:
            async with self._session() as s, s.begin():
                yield s
            return
        async with self._write_lock, self._session() as s, s.begin():
            yield s

    @classmethod
    async def open(cls, url: str) -> JobStore:
        engine = create_async_engine(url)
        if engine.dialect.name == "sqlite":
            @event.listens_for(engine.sync_engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL survives a process crash; after a power cut the spool files (fsynced
                # before the row) are reconciled into the store at start-up.
                cur.execute("PRAGMA synchronous=NORMAL")
                cur.execute("PRAGMA busy_timeout=10000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        return cls(engine)

    async def close(self) -> None:
        await self.engine.dispose()

    # -- writers --------------------------------------------------------------------------------
    @staticmethod
    def _event(s: AsyncSession, job: Job, detail: str, progress: float | None = None) -> JobEventRow:
        row = JobEventRow(job_id=job.id, study_instance_uid=job.study_instance_uid, state=job.state,
                          progress=progress, detail=detail[:2000], at=utcnow())
        s.add(row)
        return row

    async def record_instance(self, rec: InstanceRecord) -> RecordOutcome:
        """Add a received instance to its study's open intake job (created if none). Idempotent per SOP UID."""
        async with self._write() as s:
            existing = await s.get(Instance, rec.sop_instance_uid)
            if existing is not None:
                return RecordOutcome(existing.intake_id, duplicate=True)
            job = (await s.execute(
                select(Job).where(Job.study_instance_uid == rec.study_instance_uid,
                                  Job.state == JobState.RECEIVING.value)
                .order_by(Job.created_at.desc()).limit(1))).scalar_one_or_none()
            rows = []
            if job is None:
                job_id = new_id()
                job = Job(id=job_id, intake_id=job_id, study_instance_uid=rec.study_instance_uid,
                          state=JobState.RECEIVING.value, detail="receiving", calling_ae=rec.calling_ae,
                          modality=rec.modality, series_description=rec.series_description,
                          destinations=[], series_instance_uids=[], results={})
                s.add(job)
                await s.flush()
                rows.append(self._event(s, job, f"first instance from {rec.calling_ae}"))
            job.instance_count += 1
            job.updated_at = utcnow()
            s.add(Instance(intake_id=job.id, **{k: getattr(rec, k) for k in rec.__dataclass_fields__}))
            await s.flush()
            return RecordOutcome(job.id, duplicate=False, events=tuple(JobEvent.of(r) for r in rows))

    async def transition(self, job_id: str, to: JobState | str, *, detail: str = "",
                         progress: float | None = None) -> JobEvent:
        """The only writer of `Job.state`: check ALLOWED, update the job and append its event, atomically."""
        to = JobState(to)
        async with self._write() as s:
            job = await s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return JobEvent.of(self._move(s, job, to, detail, progress))

    def _move(self, s: AsyncSession, job: Job, to: JobState, detail: str, progress: float | None) -> JobEventRow:
        src = JobState(job.state)
        if to not in ALLOWED[src]:
            raise InvalidTransition(f"job {job.id} is {src.value}; it cannot become {to.value}")
        job.state = to.value
        job.detail = detail[:2000]
        job.progress = progress
        job.updated_at = utcnow()
        return self._event(s, job, detail, progress)

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

    async def claim_next(self) -> JobView | None:
        """Move the oldest queued job to running and return it (None when the queue is empty)."""
        async with self._write() as s:
            job = (await s.execute(select(Job).where(Job.state == JobState.QUEUED.value)
                                   .order_by(Job.updated_at).limit(1).with_for_update(skip_locked=True))
                   ).scalar_one_or_none()
            if job is None:
                return None
            job.attempts += 1
            self._move(s, job, JobState.RUNNING, "claimed by a worker", 0.0)
            return JobView.of(job)

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

    async def set_results(self, job_id: str, results: dict[str, Any]) -> None:
        async with self._write() as s:
            await s.execute(update(Job).where(Job.id == job_id).values(results=results, updated_at=utcnow()))
