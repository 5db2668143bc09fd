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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node.errors import InvalidTransition, SendError
from node.events import EventBus
from node.jobs.states import JobState
from node.jobs.store import JobStore, JobView
from node.senders import Sender

logger = logging.getLogger(__name__)


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """Delay before attempt `attempt + 1`: initial * 2^(attempt-1), capped, with +-25 % jitter."""
    base = min(max_s, initial_s * 2 ** max(0, attempt - 1))
    return base * (0.75 + 0.5 * rng())


def result_series(files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The job's result files as series: [{"kind", "series_instance_uid", "sop_instance_uids"}], in file order."""
    by_series: dict[tuple[str, str], list[str]] = {}
    for f in files:
        by_series.setdefault((f["kind"], f["series_instance_uid"]), []).append(f["sop_instance_uid"])
    return [{"kind": kind, "series_instance_uid": uid, "sop_instance_uids": sops}
            for (kind, uid), sops in by_series.items()]


class Outbox:
    def __init__(self, store: JobStore, bus: EventBus, senders: Mapping[str, Sender], results_root: Path, *,
                 retry_initial_s: float, retry_max_s: float, retry_deadline_s: float,
                 poll_s: float = 1.0, now: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        self._store, self._bus, self._senders = store, bus, dict(senders)
        self._results_root = results_root
        self._initial_s, self._max_s, self._deadline_s = retry_initial_s, retry_max_s, retry_deadline_s
        self._poll_s = poll_s
        self._now = now
        self._wall = wall          # the deadline survives restarts, so it is kept in wall-clock seconds
        self._next_try: dict[str, float] = {}
        self.send_failures = 0

    async def run(self) -> None:
        bell = self._bus.doorbell()
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
                await self._advance(job, JobState.DONE, "no destination configured: results kept in the outbox",
                                    {"delivered": {}})
                continue
            if self._next_try.get(job.id, 0.0) <= self._now():
                await self.deliver(job)

    async def deliver(self, job: JobView) -> None:
        files = [self._results_root / job.id / f["file"] for f in job.results.get("files", [])]
        deliveries: dict[str, dict[str, Any]] = dict(job.results.get("deliveries", {}))
        for name in job.destinations:
            state = dict(deliveries.get(name, {"delivered": False, "attempts": 0, "last_error": ""}))
            if state["delivered"]:
                continue
            missing = [f.name for f in files if not f.exists()]
            if missing:
                await self._fail(job, f"result file(s) missing from the outbox: {', '.join(missing)}")
                return
            state["attempts"] += 1
            state.setdefault("first_attempt_at", datetime.now(UTC).isoformat())
            state.setdefault("first_attempt_epoch", self._wall())
            sender = self._senders[name]
            try:
                confirmation = await asyncio.to_thread(sender.send, files)
            except SendError as exc:
                self.send_failures += 1
                state["last_error"] = str(exc)
                deliveries[name] = state
                await self._store.update_results(job.id, {"deliveries": deliveries})
                elapsed = self._wall() - float(state["first_attempt_epoch"])
                if not exc.retryable:
                    await self._fail(job, f"{exc}; results kept in the outbox (attempt {state['attempts']})")
                elif elapsed >= self._deadline_s:
                    await self._fail(job, f"gave up delivering to {name} after {state['attempts']} attempts "
                                          f"over {elapsed / 3600:.1f} h: {exc}; results kept in the outbox")
                else:
                    wait = backoff_s(state["attempts"], self._initial_s, self._max_s)
                    self._next_try[job.id] = self._now() + wait
                    self._bus.publish([await self._store.progress(
                        job.id, None, f"attempt {state['attempts']} to {name} failed: {exc}; "
                                      f"next try in {wait:.0f} s")])
                return
            state.update(delivered=True, last_error="", at=datetime.now(UTC).isoformat())
            deliveries[name] = state
            await self._store.update_results(job.id, {"deliveries": deliveries})
            self._bus.publish([await self._store.progress(job.id, None, confirmation)])
        self._next_try.pop(job.id, None)
        names = ", ".join(job.destinations)
        # what a viewer waits for: the series and instances each destination now holds
        series = result_series(job.results.get("files", []))
        delivered = {name: series for name in job.destinations}
        await self._store.update_results(job.id, {"delivered": delivered})
        await self._advance(job, JobState.DONE, f"delivered to {names} ({len(files)} object(s) each)",
                            {"delivered": delivered})

    async def _advance(self, job: JobView, to: JobState, detail: str, data: dict[str, Any] | None = None) -> None:
        try:
            self._bus.publish([await self._store.transition(job.id, to, detail=detail, data=data)])
        except InvalidTransition:
            logger.info("job %s left sending meanwhile (cancelled?)", job.id)

    async def _fail(self, job: JobView, reason: str) -> None:
        self._next_try.pop(job.id, None)
        logger.warning("job %s: delivery failed: %s", job.id, reason)
        await self._advance(job, JobState.FAILED, reason)
