"""Read queries on the job store: jobs, events, instances, audit log. No writes here."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from node.errors import JobNotFound
from node.jobs.models import AuditRow, Instance, Job, JobEventRow
from node.jobs.records import JobEvent, JobView, aware
from node.jobs.routing import SeriesInfo
from node.jobs.states import JobState


class JobReads:
    """The read side of JobStore (which inherits it); each call opens and closes its own session."""

    _session: async_sessionmaker[AsyncSession]

    async def get(self, job_id: str) -> JobView:
        async with self._session() as s:
            job = await s.get(Job, job_id)
            if job is None:
                raise JobNotFound(f"no job {job_id}")
            return JobView.of(job)

    async def list_jobs(self, *, state: str | None = None, study_instance_uid: str | None = None,
                        limit: int = 100, offset: int = 0, modality: str | None = None, model: str | None = None,
                        text: str | None = None) -> list[JobView]:
        """Newest first. `text` (the admin's search) is a substring of the study UID, patient ID or name."""
        q = select(Job).order_by(Job.created_at.desc(), Job.id).limit(limit).offset(offset)
        if state:
            q = q.where(Job.state == JobState(state).value)
        if study_instance_uid:
            q = q.where(Job.study_instance_uid == study_instance_uid)
        if modality:
            q = q.where(Job.modality == modality)
        if model:
            q = q.where(Job.model == model)
        if text:
            needle = text.lower()
            q = q.where(or_(*(func.lower(c).contains(needle, autoescape=True)
                              for c in (Job.study_instance_uid, Job.patient_id, Job.patient_name))))
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

    async def audit_log(self, limit: int = 200, *, security: bool = False) -> list[dict[str, Any]]:
        """The newest audit rows; with `security`, only security events (an action starting "refused", or the
        role "security"), however old."""
        query = select(AuditRow)
        if security:
            query = query.where(or_(AuditRow.action.startswith("refused"), AuditRow.role == "security"))
        async with self._session() as s:
            rows = (await s.execute(query.order_by(AuditRow.id.desc()).limit(limit))).scalars().all()
            return [{"id": r.id, "at": aware(r.at).isoformat(), "actor": r.actor, "role": r.role,
                     "action": r.action, "job_id": r.job_id, "study_instance_uid": r.study_instance_uid,
                     "remote": r.remote, "detail": r.detail} for r in rows]

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
