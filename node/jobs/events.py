"""In-process fan-out of job events. The store is the truth; this is only the doorbell."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from node.jobs.records import JobEvent

logger = logging.getLogger(__name__)


class Subscription:
    """A bounded queue per subscriber: a slow reader overflows itself, never the publisher."""

    def __init__(self, bus: EventBus, maxsize: int, study: str | None = None) -> None:
        self._bus = bus
        self.study = study
        self.queue: asyncio.Queue[JobEvent] = asyncio.Queue(maxsize)
        self.overflowed = False

    def offer(self, event: JobEvent) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            self.overflowed = True

    def close(self) -> None:
        self._bus.unsubscribe(self)


class EventBus:
    """Owns the subscribers and the doorbells; only the job store publishes (after its writes commit).

    Subscribers take every event, or one study's events, indexed by its UID so that publishing costs one
    dict lookup per event, not one check per viewer (each OHIF holds a socket for the study it shows)."""

    def __init__(self) -> None:
        self._subs: set[Subscription] = set()
        self._by_study: dict[str, set[Subscription]] = {}
        self._doorbells: list[asyncio.Event] = []

    def subscribe(self, maxsize: int = 1000, study: str | None = None) -> Subscription:
        """Every event, or only those of `study` (a StudyInstanceUID) when given."""
        sub = Subscription(self, maxsize, study)
        if study is None:
            self._subs.add(sub)
        else:
            self._by_study.setdefault(study, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.study is None:
            self._subs.discard(sub)
            return
        subs = self._by_study.get(sub.study)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_study[sub.study]

    def doorbell(self) -> asyncio.Event:
        """An Event set whenever something is published (workers wait on it)."""
        bell = asyncio.Event()
        self._doorbells.append(bell)
        return bell

    def publish(self, events: Iterable[JobEvent]) -> None:
        """Offer each event to its subscribers; ring the doorbells only when there was one (an instance row
        with no state change, the common case while receiving, wakes nobody)."""
        rang = False
        for e in events:
            rang = True
            logger.info("job %s: %s %s", e.job_id, e.state, e.detail)
            for sub in list(self._subs):
                sub.offer(e)
            for sub in list(self._by_study.get(e.study_instance_uid, ())):
                sub.offer(e)
        if rang:
            for bell in self._doorbells:
                bell.set()

    @property
    def subscriber_count(self) -> int:
        return len(self._subs) + sum(len(s) for s in self._by_study.values())
