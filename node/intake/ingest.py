"""Loop side of ingest: record instances, decide stable studies, route them into jobs, recover at start."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from node.intake.assembly import StudyAssembler
from node.intake.spool import Spool
from node.intake.uids import InstanceUIDs
from node.jobs.events import EventBus
from node.jobs.routing import Rule, route
from node.jobs.store import InstanceRecord, JobStore, RecordOutcome

logger = logging.getLogger(__name__)


class Ingest:
    def __init__(self, store: JobStore, spool: Spool, assembler: StudyAssembler, rules: Sequence[Rule],
                 bus: EventBus) -> None:
        self._store = store
        self._spool = spool
        self._assembler = assembler
        self._rules = tuple(rules)
        self._bus = bus
        self._wake = asyncio.Event()
        self.instances_received = 0

    async def record(self, rec: InstanceRecord) -> RecordOutcome:
        """Commit the instance row; called (through the bridge) before the SCP answers Success."""
        outcome = await self._store.record_instance(rec)
        self.recorded(outcome)
        return outcome

    def recorded(self, outcome: RecordOutcome) -> None:
        """On the loop, after an instance row committed (here or in an association thread)."""
        if not outcome.duplicate:
            self.instances_received += 1
        self._assembler.instance_received(outcome.intake_id)
        self._bus.publish(outcome.events)
        self._wake.set()

    async def route_stable(self) -> int:
        """Route every intake that has been quiet long enough; return how many were routed."""
        stable = self._assembler.pop_stable()
        for intake_id in stable:
            series = await self._store.series_of_intake(intake_id)
            outcome = route(series, self._rules)
            events = await self._store.route_intake(intake_id, outcome, series)
            self._bus.publish(events)
        return len(stable)

    async def run(self) -> None:
        """Background task: wake on new instances or the next quiet-period deadline."""
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
            except Exception:          # edge of a background task: log it, keep ingesting
                logger.exception("routing stable studies failed; will retry")
                await asyncio.sleep(1.0)

    async def recover(self) -> None:
        """At start-up: drop partial files, record orphaned spool files, resume assembly, requeue jobs."""
        await asyncio.to_thread(self._spool.sweep_partials)
        known = await self._store.known_paths()
        orphans = [p for p in await asyncio.to_thread(lambda: list(self._spool.iter_instances()))
                   if str(p) not in known]
        for path in orphans:
            rec = await asyncio.to_thread(_record_from_file, path)
            if rec is not None:
                await self._store.record_instance(rec)
        if orphans:
            logger.warning("recovery: recorded %d spooled instance(s) that had no store row", len(orphans))
        for intake_id, _study in await self._store.receiving():
            self._assembler.instance_received(intake_id)
        self._bus.publish(await self._store.requeue_interrupted())
        self._wake.set()


def _record_from_file(path: Path) -> InstanceRecord | None:
    try:
        ds = dcmread(path, stop_before_pixels=True)
        uids = InstanceUIDs.from_dataset(ds)
    except Exception as exc:            # edge: an unreadable leftover is reported, not fatal
        logger.error("recovery: cannot read %s (%s); left in place", path.name, type(exc).__name__)
        return None
    return InstanceRecord(
        sop_instance_uid=uids.sop_instance_uid, study_instance_uid=uids.study_instance_uid,
        series_instance_uid=uids.series_instance_uid, sop_class_uid=uids.sop_class_uid,
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")), path=str(path),
        size=path.stat().st_size, calling_ae=str(ds.file_meta.get("SourceApplicationEntityTitle", "")) or "(recovered)",
        modality=str(ds.get("Modality", ""))[:16], body_part_examined=str(ds.get("BodyPartExamined", ""))[:64],
        series_description=str(ds.get("SeriesDescription", ""))[:64])
