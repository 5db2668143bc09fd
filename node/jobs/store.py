"""JobStore: the only writer of jobs, instances, job events and audit rows. The database is the queue."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from node.bridge import LoopBridge
from node.errors import InvalidTransition, JobNotFound, StoreUnavailable
from node.jobs.engine import make_engine, one_writer
from node.jobs.events import EventBus
from node.jobs.instances import GroupCommitStats, InstanceBatcher
from node.jobs.models import AuditRow, Job, JobEventRow, utcnow
from node.jobs.queries import JobReads
from node.jobs.records import Delivery, InstanceRecord, JobEvent, JobResults, JobView, RecordOutcome
from node.jobs.routing import RoutingOutcome, SeriesInfo
from node.jobs.rows import new_id
from node.jobs.schema import SchemaChange
from node.jobs.schema import upgrade as upgrade_schema
from node.jobs.states import ALLOWED, JobState
from node.jobs.stats import JobStats
from node.jobs.writelock import WriterLock
from node.settings import mask_url

logger = logging.getLogger(__name__)

async def migrate(engine: AsyncEngine) -> SchemaChange:
    """Bring the database behind `engine` to the newest schema revision, in one transaction."""
    async with engine.begin() as conn:
        return await conn.run_sync(upgrade_schema)


class JobStore(JobReads, JobStats):
    """Owns the job database (SQLAlchemy 2 async; SQLite WAL by default, PostgreSQL by URL).

    Every write goes through here, under one WriterLock: instance rows through the InstanceBatcher
    (node/jobs/instances.py, group commit), everything else in `_write`. `_move` is the only place a job's
    state changes (checked against ALLOWED, in the same transaction as its event row); and every event a
    write makes is published on `bus` once its transaction has committed, so no caller publishes by hand.
    """

    def __init__(self, engine: AsyncEngine, bus: EventBus, *, record_timeout_s: float = 10.0,
                 in_thread_writes: bool = True) -> None:
        self.engine = engine
        self.bus = bus
        self.writer_lock = WriterLock()
        self._session = async_sessionmaker(engine, expire_on_commit=False)
        self._bridge = LoopBridge(asyncio.get_running_loop(), record_timeout_s)
        self._instances = InstanceBatcher(engine, self.writer_lock, self._bridge, timeout_s=record_timeout_s,
                                          in_thread=in_thread_writes)

    @classmethod
    async def open(cls, url: str, bus: EventBus | None = None, *, record_timeout_s: float = 10.0,
                   in_thread_writes: bool = True) -> JobStore:
        """Connect, migrate the schema to the newest revision (logged), and return the store (on the running loop)."""
        engine = make_engine(url, connect_timeout_s=min(record_timeout_s, 10.0))
        try:
            change = await migrate(engine)
        except (OSError, DBAPIError) as exc:
            await engine.dispose()
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            raise StoreUnavailable(f"cannot open the job store {mask_url(url)}: {reason}") from exc
        except BaseException:
            await engine.dispose()
            raise
        logger.info("job store %s: %s", mask_url(url), change.describe())
        return cls(engine, bus or EventBus(), record_timeout_s=record_timeout_s, in_thread_writes=in_thread_writes)

    async def close(self) -> None:
        await self._instances.close()
        await self.engine.dispose()

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        async with self.writer_lock.hold(), self._session() as s, s.begin():
            await one_writer(s)
            yield s

    def _published(self, events: Sequence[JobEvent]) -> list[JobEvent]:
        self.bus.publish(events)
        return list(events)

    # -- instances ------------------------------------------------------------------------------
    async def record_instance(self, rec: InstanceRecord) -> RecordOutcome:
        """Add a received instance to its study's open intake job (created if none), idempotent per SOP UID,
        through the instance batcher (group commit); its events are published once it has committed.
        Raises RecordFailed when the row's transaction fails."""
        outcome = await self._instances.record(rec)
        self.bus.publish(outcome.events)
        return outcome

    def record_instance_blocking(self, rec: InstanceRecord) -> RecordOutcome:
        """`record_instance` from an association thread: returns once the row has committed, and hands its
        events (a new intake job) to the loop to publish. Raises TimeoutError when the store stays busy for
        `record_timeout_s`, RecordFailed when the row's transaction fails."""
        outcome = self._instances.record_blocking(rec)
        if outcome.events:
            self._bridge.notify(self.bus.publish, outcome.events)
        return outcome

    @property
    def group_commit(self) -> GroupCommitStats:
        """How many instance rows have gone into how many transactions, and how many wait now."""
        return self._instances.stats()

    # -- states ---------------------------------------------------------------------------------
    @staticmethod
    def _event(s: AsyncSession, job: Job, detail: str, progress: float | None = None,
               data: dict[str, Any] | None = None) -> JobEventRow:
        row = JobEventRow(job_id=job.id, study_instance_uid=job.study_instance_uid, state=job.state,
                          progress=progress, detail=detail[:2000], at=utcnow(), data=data)
        s.add(row)
        return row

    def _move(self, s: AsyncSession, job: Job, to: JobState, detail: str, progress: float | None) -> JobEventRow:
        """The only writer of `Job.state`. A `done` event says what was delivered where (the result series
        and instances per destination, from the job's results as this transaction reads them)."""
        src = JobState(job.state)
        if to not in ALLOWED[src]:
            raise InvalidTransition(f"job {job.id} is {src.value}; it cannot become {to.value}")
        if src is JobState.RECEIVING:
            self._instances.intake_closed(job.study_instance_uid, job.id)
        job.state = to.value
        job.detail = detail[:2000]
        job.progress = progress
        job.updated_at = utcnow()
        data = {"delivered": JobResults.from_json(job.results).delivered()} if to is JobState.DONE else None
        return self._event(s, job, detail, progress, data)

    async def transition(self, job_id: str, to: JobState | str, *, detail: str = "",
                         progress: float | None = None) -> JobEvent:
        """Check ALLOWED, update the job and append its event, atomically. Raises JobNotFound, InvalidTransition."""
        to = JobState(to)
        async with self._write() as s:
            job = await s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            row = self._move(s, job, to, detail, progress)
            await s.flush()                      # the event's seq is assigned here
            event = JobEvent.of(row)
        return self._published([event])[0]

    async def advance(self, job_id: str, to: JobState, detail: str) -> JobEvent | None:
        """`transition` for a job that may have moved on meanwhile (cancelled while running or sending):
        then it is left as it is, and None is returned."""
        try:
            return await self.transition(job_id, to, detail=detail)
        except InvalidTransition:
            logger.info("job %s changed state meanwhile (cancelled?); not moved to %s", job_id, to.value)
            return None

    async def progress(self, job_id: str, progress: float | None, detail: str) -> JobEvent | None:
        """Append a progress event without changing the state. Only a running or sending job takes progress:
        a late report (the job failed or was cancelled meanwhile) must not overwrite the reason; None then."""
        async with self._write() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            if job.state not in (JobState.RUNNING.value, JobState.SENDING.value):
                logger.debug("job %s is %s; progress %r dropped", job_id, job.state, detail[:80])
                return None
            job.progress, job.detail, job.updated_at = progress, detail[:2000], utcnow()
            row = self._event(s, job, detail, progress)
            await s.flush()
            event = JobEvent.of(row)
        return self._published([event])[0]

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
                job = intake if i == 0 else Job(
                    id=new_id(), intake_id=intake.id, study_instance_uid=intake.study_instance_uid,
                    state=JobState.RECEIVING.value, calling_ae=intake.calling_ae, results={})
                if i:
                    s.add(job)
                    await s.flush()
                picked = [by_uid[u] for u in d.series_instance_uids]
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
            events = [JobEvent.of(r) for r in rows]
        return self._published(events)

    async def requeue_interrupted(self, max_attempts: int = 0) -> list[JobEvent]:
        """At start-up: jobs left running by a crash go back to the queue, or end failed once they have had
        `max_attempts` runs (0: no limit), so a study that kills the node cannot put it in a crash loop."""
        async with self._write() as s:
            jobs = (await s.execute(select(Job).where(Job.state == JobState.RUNNING.value))).scalars().all()
            rows = []
            for j in jobs:
                if max_attempts and j.attempts >= max_attempts:
                    rows.append(self._move(s, j, JobState.FAILED, f"the node stopped while it was running, "
                                           f"{j.attempts} times; not retried again ([compute] max_attempts)", None))
                else:
                    rows.append(self._move(s, j, JobState.QUEUED,
                                           "requeued: the node stopped while it was running", None))
            await s.flush()
            events = [JobEvent.of(r) for r in rows]
        return self._published(events)

    async def give_back(self, job_id: str, detail: str) -> JobEvent | None:
        """A running job the node stops on purpose goes back to the queue, and the run does not count as an
        attempt (None if it moved on meanwhile)."""
        async with self._write() as s:
            job = await s.get(Job, job_id, with_for_update=True)
            if job is None or job.state != JobState.RUNNING.value:
                return None
            job.attempts = max(0, job.attempts - 1)
            row = self._move(s, job, JobState.QUEUED, detail, None)
            await s.flush()
            event = JobEvent.of(row)
        return self._published([event])[0]

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
            view, event = JobView.of(job), JobEvent.of(row)
        return view, self._published([event])[0]

    # -- results and audit ----------------------------------------------------------------------
    async def set_results(self, job_id: str, results: JobResults) -> None:
        async with self._write() as s:
            await s.execute(update(Job).where(Job.id == job_id).values(results=results.as_json(), updated_at=utcnow()))

    async def record_delivery(self, job_id: str, destination: str, delivery: Delivery) -> JobResults:
        """Set where delivery to `destination` stands, atomically; return the job's results as they are now."""
        async with self._write() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            current = JobResults.from_json(job.results)
            results = current.merged(JobResults(deliveries={destination: delivery}))
            job.results, job.updated_at = results.as_json(), utcnow()
            return results

    async def audit(self, actor: str, role: str, action: str, job_id: str = "", study_instance_uid: str = "",
                    remote: str = "", detail: str = "") -> None:
        async with self._write() as s:
            s.add(AuditRow(actor=actor[:64], role=role[:16], action=action[:64], job_id=job_id,
                           study_instance_uid=study_instance_uid, remote=remote[:64], detail=detail[:256],
                           at=utcnow()))
