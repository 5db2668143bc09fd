"""Loop side of intake: count recorded instances, decide stable studies, route them into jobs, recover."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Sequence

from node.bridge import LoopBridge
from node.intake.assembly import StudyAssembler
from node.intake.door.records import record_from_file
from node.intake.door.spool import Spool
from node.jobs.records import InstanceRecord, JobEvent, RecordOutcome
from node.jobs.routing import RouteDecision, Rule, route
from node.jobs.states import JobState
from node.jobs.store import JobStore

logger = logging.getLogger(__name__)


class Ingest:
    """Owns the study assembler and the routing task: after each committed instance row (`recorded`, on
    the loop) it waits for the study's quiet period, then has the store turn the intake into jobs."""

    def __init__(self, store: JobStore, spool: Spool, assembler: StudyAssembler, rules: Sequence[Rule],
                 model_unavailable: Callable[[str], str | None] = lambda _name: None) -> None:
        self._store = store
        self._model_unavailable = model_unavailable      # model name -> why it cannot run (None: it can)
        self._spool = spool
        self._assembler = assembler
        self._rules = tuple(rules)
        self._wake = asyncio.Event()
        self._bridge: LoopBridge | None = None              # to the routing task's loop, once it runs
        self._count_lock = threading.Lock()
        self.instances_received = 0

    def record(self, rec: InstanceRecord) -> RecordOutcome:
        """The receiver's recorder, on an association thread: returns once the row has committed (the
        receiver answers Success only then); raises if it was not committed (TimeoutError, RecordFailed).
        The study's quiet period restarts here, in this thread; the loop is woken, through the bridge,
        only for a new study."""
        outcome = self._store.record_instance_blocking(rec)
        if not outcome.duplicate:
            with self._count_lock:
                self.instances_received += 1
        if self._assembler.instance_received(outcome.intake_id) and self._bridge is not None:
            # a new study: its deadline may come before the one being waited for
            with contextlib.suppress(RuntimeError):     # the loop has closed (shutdown): it is stored anyway
                self._bridge.notify(self._wake.set)
        return outcome

    async def route_stable(self) -> int:
        """Route every intake that has been quiet long enough; return how many were routed."""
        stable = self._assembler.pop_stable()
        for i, intake_id in enumerate(stable):
            try:
                series = await self._store.series_of_intake(intake_id)
                outcome = route(series, self._rules)
                events = await self._store.route_intake(intake_id, outcome, series)
            except BaseException:       # e.g. the database restarting: these intakes are routed after another
                for pending in stable[i:]:  # quiet period, not forgotten until the next start
                    self._assembler.instance_received(pending)
                raise
            await self._fail_unavailable(outcome.decisions, events)
        return len(stable)

    async def _fail_unavailable(self, decisions: Sequence[RouteDecision], events: Sequence[JobEvent]) -> None:
        """A model found unusable at start fails its jobs now, with the reason, not at job time."""
        for decision, event in zip(decisions, events, strict=False):
            reason = self._model_unavailable(decision.model)
            if reason is not None and event.state == JobState.QUEUED.value:
                await self._store.advance(event.job_id, JobState.FAILED,
                                          detail=f"model {decision.model} unavailable: {reason}")

    async def run(self) -> None:
        """Background task: wake on new studies or the next quiet-period deadline."""
        self._bridge = LoopBridge(asyncio.get_running_loop())
        while True:
            deadline = self._assembler.next_deadline()
            try:
                if deadline is None:
                    await self._wake.wait()
                else:
                    await asyncio.wait_for(self._wake.wait(), timeout=deadline + 0.01)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.route_stable()
            except Exception as exc:   # edge of a background task: log it, keep ingesting
                logger.warning("routing stable studies failed (%s: %s); will retry", type(exc).__name__,
                               str(exc).splitlines()[0] if str(exc) else "")
                logger.debug("routing failure", exc_info=True)
                await asyncio.sleep(1.0)

    async def recover(self) -> None:
        """At start-up: drop partial files, record orphaned spool files, resume assembly (the compute
        part requeues jobs a crash left running)."""
        await asyncio.to_thread(self._spool.sweep_partials)
        known = await self._store.known_paths()
        orphans = [p for p in await asyncio.to_thread(lambda: list(self._spool.iter_instances()))
                   if str(p) not in known]
        for path in orphans:
            rec = await asyncio.to_thread(record_from_file, path)
            if rec is not None:
                await self._store.record_instance(rec)
        if orphans:
            logger.warning("recovery: recorded %d spooled instance(s) that had no store row", len(orphans))
        for intake_id, _study in await self._store.receiving():
            self._assembler.instance_received(intake_id)
        self._wake.set()
