"""Job states and the transitions the store allows (docs/architecture.md)."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    RECEIVING = "receiving"      # instances are arriving; the study is not yet stable
    QUEUED = "queued"
    RUNNING = "running"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    IGNORED = "ignored"          # the study became stable but no routing rule took it; detail says why


_STOP = frozenset({JobState.FAILED, JobState.CANCELLED})

ALLOWED: dict[JobState, frozenset[JobState]] = {
    JobState.RECEIVING: frozenset({JobState.QUEUED, JobState.IGNORED}) | _STOP,
    JobState.QUEUED: frozenset({JobState.RUNNING}) | _STOP,
    JobState.RUNNING: frozenset({JobState.SENDING, JobState.QUEUED}) | _STOP,   # QUEUED: requeued at restart
    JobState.SENDING: frozenset({JobState.DONE}) | _STOP,
    JobState.FAILED: frozenset({JobState.QUEUED}),                                # retry
    JobState.DONE: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.IGNORED: frozenset(),
}

NO_DESTINATION = "no destination configured: results kept in the outbox"    # the detail of such a job's `done`
