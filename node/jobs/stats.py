"""Numbers over time from the job store: per hour, instances received, jobs finished and failed, and the
time from a study's last instance to its result delivered (p50/p95). Read queries only; buckets are
counted in SQL (a day may hold hundreds of thousands of instances), latencies are small enough to sort here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from node.jobs.models import Instance, Job, JobEventRow
from node.jobs.records import aware
from node.jobs.states import JobState

HOUR_FORMAT = "%Y-%m-%dT%H"


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank `p`-th percentile (0 < p <= 100) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def hour_key(at: datetime) -> str:
    return aware(at).astimezone(UTC).strftime(HOUR_FORMAT)


def hours_back(now: datetime, hours: int) -> list[datetime]:
    """The starts of the last `hours` whole hours up to and including the current one, oldest first."""
    current = now.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    return [current - timedelta(hours=h) for h in range(hours - 1, -1, -1)]


def _bucket(dialect: str, column: Any) -> ColumnElement[str]:
    """`column` truncated to its UTC hour as 'YYYY-MM-DDTHH', in the database's own dialect."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), 'YYYY-MM-DD"T"HH24')
    return func.strftime(HOUR_FORMAT, column)       # SQLite keeps UTC datetimes without an offset


class JobStats:
    """The statistics side of the job store (JobStore inherits it)."""

    _session: async_sessionmaker[AsyncSession]

    async def hourly(self, hours: int = 24, now: datetime | None = None) -> list[dict[str, Any]]:
        """One entry per hour, oldest first: {"hour", "instances", "finished", "failed", "latency_p50_s",
        "latency_p95_s", "latency_n"}; latency is from the last instance of the job's intake to its `done`."""
        starts = hours_back(now or datetime.now(UTC), hours)
        since = starts[0]
        async with self._session() as s:
            dialect = s.bind.dialect.name
            received = _bucket(dialect, Instance.received_at)
            instances = dict((await s.execute(select(received, func.count()).where(Instance.received_at >= since)
                                              .group_by(received))).all())
            at = _bucket(dialect, JobEventRow.at)
            ended = (await s.execute(select(at, JobEventRow.state, func.count())
                                     .where(JobEventRow.at >= since,
                                            JobEventRow.state.in_([JobState.DONE.value, JobState.FAILED.value]))
                                     .group_by(at, JobEventRow.state))).all()
            last = (select(func.max(Instance.received_at)).where(Instance.intake_id == Job.intake_id)
                    .correlate(Job).scalar_subquery())
            done = (await s.execute(select(JobEventRow.at, last).join(Job, Job.id == JobEventRow.job_id)
                                    .where(JobEventRow.at >= since, JobEventRow.state == JobState.DONE.value))).all()
        counts = {(hour, state): n for hour, state, n in ended}
        latencies: dict[str, list[float]] = {}
        for done_at, last_at in done:
            if last_at is None:
                continue
            latencies.setdefault(hour_key(done_at), []).append((aware(done_at) - aware(last_at)).total_seconds())
        out = []
        for start in starts:
            key = start.strftime(HOUR_FORMAT)
            lat = latencies.get(key, [])
            out.append({"hour": start.isoformat(), "instances": int(instances.get(key, 0)),
                        "finished": int(counts.get((key, JobState.DONE.value), 0)),
                        "failed": int(counts.get((key, JobState.FAILED.value), 0)),
                        "latency_p50_s": _round(percentile(lat, 50)), "latency_p95_s": _round(percentile(lat, 95)),
                        "latency_n": len(lat)})
        return out


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
