"""The outbox: delivers each `sending` job's result files to its destinations, with retries.

Backoff is exponential with jitter up to a deadline; every attempt is recorded in the job (attempt
count, last error) and published as an event; results are never deleted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from node.delivery.senders import Sender
from node.errors import SendError
from node.jobs.records import Delivery, JobView
from node.jobs.states import NO_DESTINATION, JobState
from node.jobs.store import JobStore

logger = logging.getLogger(__name__)


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before attempt `attempt + 1`: initial * 2^(attempt-1), capped, with +-25 % jitter."""
    base = min(max_s, initial_s * 2 ** max(0, attempt - 1))
    return base * (0.75 + 0.5 * rng())


class Outbox:
    """Owns delivery: every `sending` job's files go to each of its destinations, with retries as stored
    data (Delivery per destination), until `done`, or `failed` with the reason; results are never deleted."""

    def __init__(self, store: JobStore, senders: Mapping[str, Sender], results_root: Path, *,
                 retry_initial_s: float, retry_max_s: float, retry_deadline_s: float,
                 poll_s: float = 1.0, now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._store, self._senders = store, dict(senders)
        self._results_root = results_root
        self._initial_s, self._max_s, self._deadline_s = retry_initial_s, retry_max_s, retry_deadline_s
        self._poll_s = poll_s
        self._now = now
        self._wall = wall          # the deadline survives restarts, so it is kept in wall-clock seconds
        self._next_try: dict[str, float] = {}
        self.send_failures = 0

    async def run(self) -> None:
        bell = self._store.bus.doorbell()
        while True:
            bell.clear()
            try:
                await self.tick()
            except Exception:          # edge of a background task: log it, keep delivering
                logger.exception("outbox tick failed; retrying")
            delay = self._poll_s
            if self._next_try:
                delay = min(delay, max(0.0, min(self._next_try.values()) - self._now()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bell.wait(), timeout=max(delay, 0.05))

    async def tick(self) -> None:
        for job in await self._store.list_jobs(state=JobState.SENDING.value, limit=1000):
            if not job.destinations:      # a crash between `sending` and `done` of a job with nowhere to go
                await self._store.advance(job.id, JobState.DONE, NO_DESTINATION)
                continue
            if self._next_try.get(job.id, 0.0) <= self._now():
                await self.deliver(job)

    async def deliver(self, job: JobView) -> None:
        """Try every destination not yet delivered to; `done` once all have the files."""
        files = [self._results_root / job.id / f.file for f in job.results.files]
        missing = [f.name for f in files if not f.exists()]
        for name in job.destinations:
            state = job.results.deliveries.get(name, Delivery())
            if state.delivered:
                continue
            if missing:
                await self._fail(job, f"result file(s) missing from the outbox: {', '.join(missing)}")
                return
            if not await self._attempt(job, name, files, state):
                return
        self._next_try.pop(job.id, None)
        names = ", ".join(job.destinations)
        await self._store.advance(job.id, JobState.DONE, f"delivered to {names} ({len(files)} object(s) each)")

    async def _attempt(self, job: JobView, name: str, files: list[Path], state: Delivery) -> bool:
        """One attempt to deliver to `name`, recorded in the job; True when the files arrived."""
        state = replace(state, attempts=state.attempts + 1,
                        first_attempt_at=state.first_attempt_at or datetime.now(UTC).isoformat(),
                        first_attempt_epoch=state.first_attempt_epoch or self._wall())
        try:
            confirmation = await asyncio.to_thread(self._senders[name].send, files)
        except SendError as exc:
            self.send_failures += 1
            await self._store.record_delivery(job.id, name, replace(state, last_error=str(exc)))
            await self._after_failure(job, name, state, exc)
            return False
        await self._store.record_delivery(job.id, name, replace(state, delivered=True, last_error="",
                                                                 at=datetime.now(UTC).isoformat()))
        await self._store.progress(job.id, None, confirmation)
        return True

    async def _after_failure(self, job: JobView, name: str, state: Delivery, exc: SendError) -> None:
        """Fail the job (not retryable, or past the deadline) or schedule the next attempt."""
        elapsed = self._wall() - state.first_attempt_epoch
        if not exc.retryable:
            await self._fail(job, f"{exc}; results kept in the outbox (attempt {state.attempts})")
        elif elapsed >= self._deadline_s:
            await self._fail(job, f"gave up delivering to {name} after {state.attempts} attempts "
                                  f"over {elapsed / 3600:.1f} h: {exc}; results kept in the outbox")
        else:
            wait = backoff_s(state.attempts, self._initial_s, self._max_s)
            self._next_try[job.id] = self._now() + wait
            await self._store.progress(job.id, None, f"attempt {state.attempts} to {name} failed: {exc}; "
                                                     f"next try in {wait:.0f} s")

    async def _fail(self, job: JobView, reason: str) -> None:
        self._next_try.pop(job.id, None)
        logger.warning("job %s: delivery failed: %s", job.id, reason)
        await self._store.advance(job.id, JobState.FAILED, reason)
